//! embedserve: a multi-tenant text-embedding service over ONNX Runtime on CPU.
//!
//! [`build_app`] turns one [`Settings`] into the router and its shared state; the server entry
//! (`server`) serves that router over TCP.

pub mod config;
pub mod error;
pub mod http;
pub mod lambda;
pub mod metrics;
pub mod models;
pub mod reload;
pub mod server;
pub mod tenants;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;

pub use config::Settings;
use config::{CacheSettings, RuntimeSettings, ServerSettings};
use metrics::Metrics;
use models::cache::{CacheOptions, ModelCache};
use models::session::SessionOptions;
use models::worker::BatchLimits;
use tenants::TenantRegistry;

/// Jobs each model's channel holds before new requests get 503 (the token bound,
/// `server.max_queue_tokens`, usually binds first).
const QUEUE_CAPACITY: usize = 4096;

/// State every handler shares.
pub struct AppState {
    /// Settings that need a restart to change.
    pub server: ServerSettings,
    runtime: RuntimeSettings,
    cache: CacheSettings,
    /// The file reloads read.
    pub config_path: PathBuf,
    pub tenants: TenantRegistry,
    pub models: ModelCache,
    pub metrics: Arc<Metrics>,
    preload: Vec<String>,
    ready: AtomicBool,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Re-reads the configuration file and applies tenants and models. An invalid file changes
    /// nothing and returns the reason.
    pub fn reload(&self) -> anyhow::Result<()> {
        let result = Settings::load(&self.config_path).map(|settings| {
            if settings.server != self.server
                || settings.runtime != self.runtime
                || settings.cache != self.cache
            {
                tracing::warn!(
                    "[server], [runtime] and [cache] changes take effect on restart; kept the running ones"
                );
            }
            self.tenants.replace(&settings);
            self.models.replace_specs(settings.all_models());
            settings.tenants.len()
        });
        match &result {
            Ok(tenants) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(file = %self.config_path.display(), tenants, "configuration reloaded");
            }
            Err(e) => {
                self.metrics.config_reloads.with_label_values(&["rejected"]).inc();
                tracing::error!(
                    error = format!("{e:#}"),
                    "configuration reload rejected; the running configuration stays"
                );
            }
        }
        result.map(|_| ())
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
    tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "ONNX Runtime loaded");
    let metrics = Arc::new(Metrics::new());
    let options = CacheOptions {
        session: SessionOptions {
            intra_threads: settings.intra_threads(),
            cpu_arena: settings.runtime.cpu_arena,
        },
        limits: BatchLimits {
            max_batch_size: settings.server.max_batch_size,
            shared_batch_size: settings.server.shared_batch_size.min(settings.server.max_batch_size),
            max_batch_tokens: settings.server.max_batch_tokens,
            max_batch_wait: std::time::Duration::from_millis(settings.server.max_batch_wait_ms),
            fair_quantum_tokens: settings.server.fair_quantum_tokens,
        },
        queue_capacity: QUEUE_CAPACITY,
        max_queue_tokens: settings.server.max_queue_tokens,
        max_tenant_queue_percent: settings.server.max_tenant_queue_percent,
        max_bytes: settings.cache.max_bytes,
        pinned: settings.cache.pinned.iter().cloned().collect(),
    };
    let models = ModelCache::new(env, settings.all_models(), options, Arc::clone(&metrics));
    let state = Arc::new(AppState {
        tenants: TenantRegistry::new(&settings),
        preload: settings.preload(),
        config_path: settings.source.clone(),
        server: settings.server,
        runtime: settings.runtime,
        cache: settings.cache,
        models,
        metrics,
        ready: AtomicBool::new(false),
    });
    Ok(App { router: http::router(Arc::clone(&state)), state })
}

impl App {
    /// Loads the preloaded (and pinned) models, then reports ready.
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        for id in &self.state.preload {
            self.state.models.get(id).await.map_err(|e| anyhow::anyhow!("preloading {id}: {e}"))?;
        }
        self.state.ready.store(true, Ordering::Release);
        Ok(())
    }
}
