//! The Redis adapter: the core's [`SharedStore`] on Redis. Tenants' rate limits are decided by
//! one Lua script per request (`admit.lua`: GCRA, the arithmetic of `core::limits::gcra`, on
//! Redis's clock), usage counters live in one hash per tenant and UTC day (`add_usage.lua`
//! writes a batch exactly once), and this module keeps the connection's health.
//!
//! Health: every call is bounded by `store.timeout_ms`. The first failure marks the store
//! down (one log line, `embedserve_store_up` 0); from then on nothing waits on Redis: limits
//! are decided by each process's own buckets and usage is held in memory, while a probe pings
//! Redis every second. The first answer marks it up again (one log line).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use time::Date;
use tokio::sync::Notify;

use crate::config::StoreSettings;
use crate::core::limits::{Bucket, BucketParams, SharedVerdict};
use crate::core::shared::SharedStore;
use crate::core::usage::{Counts, USAGE_RETENTION_DAYS, UsageKey};
use crate::metrics::Metrics;

mod vectors;
pub(crate) use vectors::RedisVectors;

/// Both of a request's limits in one round trip, all or nothing. The state is each bucket's
/// theoretical arrival time (TAT) on Redis's clock, so every process agrees on "now", stored as
/// microseconds with three decimals; the arithmetic is `core::limits::gcra`'s, in whole
/// nanoseconds relative to now, so both decide alike to the nanosecond (tests/api/store_gcra.rs).
/// KEYS: the request bucket, the token bucket. ARGV: each bucket's interval (µs per unit, six
/// decimals) and size, then the request's tokens. Returns the refusing bucket (0 none, 1
/// requests, 2 tokens), the wait in ns (-1: never fits), and both buckets' debt (TAT - now) in
/// ns after the decision. Keys expire when their bucket is full again: an idle tenant costs
/// nothing.
const ADMIT: &str = include_str!("admit.lua");

/// A batch of usage increments, applied once: KEYS[1] marks the batch as written (for a day),
/// so a batch retried after a timeout whose write had in fact landed is not counted twice.
/// KEYS[2..]: one usage hash each. ARGV[1]: the hashes' time to live in seconds; then per hash
/// the number of fields, and that many field/increment pairs.
const ADD_USAGE: &str = include_str!("add_usage.lua");

/// How often a store marked down is pinged.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    admit: Script,
    add_usage: Script,
    up: AtomicBool,
    /// Wakes the probe when the store goes down.
    down: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl RedisStore {
    /// A store whose connection opens on first use (an unreachable Redis fails calls, never the
    /// start), and the task that probes it while it is down. Needs a Tokio runtime.
    pub(crate) fn connect(settings: &StoreSettings, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let url = settings.redis_url.as_deref().context("store.redis_url is not set")?;
        let timeout = Duration::from_millis(settings.timeout_ms);
        let conn = connection(url, settings.redis_ca_file.as_deref(), timeout)
            .map_err(|e| anyhow::anyhow!("store.redis_url: {e:#}"))?;
        let store = Arc::new(Self {
            conn,
            prefix: settings.key_prefix.clone(),
            timeout,
            admit: Script::new(ADMIT),
            add_usage: Script::new(ADD_USAGE),
            up: AtomicBool::new(true),
            down: Arc::new(Notify::new()),
            metrics,
        });
        store.metrics.store_up.set(1);
        tokio::spawn(probe(Arc::downgrade(&store)));
        Ok(store)
    }

    fn usage_key(&self, tenant: &str, day: Date) -> String {
        format!("{}:{{{tenant}}}:usage:{day}", self.prefix)
    }

    /// Runs a call within the timeout; a failure is counted and marks the store down.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.failed(operation, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(operation, &format!("no answer within {} ms", self.timeout.as_millis()));
                None
            }
        }
    }

    fn failed(&self, operation: &'static str, cause: &str) {
        self.metrics.store_failures.with_label_values(&[operation]).inc();
        self.mark_down(operation, cause);
    }

    fn mark_down(&self, operation: &str, cause: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.store_up.set(0);
            tracing::warn!(
                operation,
                cause,
                "Redis store unreachable: limits now hold per process and usage is held in memory \
                 until it answers"
            );
            self.down.notify_one();
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.metrics.store_up.set(1);
            tracing::info!("Redis store reachable again: limits are shared, held usage is being written");
        }
    }
}

