//! Tenants' rate limits: requests per second with a burst, tokens per minute. The [`Limiter`]
//! decides each request once, all or nothing, after it is tokenized (so its tokens are known):
//! in this process's buckets (`buckets`, GCRA arithmetic in `gcra`), or in a [`SharedStore`]
//! every replica shares, with this process's buckets as the fallback whenever that store is
//! down or slow (one round trip per admitted request).

mod buckets;
pub(crate) mod gcra;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use buckets::TenantBuckets;
pub(crate) use gcra::BucketState;

use super::shared::SharedStore;
use super::tenants::Tenant;
use crate::metrics::Metrics;

/// A request refused by its tenant's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Over requests per second or tokens per minute; waiting `retry_after` seconds helps.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64, limit: Bucket },
    /// More tokens than a whole minute's budget: waiting never helps.
    #[error("{0}")]
    OverBudget(String),
}

impl LimitError {
    /// The limit that refused.
    pub fn limit(&self) -> Bucket {
        match self {
            LimitError::RateLimited { limit, .. } => *limit,
            LimitError::OverBudget(_) => Bucket::Tokens,
        }
    }
}

/// A tenant's two buckets after a request (each `None` if the request did not reach it and
/// nothing is known): what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSnapshot {
    pub requests: Option<BucketState>,
    pub tokens: Option<BucketState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Requests,
    Tokens,
}

/// A bucket's parameters, as a shared store needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketParams {
    /// Time one unit takes to refill.
    pub interval: Duration,
    /// Units the full bucket holds.
    pub limit: u64,
}

/// A shared store's decision on one request, as the time the buckets owe (their theoretical
/// arrival time less now) after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedVerdict {
    pub refused: Option<Bucket>,
    /// With `refused`: how long until the request would fit; `None`: it never fits.
    pub wait: Option<Duration>,
    pub requests_debt: Duration,
    pub tokens_debt: Duration,
}

/// Decides tenants' requests: in this process, or in the shared store while it answers.
pub(crate) struct Limiter {
    shared: Option<Arc<dyn SharedStore>>,
    metrics: Arc<Metrics>,
}

impl Limiter {
    pub(crate) fn new(shared: Option<Arc<dyn SharedStore>>, metrics: Arc<Metrics>) -> Self {
        Self { shared, metrics }
    }

    /// Decisions are being made in the shared store right now.
    fn is_shared(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.is_up())
    }

    /// At start: says where limits will be decided, asking the shared store if there is one.
    pub(crate) async fn announce(&self) {
        match &self.shared {
            None => tracing::info!("limits and usage are kept in this process (store.backend = \"local\")"),
            Some(store) if store.check().await => tracing::info!("limits and usage are shared in Redis"),
            Some(_) => tracing::warn!(
                "Redis unreachable at start: limits hold per process and usage is held in memory until it answers"
            ),
        }
    }

    /// Refuses, before any work (a model load, tokenizing), a request whose tenant has no
    /// request left here, or in the shared store as last heard. Takes nothing.
    pub(crate) fn refuse_early(
        &self,
        tenant: &Tenant,
        snapshot: &mut LimitSnapshot,
    ) -> Result<(), LimitError> {
        tenant.buckets.refuse_early(self.is_shared(), snapshot).map_err(|r| self.refused(tenant, r, 0))
    }

    /// Admits a request of `tokens` for `tenant` (one request and `tokens` from its buckets), or
    /// refuses it, taking nothing; records both buckets' state in `snapshot` either way.
    pub(crate) async fn admit(
        &self,
        tenant: &Tenant,
        tokens: usize,
        snapshot: &mut LimitSnapshot,
    ) -> Result<(), LimitError> {
        if let Some(store) = &self.shared {
            let (requests, token_bucket) = tenant.buckets.params();
            if let Some(verdict) = store.admit(&tenant.id, requests, token_bucket, tokens as u64).await {
                self.metrics.limit_decisions.with_label_values(&["shared"]).inc();
                return tenant
                    .buckets
                    .apply_shared(verdict, snapshot)
                    .map_err(|r| self.refused(tenant, r, tokens));
            }
        }
        self.metrics.limit_decisions.with_label_values(&["local"]).inc();
        tenant.buckets.admit(tokens as u64, snapshot).map_err(|r| self.refused(tenant, r, tokens))
    }

    /// Fills in what a request that never reached [`Limiter::admit`] reports.
    pub(crate) fn peek(&self, tenant: &Tenant, snapshot: &mut LimitSnapshot) {
        tenant.buckets.peek(self.is_shared(), snapshot);
    }

    /// The error for a refusal by `bucket` of a request of `tokens`: retry after `wait`, or
    /// never (`None`); counted by tenant and limit.
    fn refused(&self, tenant: &Tenant, (bucket, wait): buckets::Refused, tokens: usize) -> LimitError {
        let l = tenant.limits();
        let (message, label) = match bucket {
            Bucket::Requests => (
                format!(
                    "Rate limit reached for tenant {}: {} requests per second (burst {}).",
                    tenant.id, l.requests_per_second, l.burst
                ),
                "requests",
            ),
            Bucket::Tokens => (
                format!(
                    "Token rate limit reached for tenant {}: {} tokens per minute; this request has {tokens}.",
                    tenant.id, l.tokens_per_minute
                ),
                "tokens",
            ),
        };
        self.metrics.rate_limited.with_label_values(&[&tenant.id, label]).inc();
        match wait {
            Some(wait) => LimitError::RateLimited { message, retry_after: retry_after(wait), limit: bucket },
            None => LimitError::OverBudget(message),
        }
    }
}

/// Whole seconds to wait, rounded up.
fn retry_after(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}
