//! The composition root: one [`Settings`] becomes the core (the model cache, the limiter, the
//! usage ledger, the embedding service, the tenants), the Redis adapter if configured, and the
//! HTTP router over them. The server and the Lambda entry each run the same [`App`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;

use crate::config::{CacheSettings, RuntimeSettings, Settings, StoreKind};
use crate::core::embed::{Embedder, SharedVectors, VectorCache};
use crate::core::limits::Limiter;
use crate::core::shared::SharedStore;
use crate::core::tenants::TenantRegistry;
use crate::core::usage::UsageLedger;
use crate::http::ApiState;
use crate::metrics::Metrics;
use crate::models::engine::ModelLoader;
use crate::models::engine::onnx::{OrtLoader, SessionOptions};
use crate::models::serving::TokenizePool;
use crate::models::serving::cache::{CacheOptions, ModelCache};
use crate::models::serving::worker::BatchSizes;
use crate::redis::{RedisStore, RedisVectors};

/// Jobs each model's channel holds before new requests get 503 (the token bound,
/// `server.max_queue_tokens`, usually binds first).
const QUEUE_CAPACITY: usize = 4096;

/// The router and the state behind it.
pub struct App {
    pub router: Router,
    pub state: Arc<AppState>,
}

/// What the running service holds: the state the handlers share, and what reload and warm-up
/// need besides.
pub struct AppState {
    pub api: Arc<ApiState>,
    /// The file reloads read.
    pub(crate) config_path: PathBuf,
    /// Settings that need a restart to change, to tell a reload that changes them.
    pub(crate) runtime: RuntimeSettings,
    pub(crate) cache: CacheSettings,
    pub(crate) store: crate::config::StoreSettings,
    preload: Vec<String>,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.api.is_ready()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.api.metrics
    }
}

/// Loads ONNX Runtime and builds the router. Models load later: on first use, or in
/// [`App::warm_up`].
pub fn build_app(settings: Settings) -> anyhow::Result<App> {
    let options = SessionOptions {
        intra_threads: settings.intra_threads(),
        cpu_arena: settings.runtime.cpu_arena,
        spinning: settings.runtime.intra_op_spinning,
    };
    let loader = OrtLoader::new(settings.onnxruntime_path().as_deref(), options)?;
    build_app_with(settings, Arc::new(loader))
}

/// Builds the router over any [`ModelLoader`]: ONNX Runtime in the service, a fake in the
/// fast tests. Needs a Tokio runtime (a Redis store starts its probe task).
pub fn build_app_with(settings: Settings, loader: Arc<dyn ModelLoader>) -> anyhow::Result<App> {
    let metrics = Arc::new(Metrics::new());
    let s = &settings.server;
    let options = CacheOptions {
        batching: BatchSizes {
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
        tokenizers: TokenizePool::per_cpu(),
        sessions: settings.sessions_per_model(),
    };
    let models = Arc::new(ModelCache::new(loader, settings.all_models(), options, Arc::clone(&metrics)));
    let shared: Option<Arc<dyn SharedStore>> = match settings.store.backend {
        StoreKind::Local => None,
        StoreKind::Redis => Some(RedisStore::connect(&settings.store, Arc::clone(&metrics))?),
    };
    let limiter = Limiter::new(shared.clone(), Arc::clone(&metrics));
    let usage = UsageLedger::new(
        shared,
        Duration::from_millis(settings.store.usage_flush_ms),
        settings.store.usage_buffer_keys,
        Arc::clone(&metrics),
    );
    let shared_vectors: Option<Arc<dyn SharedVectors>> = match &settings.cache.embeddings_redis_url {
        Some(url) => Some(RedisVectors::connect(
            url,
            settings.store.redis_ca_file.as_deref(),
            &settings.store.key_prefix,
            settings.cache.embeddings_redis_ttl_s,
            Duration::from_millis(settings.store.timeout_ms),
            Arc::clone(&metrics),
        )?),
        None => None,
    };
    let recall = VectorCache::new(settings.cache.embeddings_max_bytes, shared_vectors, Arc::clone(&metrics));
    let embedder = Embedder::new(
        models,
        recall,
        limiter,
        usage,
        Arc::clone(&metrics),
        s.request_timeout(),
        s.max_documents,
    );
    let tenants = Arc::new(TenantRegistry::new(&settings));
    let api = Arc::new(ApiState::new(settings.server.clone(), tenants, Arc::new(embedder), metrics));
    let router = crate::http::router(Arc::clone(&api));
    let state = Arc::new(AppState {
        api,
        preload: settings.preload(),
        config_path: settings.source.clone(),
        runtime: settings.runtime,
        cache: settings.cache,
        store: settings.store,
    });
    Ok(App { router, state })
}

impl App {
    /// Says where limits are kept (asking Redis if configured), loads the preloaded (and
    /// pinned) models, then reports ready.
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        self.state.api.embedder.warm_up(&self.state.preload).await?;
        self.state.api.mark_ready();
        Ok(())
    }
}
