//! Usage: per tenant, per model (as the tenant names it), per UTC day, the requests, inputs and
//! tokens of every successful embedding request.
//!
//! With the local store the counts live in this process's memory (lost on restart, per
//! replica). With a shared store (Redis) they are summed in memory and written every
//! `usage_flush_ms` as one batch that applies exactly once, so they add up across processes and
//! survive restarts. While the store is down the counts are held (at most `usage_buffer_keys`
//! counters) and written when it answers again; a graceful stop writes what is held.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use time::{Date, OffsetDateTime};
use tokio::sync::Notify;

use super::shared::SharedStore;
use crate::metrics::Metrics;

/// How long usage counters are kept: a little over a year, so last year's same month can be
/// read. The range one read may ask for, on either store.
pub(crate) const USAGE_RETENTION_DAYS: i64 = 400;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct UsageKey {
    pub tenant: String,
    pub model: String,
    pub day: Date,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub inputs: u64,
    pub tokens: u64,
}

impl Counts {
    /// The counters by name, as stored.
    pub fn fields(&self) -> [(&'static str, u64); 3] {
        [("requests", self.requests), ("inputs", self.inputs), ("tokens", self.tokens)]
    }

    pub fn add_field(&mut self, name: &str, value: u64) {
        match name {
            "requests" => self.requests += value,
            "inputs" => self.inputs += value,
            "tokens" => self.tokens += value,
            _ => {}
        }
    }

    pub fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.inputs += other.inputs;
        self.tokens += other.tokens;
    }
}

/// Why usage could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the usage store did not answer; retry shortly")]
pub struct UsageUnavailable;

pub(crate) struct UsageLedger {
    store: Option<Arc<dyn SharedStore>>,
    /// Local store: every count of the last 400 days. Redis: counts not yet handed to a batch.
    pending: Mutex<BTreeMap<UsageKey, Counts>>,
    /// The batch being written (or to retry, with the same id), Redis only.
    batch: tokio::sync::Mutex<Option<(String, BTreeMap<UsageKey, Counts>)>>,
    /// Counters in that batch: held too, so they count against `max_keys`.
    in_batch: AtomicUsize,
    /// Counts are being dropped at `max_keys` (logged once, until a write succeeds).
    dropping: AtomicBool,
    wake: Arc<Notify>,
    flush_after: Duration,
    max_keys: usize,
    metrics: Arc<Metrics>,
}

impl UsageLedger {
    /// A ledger writing to `store` (and the task that does), or kept in memory.
    pub(crate) fn new(
        store: Option<Arc<dyn SharedStore>>,
        flush_after: Duration,
        max_keys: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let shared = store.is_some();
        let ledger = Arc::new(Self {
            store,
            pending: Mutex::default(),
            batch: tokio::sync::Mutex::new(None),
            in_batch: AtomicUsize::new(0),
            dropping: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            flush_after,
            max_keys,
            metrics,
        });
        if shared {
            tokio::spawn(flusher(Arc::downgrade(&ledger)));
        }
        ledger
    }

    /// Counts one successful request of `inputs` inputs and `tokens` tokens, today (UTC).
    pub(crate) fn record(&self, tenant: &str, model: &str, inputs: usize, tokens: usize) {
        self.record_on(OffsetDateTime::now_utc().date(), tenant, model, inputs, tokens);
    }

