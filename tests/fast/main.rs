//! The fast tier: the real router, tenants, limits, queue, batching and cache over a
//! deterministic fake backend (`fake.rs`, test code only), without ONNX Runtime or model
//! files. `make check` runs these; `make test` runs them beside the real-model tests, which
//! they never replace.

#[path = "../common/mod.rs"]
mod common;
mod fake;
mod helpers;

mod batching;
mod cache;
mod clients;
mod errors;
mod hardening;
mod isolation;
mod operations;
mod recall;
mod sweep;
mod tenancy;
