//! embedserve: a multi-tenant text-embedding service over ONNX Runtime on CPU.
//!
//! - `config`: settings from one TOML file and the environment, validated at start.
//! - `tenants`: API keys, each tenant's models and limits; `limits` the GCRA arithmetic.
//! - `store`: where limits are decided (this process, or Redis shared by replicas); `usage` the
//!   per-day counts.
//! - `models`: specs, tokenizing, the inference backend, batching and the model cache.
//! - `embed`: the embedding core both APIs share.
//! - `echo`: client text made safe to echo in messages.
//! - `http`: routes, middleware and the error shape; `app` builds the router from settings.
//! - `server` and `lambda`: the two doors to the same router; `reload` applies config changes.

pub mod app;
pub mod config;
pub mod echo;
pub mod embed;
pub mod http;
pub mod lambda;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod reload;
pub mod server;
pub mod store;
pub mod tenants;
pub mod usage;

pub use app::{App, AppState, build_app, build_app_with};
pub use config::Settings;
