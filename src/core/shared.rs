//! What replicas share: the one trait a shared store implements (the Redis adapter,
//! `crate::redis`) for the core's limits and usage. The core decides what to do when the store
//! is down; the store only answers or fails, each call bounded by its timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use time::Date;

use super::limits::{BucketParams, SharedVerdict};
use super::usage::{Counts, UsageKey};

/// A store every replica and Lambda instance shares.
#[async_trait::async_trait]
pub(crate) trait SharedStore: Send + Sync {
    /// The store answered its last call (or probe).
    fn is_up(&self) -> bool;

    /// How long one call may take before it counts as failed.
    fn timeout(&self) -> Duration;

    /// Asks the store now (a ping); marks it up or down by the answer.
    async fn check(&self) -> bool;

    /// Decides both of a request's limits for `tenant` at once, all or nothing: one request from
    /// the request bucket and `tokens` from the token bucket. `None` if the store failed or was
    /// slow (it is then marked down) or is down.
    async fn admit(
        &self,
        tenant: &str,
        requests: BucketParams,
        tokens_bucket: BucketParams,
        tokens: u64,
    ) -> Option<SharedVerdict>;

    /// Adds a batch of usage counts exactly once, whatever the number of attempts with the same
    /// `id`. `false` if it may not have been written (retry with the same id).
    async fn add_usage(&self, id: &str, batch: &BTreeMap<UsageKey, Counts>) -> bool;

    /// `tenant`'s counts for each of `days`, by model; `None` if the store did not answer.
    async fn read_usage(&self, tenant: &str, days: &[Date]) -> Option<BTreeMap<(Date, String), Counts>>;
}
