//! embedserve: a multi-model text-embedding service over ONNX Runtime on CPU.
//!
//! [`build_app`] turns one [`Settings`] into the router and its shared state; the server entry
//! (`server`) serves that router over TCP.

pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod models;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;

pub use config::Settings;
use metrics::Metrics;
use models::cache::{CacheOptions, ModelCache};
use models::worker::BatchLimits;

/// Jobs each model's queue holds before new requests get 503.
const QUEUE_CAPACITY: usize = 1024;

/// State every handler shares.
pub struct AppState {
    pub settings: Settings,
    pub models: ModelCache,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The router and the state behind it.
pub struct App {
    pub router: Router,
    pub state: Arc<AppState>,
}

/// Loads ONNX Runtime and builds the router. Models load later: on first use, or in
/// [`App::warm_up`].
pub fn build_app(settings: Settings) -> anyhow::Result<App> {
    let started = std::time::Instant::now();
    let env = models::session::init_runtime(settings.onnxruntime_path().as_deref())?;
    tracing::debug!(
        ms = started.elapsed().as_secs_f64() * 1e3,
        "ONNX Runtime loaded"
    );
    let metrics = Arc::new(Metrics::new());
    let options = CacheOptions {
        intra_threads: settings.intra_threads(),
        limits: BatchLimits {
            max_batch_size: settings.server.max_batch_size,
            max_batch_tokens: settings.server.max_batch_tokens,
        },
        queue_capacity: QUEUE_CAPACITY,
    };
    let models = ModelCache::new(env, settings.models.clone(), options, Arc::clone(&metrics));
    let state = Arc::new(AppState {
        settings,
        models,
        metrics,
        ready: AtomicBool::new(false),
    });
    Ok(App {
        router: http::router(Arc::clone(&state)),
        state,
    })
}

impl App {
    /// Loads the default model and runs one input through it, then reports ready.
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        let model = self
            .state
            .models
            .get(&self.state.settings.default_model)
            .await?;
        model.embed(vec!["warm up".to_owned()]).await?;
        self.state.ready.store(true, Ordering::Release);
        Ok(())
    }
}
