//! Integration tests: the real router, real ONNX models and a real server on port 0.

mod helpers;

mod embeddings;
mod errors;
mod openai_sdk;
mod operations;
