//! The embedding cache's shared tier on Redis (see `core::embed::recall`): one key per vector,
//! `{prefix}:vec:{sha256 hex}`, holding its bytes (tokens, then little-endian f32 values) with a
//! time to live. Reads are one `MGET`, writes one pipeline of `SET ... EX`. Its size is bounded
//! by the Redis it runs on: a dedicated instance with `maxmemory` and `allkeys-lru` (never the
//! limit store's, whose keys must not be evicted). A call that fails or outlasts the store's
//! timeout is counted, and the tier is skipped for a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::core::embed::{Recalled, SharedVectors, VectorKey};
use crate::metrics::Metrics;

/// How long the tier is skipped after a failure.
const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(1);

pub(crate) struct RedisVectors {
    conn: ConnectionManager,
    prefix: String,
    ttl_seconds: u64,
    timeout: Duration,
    /// Milliseconds since `started` before which the tier is not asked.
    skip_until_ms: AtomicU64,
    started: Instant,
    metrics: Arc<Metrics>,
}

impl RedisVectors {
    pub(crate) fn connect(
        url: &str,
        ca_file: Option<&std::path::Path>,
        prefix: &str,
        ttl_seconds: u64,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let conn = super::connection(url, ca_file, timeout)
            .map_err(|e| anyhow::anyhow!("cache.embeddings_redis_url: {e:#}"))?;
        Ok(Arc::new(Self {
            conn,
            prefix: prefix.to_owned(),
            ttl_seconds,
            timeout,
            skip_until_ms: AtomicU64::new(0),
            started: Instant::now(),
            metrics,
        }))
    }

    fn key(&self, key: &VectorKey) -> String {
        format!("{}:vec:{}", self.prefix, hex::encode(key))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn skipping(&self) -> bool {
        self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed)
    }

    /// Runs a call within the timeout; a failure is counted, logged once per skip, and skips
    /// the tier for a while.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let cause = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        self.metrics.embedding_cache_shared_failures.with_label_values(&[operation]).inc();
        let until = self.now_ms() + u64::try_from(SKIP_AFTER_FAILURE.as_millis()).unwrap_or(1_000);
        if self.skip_until_ms.swap(until, Ordering::Relaxed) <= self.now_ms() {
            tracing::warn!(operation, cause, "embedding cache's Redis tier failed: skipped for a second");
        }
        None
    }
}

#[async_trait::async_trait]
impl SharedVectors for RedisVectors {
    async fn get_many(&self, keys: &[VectorKey]) -> Option<Vec<Option<Recalled>>> {
        if keys.is_empty() || self.skipping() {
            return None;
        }
        let names: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        let mut conn = self.conn.clone();
        let mut command = redis::cmd("MGET");
        command.arg(&names);
        let values: Vec<Option<Vec<u8>>> = self.bounded("get", command.query_async(&mut conn)).await?;
        // Bytes of another shape (another writer, a truncated value) are misses.
        Some(values.into_iter().map(|v| v.and_then(|b| Recalled::from_bytes(&b))).collect())
    }

    async fn put_many(&self, entries: &[(VectorKey, Recalled)]) {
        if entries.is_empty() || self.skipping() {
            return;
        }
        let mut pipe = redis::pipe();
        for (key, recalled) in entries {
            pipe.cmd("SET")
                .arg(self.key(key))
                .arg(recalled.to_bytes())
                .arg("EX")
                .arg(self.ttl_seconds)
                .ignore();
        }
        let mut conn = self.conn.clone();
        let _: Option<()> = self.bounded("put", pipe.query_async(&mut conn)).await;
    }
}
