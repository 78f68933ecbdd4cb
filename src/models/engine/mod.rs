//! How a model computes, and the seam to it, as text-embeddings-inference's `Backend`: the cache
//! asks a [`ModelLoader`] for a model's tokenizer and [`Backend`], and the model's inference
//! thread calls [`Backend::run`]. The service loads with ONNX Runtime (`onnx`, with `int8`
//! encoding the weights for this CPU); tokenizing (`tokenize`) and pooling (`pooling`) are the
//! steps around the run. The fast tests load a deterministic fake (tests/common/fake.rs).

pub mod int8;
pub mod onnx;
pub mod pooling;
pub mod token_ids;
pub mod tokenize;

use crate::models::spec::ModelSpec;
use tokenize::{Encoded, TextEncoder};

/// One loaded model's inference. Synchronous: it runs on the model's own thread.
pub trait Backend: Send {
    /// Runs one batch of tokenized inputs: vectors in input order, full width, pooled, not
    /// normalised.
    fn run(&mut self, batch: &[&Encoded]) -> anyhow::Result<Vec<Vec<f32>>>;
}

/// Loads models: a tokenizer and a backend for a spec.
pub trait ModelLoader: Send + Sync {
    fn load(&self, spec: &ModelSpec) -> anyhow::Result<(TextEncoder, Box<dyn Backend>)>;

    /// One more backend of a model already loaded (its tokenizer is not needed again).
    fn load_session(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn Backend>> {
        Ok(self.load(spec)?.1)
    }

    /// Whether this CPU multiplies int8 exactly on the runtime's fast kernels (VNNI, AVX-VNNI,
    /// AMX); `None` when the backend cannot tell.
    fn fast_int8(&self) -> Option<bool> {
        None
    }
}
