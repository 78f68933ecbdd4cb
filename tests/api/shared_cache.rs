//! The embedding cache's Redis tier on Debian's redis-server: two replicas (in-process servers)
//! share cached vectors, bounded by that Redis's `maxmemory`, and a Redis that goes away costs
//! the tier, never a request.

use serde_json::json;

use crate::cluster::Redis;
use crate::helpers::*;

fn settings(redis: &Redis) -> embedserve::Settings {
    let mut settings = default_settings();
    settings.cache.embeddings_max_bytes = 8 << 20;
    settings.cache.embeddings_redis_url = Some(redis.url());
    // The shared tier's calls get the store's timeout, 50 ms by default: on two cores busy with
    // the rest of the suite a write can take longer, and a timed-out one is (rightly) skipped.
    // This file tests sharing, not timeouts.
    settings.store.timeout_ms = 2_000;
    settings
}

fn redis_int(conn: &mut redis::Connection, args: &[&str]) -> i64 {
    let mut command = redis::cmd(args[0]);
    for a in &args[1..] {
        command.arg(*a);
    }
    command.query(conn).unwrap()
}

#[tokio::test]
async fn replicas_share_cached_vectors_through_redis_within_its_maxmemory() {
    let mut redis = Redis::start("vectors");
    let mut conn = redis.connection();
    for (name, value) in [("maxmemory", "3mb"), ("maxmemory-policy", "allkeys-lru")] {
        let _: () = redis::cmd("CONFIG").arg("SET").arg(name).arg(value).query(&mut conn).unwrap();
    }
    let (a, b) = (TestServer::start(settings(&redis)), TestServer::start(settings(&redis)));
    let texts = json!(["The cat sat.", "Ünïcödé 東京"]);
    let (status, first) = a.post("/v1/embed", json!({ "input": texts })).await;
    assert_eq!(status, 200, "{first}");
    let billed = first["usage"]["prompt_tokens"].clone();

    let (status, second) = b.post("/v1/embed", json!({ "input": texts })).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["embeddings"], first["embeddings"], "the other replica's very vectors");
    assert_eq!(second["usage"], json!({ "prompt_tokens": 0, "total_tokens": 0, "cached_tokens": billed }));
    let sample = "embedserve_embedding_cache_lookups_total{model=\"minilm-l6-int8\",result=\"shared_hit\"}";
    assert_eq!(metric_value(&b.registry.render(), sample), 2.0);

    let keys: Vec<String> = redis::cmd("KEYS").arg("embedserve:vec:*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let ttl = redis_int(&mut conn, &["TTL", &keys[0]]);
    assert!((1..=86_400).contains(&ttl), "a vector expires (TTL {ttl})");
    assert_eq!(redis_int(&mut conn, &["STRLEN", &keys[0]]), 4 + 384 * 4, "tokens, then 384 f32");

    // Far more vectors than 3 MB hold: Redis evicts, the replicas serve on.
    for round in 0..40 {
        let batch: Vec<String> =
            (0..64).map(|i| format!("sentence {round}-{i} about nothing much")).collect();
        let (status, body) = a.post("/v1/embed", json!({ "input": batch })).await;
        assert_eq!(status, 200, "{body}");
    }
    let info: String = redis::cmd("INFO").arg("memory").query(&mut conn).unwrap();
    let used: u64 =
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
    let evicted: String = redis::cmd("INFO").arg("stats").query(&mut conn).unwrap();
    let evicted: u64 =
        evicted.lines().find_map(|l| l.strip_prefix("evicted_keys:")).unwrap().trim().parse().unwrap();
    println!("Redis tier after 2,562 vectors: used_memory {used} bytes, evicted_keys {evicted}");
    // Redis evicts as it writes, so it may stand a few KB over its limit between writes.
    assert!(used <= (3 << 20) + (64 << 10), "used_memory {used} over maxmemory (3 MiB)");
    assert!(evicted > 0, "Redis evicted vectors to stay within maxmemory");

    // Redis gone: the tier fails (counted), the request is computed.
    redis.kill();
    let (status, body) = b.post("/v1/embed", json!({ "input": "a text nobody sent" })).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let failures = b.registry.render();
    let failed =
        metric_value(&failures, "embedserve_embedding_cache_shared_failures_total{operation=\"get\"}");
    assert!(failed >= 1.0, "the failed lookup is counted");
}
