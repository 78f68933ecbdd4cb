//! Models, by concern: what a model is (`spec`: its settings, export folders, the Hugging Face
//! Hub, file checks), how it computes (`engine`: the backend seam, ONNX Runtime, int8 weights,
//! tokenizing, pooling), and how it is served (`serving`: the cache, one inference thread per
//! model, fair batching, the bounded queue). Failures are [`ModelError`]s; what they mean to a
//! client is decided by the adapters.

pub mod engine;
pub mod error;
pub(crate) mod serving;
pub mod spec;

pub use error::ModelError;