    fn record_on(&self, day: Date, tenant: &str, model: &str, inputs: usize, tokens: usize) {
        let key = UsageKey { tenant: tenant.to_owned(), model: model.to_owned(), day };
        let counts = Counts { requests: 1, inputs: inputs as u64, tokens: tokens as u64 };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if self.store.is_none() && !pending.contains_key(&key) {
            // Local: a new day's first counter drops the ones past retention.
            let oldest = day - time::Duration::days(USAGE_RETENTION_DAYS);
            pending.retain(|k, _| k.day > oldest);
        }
        // A batch that failed to write is held as well as what came since.
        let held = pending.len() + self.in_batch.load(Ordering::Acquire);
        match pending.entry(key) {
            Entry::Occupied(mut total) => total.get_mut().add(counts),
            Entry::Vacant(slot) if held < self.max_keys => {
                slot.insert(counts);
            }
            Entry::Vacant(_) => {
                self.metrics.usage_dropped.inc_by(counts.requests);
                if !self.dropping.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        held,
                        "usage counters held reached store.usage_buffer_keys: new tenant, model and day \
                         counters are dropped (embedserve_usage_dropped_total) until the store answers"
                    );
                }
                return;
            }
        }
        drop(pending);
        if self.store.is_some() {
            self.wake.notify_one();
        }
    }

    /// `tenant`'s counts per (day, model) from `start` to `end` inclusive: the store's, plus
    /// those this process has not written yet.
    pub(crate) async fn read(
        &self,
        tenant: &str,
        start: Date,
        end: Date,
    ) -> Result<BTreeMap<(Date, String), Counts>, UsageUnavailable> {
        let mut out = match &self.store {
            None => BTreeMap::new(),
            Some(store) => {
                // The calendar's last day has no next one: the range ends there, not in an error.
                let days: Vec<Date> = std::iter::successors(Some(start), |day| day.next_day())
                    .take_while(|day| *day <= end)
                    .collect();
                store.read_usage(tenant, &days).await.ok_or(UsageUnavailable)?
            }
        };
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (key, counts) in pending.iter() {
            if key.tenant == tenant && (start..=end).contains(&key.day) {
                out.entry((key.day, key.model.clone())).or_default().add(*counts);
            }
        }
        Ok(out)
    }

    /// Writes what is held to the store: the batch left by a failed attempt first (with its id,
    /// so it counts once), then what accumulated since. `false` if something is still held.
    async fn flush(&self) -> bool {
        let Some(store) = &self.store else { return true };
        let mut batch = self.batch.lock().await;
        loop {
            let (id, counts) = match &*batch {
                Some(held) => held,
                None => {
                    let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
                    if taken.is_empty() {
                        return true;
                    }
                    self.in_batch.store(taken.len(), Ordering::Release);
                    batch.insert((uuid::Uuid::new_v4().to_string(), taken))
                }
            };
            if !store.add_usage(id, counts).await {
                self.metrics.usage_held.set(self.held(counts.len()) as i64);
                return false;
            }
            *batch = None;
            self.in_batch.store(0, Ordering::Release);
            self.dropping.store(false, Ordering::Release);
            self.metrics.usage_held.set(self.held(0) as i64);
        }
    }

    /// The last requests' usage, before the process goes. A store marked down by one slow call
    /// is asked again first: a transient failure must not cost the last counts. Bounded, as a
    /// stop must be: that ping and two writes (a batch left to retry, then the rest).
    pub(crate) async fn flush_before_exit(&self) {
        let Some(store) = &self.store else { return };
        let last = async {
            if !store.is_up() {
                store.check().await;
            }
            self.flush().await
        };
        let bound = store.timeout().max(Duration::from_secs(1)) + 2 * store.timeout();
        if !matches!(tokio::time::timeout(bound, last).await, Ok(true)) {
            tracing::warn!(up = store.is_up(), "usage not yet written to Redis is lost with this process");
        }
    }

    fn held(&self, in_batch: usize) -> usize {
        in_batch + self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Writes usage `flush_after` after the first count since the last write, and retries held
/// counts every second; ends with the ledger.
async fn flusher(ledger: Weak<UsageLedger>) {
    loop {
        let Some(l) = ledger.upgrade() else { return };
        let (wake, after) = (Arc::clone(&l.wake), l.flush_after);
        drop(l);
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
        tokio::time::sleep(after).await;
        let Some(l) = ledger.upgrade() else { return };
        l.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_usage_sums_per_tenant_model_and_day() {
        let ledger = UsageLedger::new(None, Duration::ZERO, 100, Arc::new(Metrics::new()));
        ledger.record("acme", "m", 2, 10);
        ledger.record("acme", "m", 1, 5);
        ledger.record("acme", "other", 1, 1);
        ledger.record("globex", "m", 7, 70);
        let today = OffsetDateTime::now_utc().date();
        let acme = ledger.read("acme", today, today).await.unwrap();
        assert_eq!(acme.len(), 2);
        assert_eq!(acme[&(today, "m".to_owned())], Counts { requests: 2, inputs: 3, tokens: 15 });
        let yesterday = today.previous_day().unwrap();
        assert!(ledger.read("acme", yesterday, yesterday).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn counters_past_the_bound_are_dropped_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let ledger = UsageLedger::new(None, Duration::ZERO, 2, Arc::clone(&metrics));
        for model in ["a", "b", "c", "a"] {
            ledger.record("t", model, 1, 1);
        }
        let today = OffsetDateTime::now_utc().date();
        assert_eq!(ledger.read("t", today, today).await.unwrap().len(), 2);
        assert_eq!(metrics.usage_dropped.get(), 1);
    }

    #[tokio::test]
    async fn the_local_store_keeps_the_last_400_days_and_drops_older_ones_on_a_new_day() {
        let ledger = UsageLedger::new(None, Duration::ZERO, 100, Arc::new(Metrics::new()));
        let today = OffsetDateTime::now_utc().date();
        let ago = |days: i64| today - time::Duration::days(days);
        let old = [USAGE_RETENTION_DAYS + 1, USAGE_RETENTION_DAYS, USAGE_RETENTION_DAYS - 1];
        for days in old {
            ledger.record_on(ago(days), "t", "m", 1, days as usize);
        }
        let all = ledger.read("t", ago(USAGE_RETENTION_DAYS + 1), today).await.unwrap();
        assert_eq!(all.len(), 3, "{all:?}");
        // Today's first counter drops what is 400 days old or older: today and the 399 days
        // before it are kept.
        ledger.record_on(today, "t", "m", 1, 7);
        let kept = ledger.read("t", ago(USAGE_RETENTION_DAYS + 1), today).await.unwrap();
        let days: Vec<Date> = kept.keys().map(|(day, _)| *day).collect();
        assert_eq!(days, [ago(USAGE_RETENTION_DAYS - 1), today], "{kept:?}");
        assert_eq!(kept[&(today, "m".to_owned())], Counts { requests: 1, inputs: 1, tokens: 7 });
    }
}
