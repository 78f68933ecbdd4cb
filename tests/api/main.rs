//! Integration tests: the real router, real ONNX models and a real server on port 0.

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod helpers;
mod spawned;

mod batching;
mod cache;
mod clients;
mod cpu_kinds;
mod embeddings;
mod errors;
mod export_folders;
mod hardening;
mod hub;
mod isolation;
mod lambda;
mod openai_sdk;
mod operations;
mod other_family;
mod output_types;
mod quality;
mod reload;
mod rerank;
mod scale_out;
mod schemathesis;
mod shared_cache;
mod store_gcra;
mod store_tls;
mod store_usage;
mod tenancy;
mod text_options;
mod variants;
