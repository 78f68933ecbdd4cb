//! The composition root: one [`Settings`] becomes the shared [`AppState`] and the router over
//! it. The server and the Lambda entry each wrap the same [`App`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;

use crate::config::{CacheSettings, RuntimeSettings, ServerSettings, Settings};
use crate::embed::Embedder;
use crate::http::auth::AuthFailures;
use crate::metrics::Metrics;
use crate::models::backend::Runtime;
use crate::models::cache::{CacheOptions, ModelCache};
use crate::models::onnx::{OrtRuntime, SessionOptions};
use crate::models::worker::BatchLimits;
use crate::store::LimitStore;
use crate::tenants::TenantRegistry;
use crate::usage::UsageLedger;

/// Jobs each model's channel holds before new requests get 503 (the token bound,
/// `server.max_queue_tokens`, usually binds first).
const QUEUE_CAPACITY: usize = 4096;

/// State every handler shares.
pub struct AppState {
    /// Settings that need a restart to change.
    pub server: ServerSettings,
    pub(crate) runtime: RuntimeSettings,
    pub(crate) cache: CacheSettings,
    /// The file reloads read.
    pub config_path: PathBuf,
    pub tenants: TenantRegistry,
    pub embedder: Embedder,
    pub metrics: Arc<Metrics>,
    pub auth_failures: AuthFailures,
    preload: Vec<String>,
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
    let options =
        SessionOptions { intra_threads: settings.intra_threads(), cpu_arena: settings.runtime.cpu_arena };
    let runtime = OrtRuntime::new(settings.onnxruntime_path().as_deref(), options)?;
    tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "ONNX Runtime loaded");
    build_app_with(settings, Arc::new(runtime))
}

/// Builds the router over any model [`Runtime`]: ONNX Runtime in the service, a fake in the
/// fast tests. Needs a Tokio runtime (a Redis store starts its probe task).
pub fn build_app_with(settings: Settings, runtime: Arc<dyn Runtime>) -> anyhow::Result<App> {
    let metrics = Arc::new(Metrics::new());
    let s = &settings.server;
    let options = CacheOptions {
        limits: BatchLimits {
            max_batch_size: s.max_batch_size,
            shared_batch_size: s.shared_batch_size.min(s.max_batch_size),
            max_batch_tokens: s.max_batch_tokens,
            max_batch_wait: Duration::from_millis(s.max_batch_wait_ms),
            fair_quantum_tokens: s.fair_quantum_tokens,
        },
        queue_capacity: QUEUE_CAPACITY,
        max_queue_tokens: s.max_queue_tokens,
        max_tenant_queue_percent: s.max_tenant_queue_percent,
        max_bytes: settings.cache.max_bytes,
        pinned: settings.cache.pinned.iter().cloned().collect(),
    };
    let models = ModelCache::new(runtime, settings.all_models(), options, Arc::clone(&metrics));
    let limits = LimitStore::new(&settings.limits, Arc::clone(&metrics))?;
    let flush_after = Duration::from_millis(settings.limits.usage_flush_ms);
    let usage = UsageLedger::new(
        limits.redis().cloned(),
        flush_after,
        settings.limits.usage_buffer_keys,
        Arc::clone(&metrics),
    );
    let embedder = Embedder::new(models, limits, usage, Arc::clone(&metrics), s.request_timeout());
    let state = Arc::new(AppState {
        tenants: TenantRegistry::new(&settings),
        auth_failures: AuthFailures::per_minute(settings.server.auth_failures_per_minute),
        preload: settings.preload(),
        config_path: settings.source.clone(),
        server: settings.server,
        runtime: settings.runtime,
        cache: settings.cache,
        embedder,
        metrics,
        ready: AtomicBool::new(false),
    });
    Ok(App { router: crate::http::router(Arc::clone(&state)), state })
}

impl App {
    /// Says where limits are kept (connecting to Redis if configured), loads the preloaded
    /// (and pinned) models, then reports ready.
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        self.state.embedder.limits.announce().await;
        for id in &self.state.preload {
            self.state.embedder.models.get(id).await.map_err(|e| anyhow::anyhow!("preloading {id}: {e}"))?;
        }
        self.state.ready.store(true, Ordering::Release);
        Ok(())
    }
}
