//! What every handler and layer shares, as the composition root (`run::app`) builds it: the
//! server's settings, the tenants, the embedding service, the metrics and the auth throttle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::auth::AuthFailures;
use crate::config::ServerSettings;
use crate::core::embed::Embedder;
use crate::core::tenants::TenantRegistry;
use crate::metrics::Metrics;

pub struct ApiState {
    /// Settings that need a restart to change.
    pub server: ServerSettings,
    pub tenants: Arc<TenantRegistry>,
    pub embedder: Arc<Embedder>,
    pub metrics: Arc<Metrics>,
    pub(crate) auth_failures: AuthFailures,
    /// `/ready` answers 200 once the preloaded models have loaded.
    ready: AtomicBool,
}

impl ApiState {
    pub(crate) fn new(
        server: ServerSettings,
        tenants: Arc<TenantRegistry>,
        embedder: Arc<Embedder>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let auth_failures = AuthFailures::per_minute(server.auth_failures_per_minute);
        Self { server, tenants, embedder, metrics, auth_failures, ready: AtomicBool::new(false) }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}
