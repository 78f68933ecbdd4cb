//! The seam between the service and what computes vectors, as text-embeddings-inference's
//! `Backend`: the cache asks a [`Runtime`] to load a model's tokenizer and [`Backend`], and the
//! model's inference thread calls [`Backend::run`]. The service uses ONNX Runtime
//! (`onnx::OrtRuntime`); the fast tests use a deterministic fake (`fake::FakeRuntime`) that
//! needs neither ONNX Runtime nor model files.

use super::spec::ModelSpec;
use super::tokenize::{Encoded, TextEncoder};

/// One loaded model's inference. Synchronous: it runs on the model's own thread.
pub trait Backend: Send {
    /// Runs one batch of tokenized inputs: vectors in input order, full width, pooled, not
    /// normalised.
    fn run(&mut self, batch: &[&Encoded]) -> anyhow::Result<Vec<Vec<f32>>>;
}

/// Loads models: a tokenizer and a backend for a spec.
pub trait Runtime: Send + Sync {
    fn load(&self, spec: &ModelSpec) -> anyhow::Result<(TextEncoder, Box<dyn Backend>)>;
}
