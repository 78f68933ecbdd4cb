//! The Redis store over TLS (`rediss://` and `store.redis_ca_file`), on Debian's redis-server
//! serving TLS only with certificates the test makes: limits and usage are shared through it,
//! and a server certificate from another CA is refused, saying why.

use serde_json::json;

use crate::cluster::*;
use crate::helpers::*;
use crate::spawned::SpawnedServer;

/// A replica's config: the TLS Redis, trusting the CA in `ca_file`.
fn config(redis: &Redis, ca_file: &std::path::Path) -> String {
    let tenant = TestTenant::new("secure", 1, 3, 1_000_000);
    let text = cluster_config_with_timeout(Some(&redis.url()), &[tenant], 2_000);
    assert!(text.contains("redis_url = \"rediss://"), "{text}");
    text.replace(
        "usage_flush_ms = 200\n",
        &format!("usage_flush_ms = 200\nredis_ca_file = \"{}\"\n", ca_file.display()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_its_ca_file_limits_and_usage_are_shared_and_another_ca_is_refused() {
    let redis = Redis::start_tls("tls");
    let a = SpawnedServer::start("tls-a", &config(&redis, &redis.ca_file())).await;
    let b = SpawnedServer::start("tls-b", &config(&redis, &redis.ca_file())).await;
    for replica in [&a, &b] {
        assert!(
            replica.log_text().contains("limits and usage are shared in Redis"),
            "{}",
            replica.log_text()
        );
        assert_eq!(replica.metric("embedserve_store_up").await, 1.0);
    }

    // One bucket through TLS: a's three requests spend the burst of 3, so b refuses the fourth.
    let embed = |server: &SpawnedServer| {
        let url = server.url("/v1/embed");
        async move {
            let r = client_with_key(Some("secure-test-key")).post(url).json(&json!({ "input": "tls" }));
            r.send().await.unwrap().status().as_u16()
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(embed(&a).await);
    }
    statuses.push(embed(&b).await);
    assert_eq!(statuses, [200, 200, 200, 429], "the burst of 3 is shared through Redis");
    for replica in [&a, &b] {
        let local = replica.metric_or_zero(r#"embedserve_limit_decisions_total{store="local"}"#).await;
        assert_eq!(local, 0.0, "a decision fell back to the process's own buckets");
    }

    // Usage: a writes its three requests as it stops; b reads them back from Redis.
    let log = a.stop().await;
    assert!(!log.contains("usage not yet written"), "{log}");
    let r = client_with_key(Some("secure-test-key")).get(b.url("/v1/usage")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let usage: serde_json::Value = r.json().await.unwrap();
    assert_eq!(usage["total"]["requests"], 3, "{usage}");

    // A certificate the configured CA did not sign: refused, and the log says it is the
    // certificate; the replica serves on its own limits.
    let other_ca = redis.ca_file().with_file_name("other-ca.crt");
    let c = SpawnedServer::start("tls-wrong-ca", &config(&redis, &other_ca)).await;
    let log = c.log_text();
    assert!(log.contains("Redis unreachable at start"), "{log}");
    let refused =
        log.lines().find(|l| l.contains("Redis store unreachable")).unwrap_or_else(|| panic!("{log}"));
    println!("with another CA: {refused}");
    assert!(refused.to_lowercase().contains("certificate"), "the cause is not named: {refused}");
    assert_eq!(c.metric("embedserve_store_up").await, 0.0);
    assert_eq!(embed(&c).await, 200);
    assert_eq!(c.metric(r#"embedserve_limit_decisions_total{store="local"}"#).await, 1.0);
}
