//! embedserve: a multi-tenant text-embedding service over ONNX Runtime on CPU.
//!
//! Arrows point one way: the adapters (`http`, `redis`) and the composition (`run`) use the
//! core; the core uses `models`, `config` and `metrics`, and knows no transport.
//!
//! - `config`: settings from one TOML file and the environment, validated at start; API keys.
//! - `models`: what a model is (`spec`), how it computes (`engine`), how it is served
//!   (`serving`: the cache, one inference thread per model, fair batching).
//! - `core`: the embedding service, tenants, rate limits, usage, and the shared-store trait.
//! - `redis`: the shared store on Redis (limits and usage across replicas).
//! - `http`: routes, layers, auth and the error shape.
//! - `run`: the composition root, the server and Lambda entries, reload.
//! - `metrics`: every Prometheus metric, registered once.

#![warn(unreachable_pub)]

pub mod config;
pub(crate) mod core;
pub mod http;
pub mod metrics;
pub mod models;
mod redis;
pub mod run;

pub use config::Settings;
pub use run::{App, AppState, build_app, build_app_with};