#[async_trait::async_trait]
impl SharedStore for RedisStore {
    /// How long one Redis call may take (`limits.timeout_ms`).
    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Pings Redis (bounded by the store's timeout, or a second for a connection not yet
    /// open); marks the store up or down by the answer.
    async fn check(&self) -> bool {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        let bound = self.timeout.max(PROBE_EVERY);
        // The cause is logged: a refused TLS certificate or password must say so.
        match tokio::time::timeout(bound, ping).await {
            Ok(Ok(_)) => {
                self.mark_up();
                true
            }
            Ok(Err(e)) => {
                self.mark_down("probe", &e.to_string());
                false
            }
            Err(_) => {
                self.mark_down("probe", &format!("no answer to PING within {} ms", bound.as_millis()));
                false
            }
        }
    }

    /// Decides a request of `tokens` for `tenant` in Redis; `None` if Redis failed or was slow
    /// (and is then marked down) or is already down.
    async fn admit(
        &self,
        tenant: &str,
        requests: BucketParams,
        tokens_bucket: BucketParams,
        tokens: u64,
    ) -> Option<SharedVerdict> {
        if !self.is_up() {
            return None;
        }
        let micros = |d: Duration| format!("{:.6}", d.as_secs_f64() * 1e6);
        let mut invocation = self.admit.key(format!("{}:{{{tenant}}}:requests", self.prefix));
        invocation
            .key(format!("{}:{{{tenant}}}:tokens", self.prefix))
            .arg(micros(requests.interval))
            .arg(requests.limit)
            .arg(micros(tokens_bucket.interval))
            .arg(tokens_bucket.limit)
            .arg(tokens);
        let mut conn = self.conn.clone();
        let reply: (i64, i64, i64, i64) = self.bounded("limits", invocation.invoke_async(&mut conn)).await?;
        let (refused, wait, requests_debt, tokens_debt) = reply;
        let ns = |v: i64| Duration::from_nanos(v.max(0) as u64);
        Some(SharedVerdict {
            refused: match refused {
                1 => Some(Bucket::Requests),
                2 => Some(Bucket::Tokens),
                _ => None,
            },
            wait: (wait >= 0).then(|| ns(wait)),
            requests_debt: ns(requests_debt),
            tokens_debt: ns(tokens_debt),
        })
    }

    /// Adds a batch of usage counts once, whatever the number of attempts with the same `id`.
    async fn add_usage(&self, id: &str, batch: &BTreeMap<UsageKey, Counts>) -> bool {
        if !self.is_up() {
            return false;
        }
        let mut by_hash: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for (key, counts) in batch {
            let fields = by_hash.entry(self.usage_key(&key.tenant, key.day)).or_default();
            for (name, value) in counts.fields() {
                fields.push((format!("{name}:{}", key.model), value));
            }
        }
        let marker = format!("{}:usage-batch:{id}", self.prefix);
        let mut invocation = self.add_usage.key(marker);
        invocation.arg(USAGE_RETENTION_DAYS * 86_400);
        for (hash, fields) in &by_hash {
            invocation.key(hash).arg(fields.len());
            for (field, value) in fields {
                invocation.arg(field).arg(*value);
            }
        }
        let mut conn = self.conn.clone();
        self.bounded::<i64>("usage_write", invocation.invoke_async(&mut conn)).await.is_some()
    }

    /// `tenant`'s counts for each day of `days`, by model; `None` if Redis did not answer.
    async fn read_usage(&self, tenant: &str, days: &[Date]) -> Option<BTreeMap<(Date, String), Counts>> {
        if !self.is_up() {
            return None;
        }
        let mut pipe = redis::pipe();
        for day in days {
            pipe.cmd("HGETALL").arg(self.usage_key(tenant, *day));
        }
        let mut conn = self.conn.clone();
        let hashes: Vec<Vec<(String, u64)>> = self.bounded("usage_read", pipe.query_async(&mut conn)).await?;
        let mut out: BTreeMap<(Date, String), Counts> = BTreeMap::new();
        for (day, fields) in days.iter().zip(hashes) {
            for (field, value) in fields {
                let Some((name, model)) = field.split_once(':') else { continue };
                out.entry((*day, model.to_owned())).or_default().add_field(name, value);
            }
        }
        Some(out)
    }
}

/// While the store is down, pings it every second until it answers; ends with the store.
/// A connection to `url` (TLS for `rediss://`, trusting `ca_file` if given) that opens on first
/// use, each call answered within `timeout` or failed.
pub(crate) fn connection(
    url: &str,
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> anyhow::Result<ConnectionManager> {
    // rustls needs one process-wide crypto provider; another part may have installed it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match ca_file {
        Some(ca) => {
            let root_cert = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
            redis::Client::build_with_tls(url, certs)
        }
        None => redis::Client::open(url),
    }?;
    let config = ConnectionManagerConfig::new()
        // Reconnection is the probe's job; a call never waits for retries.
        .set_number_of_retries(1)
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
        .set_response_timeout(Some(timeout));
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

async fn probe(store: Weak<RedisStore>) {
    loop {
        let Some(s) = store.upgrade() else { return };
        if s.is_up() {
            // Wait to be told the store went down, checking now and then that it still exists.
            let down = Arc::clone(&s.down);
            drop(s);
            let _ = tokio::time::timeout(Duration::from_secs(5), down.notified()).await;
            continue;
        }
        s.check().await;
        drop(s);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}
