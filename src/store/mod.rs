//! Where tenants' limits are decided: in this process (`[limits] store = "local"`, the
//! default), or in a Redis every replica and Lambda instance shares (`"redis"`), with this
//! process's own buckets as the fallback whenever Redis is down or slow. A request's limits
//! are decided once, all or nothing, after it is tokenized (so its tokens are known): one
//! round trip to Redis per admitted request.

pub mod redis;

use std::sync::Arc;

use crate::config::{StoreKind, StoreSettings};
use crate::metrics::Metrics;
use crate::tenants::{LimitError, LimitHeaders, Tenant};
use redis::RedisStore;

pub struct LimitStore {
    shared: Option<Arc<RedisStore>>,
    metrics: Arc<Metrics>,
}

impl LimitStore {
    /// The store `settings` name. A Redis store connects lazily: an unreachable Redis does not
    /// stop the start (requests use the local fallback until it answers).
    pub fn new(settings: &StoreSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let shared = match settings.store {
            StoreKind::Local => None,
            StoreKind::Redis => Some(RedisStore::connect(settings, Arc::clone(&metrics))?),
        };
        Ok(Self { shared, metrics })
    }

    pub fn redis(&self) -> Option<&Arc<RedisStore>> {
        self.shared.as_ref()
    }

    /// Decisions are being made in the shared store right now.
    pub fn is_shared(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.is_up())
    }

    /// At start: says where limits will be decided, pinging Redis if it is configured.
    pub async fn announce(&self) {
        match &self.shared {
            None => tracing::info!("limits and usage are kept in this process (limits.store = \"local\")"),
            Some(store) if store.check().await => tracing::info!("limits and usage are shared in Redis"),
            Some(_) => tracing::warn!(
                "Redis unreachable at start: limits hold per process and usage is held in memory until it answers"
            ),
        }
    }

    /// Refuses, before any work, a request whose tenant has no request left (see
    /// [`Tenant::refuse_early`]).
    pub fn refuse_early(&self, tenant: &Tenant, headers: &mut LimitHeaders) -> Result<(), LimitError> {
        tenant.refuse_early(self.is_shared(), headers)
    }

    /// Admits a request of `tokens` for `tenant` (one request and `tokens` from its buckets), or
    /// refuses it, taking nothing; records both buckets' state in `headers` either way.
    pub async fn admit(
        &self,
        tenant: &Tenant,
        tokens: usize,
        headers: &mut LimitHeaders,
    ) -> Result<(), LimitError> {
        if let Some(store) = &self.shared {
            let (requests, token_bucket) = tenant.bucket_params();
            if let Some(verdict) = store.admit(&tenant.id, requests, token_bucket, tokens as u64).await {
                self.metrics.limit_decisions.with_label_values(&["shared"]).inc();
                return tenant.admit_shared(verdict, tokens, headers);
            }
        }
        self.metrics.limit_decisions.with_label_values(&["local"]).inc();
        tenant.admit_locally(tokens, headers)
    }

    /// Fills in what a request that never reached [`LimitStore::admit`] reports.
    pub fn peek(&self, tenant: &Tenant, headers: &mut LimitHeaders) {
        tenant.peek_limits(self.is_shared(), headers);
    }
}
