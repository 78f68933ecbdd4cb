//! Usage on real parts. The local store: `/v1/usage` reports what was served. The Redis store:
//! a batch applied twice counts once, a stop under load loses nothing and a SIGKILL at most what
//! `usage_flush_ms` covers, and the counters held through an outage stop at
//! `store.usage_buffer_keys`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::*;
use crate::helpers::*;
use crate::spawned::SpawnedServer;

/// `cluster_config`'s `usage_flush_ms`: what a SIGKILL may lose.
const FLUSH_MS: u64 = 200;

/// The `add_usage.lua` the Redis store runs, on `hash` (the store's key layout): one batch `id`
/// adding 1 request of `tokens` to model `m`. Returns the script's answer (1 applied, 0 seen).
fn apply_batch(conn: &mut redis::Connection, id: &str, hash: &str, tokens: u64) -> i64 {
    redis::Script::new(include_str!("../../src/redis/add_usage.lua"))
        .key(format!("embedserve:usage-batch:{id}"))
        .arg(400 * 86_400)
        .key(hash)
        .arg(2)
        .arg("requests:m")
        .arg(1)
        .arg("tokens:m")
        .arg(tokens)
        .invoke(conn)
        .unwrap()
}

#[tokio::test]
async fn with_the_local_store_usage_reports_what_each_tenant_was_served_by_model() {
    // A server of its own: the counts are this test's alone.
    let server = TestServer::start(default_settings());
    let mut served = BTreeMap::new();
    for (key, model, inputs) in [
        (ACME_KEY, "minilm-l6-int8", 1),
        (ACME_KEY, "minilm-l6-int8", 3),
        (ACME_KEY, "paraphrase-l3", 2),
        (GLOBEX_KEY, "minilm-l6-int8", 1),
    ] {
        let texts: Vec<String> = (0..inputs).map(|i| format!("input {i} for {model}")).collect();
        let r = server.post_as(Some(key), "/v1/embed", json!({ "input": texts, "model": model })).await;
        assert_eq!(r.status(), 200);
        let tokens = r.json::<Value>().await.unwrap()["usage"]["total_tokens"].as_u64().unwrap();
        let counts = served.entry((key, model)).or_insert([0u64; 3]);
        *counts = [counts[0] + 1, counts[1] + inputs, counts[2] + tokens];
    }
    // Refused requests are not usage.
    assert_eq!(server.post_as(Some(ACME_KEY), "/v1/embed", json!({ "input": "" })).await.status(), 422);

    let today = time::OffsetDateTime::now_utc().date().to_string();
    for (key, tenant) in [(ACME_KEY, "acme"), (GLOBEX_KEY, "globex")] {
        let r = client_with_key(Some(key)).get(server.url("/v1/usage")).send().await.unwrap();
        let usage: Value = r.json().await.unwrap();
        let mine: Vec<_> = served.iter().filter(|((k, _), _)| *k == key).collect();
        let data: Vec<Value> = mine
            .iter()
            .map(|((_, model), [requests, inputs, tokens])| {
                json!({ "date": today, "model": model, "requests": requests, "inputs": inputs, "tokens": tokens })
            })
            .collect();
        let total = |i: usize| mine.iter().map(|(_, c)| c[i]).sum::<u64>();
        assert_eq!(usage["tenant"], tenant);
        assert_eq!(usage["data"], json!(data), "{usage}");
        assert_eq!(usage["total"], json!({ "requests": total(0), "inputs": total(1), "tokens": total(2) }));
    }
    // A day with nothing served.
    let yesterday = time::OffsetDateTime::now_utc().date().previous_day().unwrap();
    let url = server.url(&format!("/v1/usage?start={yesterday}&end={yesterday}"));
    let usage: Value = client_with_key(Some(ACME_KEY)).get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(usage["data"], json!([]), "{usage}");
    assert_eq!(usage["total"], json!({ "requests": 0, "inputs": 0, "tokens": 0 }));
}

#[test]
fn a_usage_batch_applied_twice_counts_once() {
    let redis = Redis::start("batch-once");
    let mut conn = redis.connection();
    let hash = "embedserve:{t}:usage:2026-12-01";
    let fields = |conn: &mut redis::Connection| -> Vec<(String, u64)> {
        redis::cmd("HGETALL").arg(hash).query(conn).unwrap()
    };
    assert_eq!(apply_batch(&mut conn, "first", hash, 40), 1);
    // The retry of a write whose reply was lost: the same id, so nothing is added.
    assert_eq!(apply_batch(&mut conn, "first", hash, 40), 0);
    assert_eq!(fields(&mut conn), [("requests:m".to_owned(), 1), ("tokens:m".to_owned(), 40)]);
    // Another batch adds.
    assert_eq!(apply_batch(&mut conn, "second", hash, 2), 1);
    assert_eq!(fields(&mut conn), [("requests:m".to_owned(), 2), ("tokens:m".to_owned(), 42)]);
    // The marker outlives any retry (a day); the counters are kept 400 days.
    let ttl =
        |key: &str, conn: &mut redis::Connection| -> i64 { redis::cmd("TTL").arg(key).query(conn).unwrap() };
    assert!((86_000..=86_400).contains(&ttl("embedserve:usage-batch:first", &mut conn)));
    assert!((400 * 86_400 - 100..=400 * 86_400).contains(&ttl(hash, &mut conn)));
}

/// How many times Redis has run `command`, scripts' calls included (`INFO commandstats`).
fn calls(conn: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    let line = info.lines().find_map(|l| l.strip_prefix(&prefix));
    line.map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// A TCP relay to Redis on a free port that, once `armed`, passes the first command naming a
/// usage batch on to Redis, waits for Redis's reply and drops it with the connection: a write
/// that landed, whose answer was lost. Otherwise it relays both ways.
async fn relay_losing_one_usage_reply(redis_port: u16, armed: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let armed = Arc::clone(&armed);
            tokio::spawn(async move {
                let Ok(mut redis) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    return;
                };
                let (mut up, mut down) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
                let mut losing = false;
                loop {
                    tokio::select! {
                        read = client.read(&mut up) => {
                            let Ok(n @ 1..) = read else { return };
                            if up[..n].windows(11).any(|w| w == b"usage-batch") && armed.swap(false, Ordering::AcqRel) {
                                losing = true;
                            }
                            if redis.write_all(&up[..n]).await.is_err() { return }
                        }
                        read = redis.read(&mut down) => {
                            let Ok(n @ 1..) = read else { return };
                            // The write has run: its reply goes nowhere, and the connection ends.
                            if losing || client.write_all(&down[..n]).await.is_err() { return }
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_write_whose_reply_was_lost_is_retried_and_counted_once() {
    let redis = Redis::start("lost-reply");
    let mut conn = redis.connection();
    // Loaded, so that the store's first write runs as sent (not after a NOSCRIPT reply).
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(include_str!("../../src/redis/add_usage.lua"))
        .query(&mut conn)
        .unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let relay = relay_losing_one_usage_reply(redis.port, Arc::clone(&armed)).await;
    let url = format!("redis://127.0.0.1:{relay}/0");
    let config = cluster_config(Some(&url), &[TestTenant::new("once", 1_000, 1_000, 1_000_000_000)]);
    let server = SpawnedServer::start("lost-reply", &config).await;
    let sets_before = calls(&mut conn, "set");
    armed.store(true, Ordering::Release);
    assert_eq!(server.post_as("once-test-key", "/v1/embed", json!({ "input": "once" })).await.0, 200);
    // The write's reply is lost: to the store it failed, and the batch is held...
    wait_for_metric(&server, r#"embedserve_store_failures_total{operation="usage_write"}"#, 1.0).await;
    assert!(!armed.load(Ordering::Acquire), "the relay saw no usage write");
    // ...until Redis answers again, when it is written again with its id.
    wait_for_metric(&server, "embedserve_usage_held", 0.0).await;
    assert_eq!(counted_in_redis(&redis, "once"), 1, "the batch counted twice");
    let markers: Vec<String> = redis::cmd("KEYS").arg("embedserve:usage-batch:*").query(&mut conn).unwrap();
    assert_eq!(markers.len(), 1, "the retry was a new batch: {markers:?}");
    // Both writes ran in Redis (each sets the batch's marker, the second finding it set), as
    // did the request's decision (one SET per bucket).
    assert_eq!(calls(&mut conn, "set") - sets_before, 2 + 2, "the first write never ran");
}

/// `clients` loops posting as `key` to `base`, each until its first error (the server gone) or
/// `for_at_most`; the instants of the accepted (200) replies. Anything but 200 fails the test.
async fn load_until_gone(
    base: String,
    key: &'static str,
    clients: usize,
    for_at_most: Duration,
) -> Vec<Instant> {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, client, accepted) = (format!("{base}/v1/embed"), pooled_client(key), Arc::clone(&accepted));
        tasks.push(tokio::spawn(async move {
            let until = Instant::now() + for_at_most;
            while Instant::now() < until {
                let body = json!({ "input": format!("client {c} says hello") });
                let Ok(r) = client.post(&url).json(&body).send().await else { return };
                let status = r.status().as_u16();
                // A reply cut off by the kill is not an accepted request.
                if r.bytes().await.is_err() {
                    return;
                }
                assert_eq!(status, 200);
                accepted.lock().unwrap().push(Instant::now());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(accepted).unwrap().into_inner().unwrap()
}

/// The requests counted for `tenant` in Redis, today and yesterday (a test may span midnight).
fn counted_in_redis(redis: &Redis, tenant: &str) -> u64 {
    let mut conn = redis.connection();
    let today = time::OffsetDateTime::now_utc().date();
    [today.previous_day().unwrap(), today]
        .iter()
        .map(|day| {
            let fields: Vec<(String, u64)> = redis::cmd("HGETALL")
                .arg(format!("embedserve:{{{tenant}}}:usage:{day}"))
                .query(&mut conn)
                .unwrap();
            fields.iter().filter(|(f, _)| f.starts_with("requests:")).map(|(_, n)| n).sum::<u64>()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_load_a_sigterm_loses_no_usage_and_a_sigkill_at_most_the_last_flush_interval() {
    const CLIENTS: usize = 6;
    let redis = Redis::start("crash");
    let tenants = ["graceful", "killed"].map(|id| TestTenant::new(id, 100_000, 100_000, 1_000_000_000));
    // Redis slowed by the load must not push decisions to the local fallback mid-test.
    let config = cluster_config_with_timeout(Some(&redis.url()), &tenants, 2_000);
    assert!(config.contains(&format!("usage_flush_ms = {FLUSH_MS}\n")));

    // Graceful: SIGTERM while six clients send; the server drains, writes what it holds, exits.
    let server = SpawnedServer::start("usage-sigterm", &config).await;
    let load = tokio::spawn(load_until_gone(server.base.clone(), "graceful-test-key", CLIENTS, secs(20)));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let log = server.stop().await;
    let accepted = load.await.unwrap().len() as u64;
    let counted = counted_in_redis(&redis, "graceful");
    println!("SIGTERM under load: {accepted} accepted, {counted} counted in Redis");
    assert!(accepted > 50, "only {accepted} requests before the stop: no load to speak of");
    assert_eq!(counted, accepted, "a graceful stop lost or added usage:\n{log}");
    assert!(!log.contains("usage not yet written"), "{log}");

    // SIGKILL: what the flusher had not written yet is lost, and nothing more.
    let mut server = SpawnedServer::start("usage-sigkill", &config).await;
    let load = tokio::spawn(load_until_gone(server.base.clone(), "killed-test-key", CLIENTS, secs(20)));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.child.kill().unwrap();
    let killed_at = Instant::now();
    server.child.wait().unwrap();
    let replies = load.await.unwrap();
    let accepted = replies.len() as u64;
    let counted = counted_in_redis(&redis, "killed");
    let (first, latest) = (replies.iter().min().unwrap(), replies.iter().max().unwrap());
    let seconds = latest.duration_since(*first).as_secs_f64();
    // Unwritten at the kill: what came since the last flush began (at most `usage_flush_ms`
    // ago, plus the flush's own round trip and a busy machine's scheduling: 300 ms more).
    let window = Duration::from_millis(FLUSH_MS + 300);
    let last = replies.iter().filter(|t| killed_at.duration_since(**t) <= window).count() as u64;
    let lost = accepted as i64 - counted as i64;
    println!(
        "SIGKILL under load: {accepted} accepted (about {:.0}/s), {counted} counted in Redis, {lost} lost; \
         {last} accepted in the last {} ms",
        accepted as f64 / seconds,
        window.as_millis()
    );
    assert!(accepted > 50, "only {accepted} requests before the kill: no load to speak of");
    // Counted but never answered: at most the requests in flight, one per client.
    assert!(lost >= -(CLIENTS as i64), "{counted} counted of {accepted} accepted");
    assert!(lost <= last as i64, "{lost} lost, more than the {last} of the last flush interval");
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_outage_usage_is_held_up_to_usage_buffer_keys_and_written_when_redis_is_back() {
    let mut redis = Redis::start("buffer-cap");
    let tenants: Vec<TestTenant> = ["cap-a", "cap-b", "cap-c"]
        .iter()
        .map(|id| TestTenant::new(id, 1_000, 1_000, 1_000_000_000))
        .collect();
    let config = cluster_config(Some(&redis.url()), &tenants)
        .replace("usage_flush_ms = 200\n", "usage_flush_ms = 200\nusage_buffer_keys = 2\n");
    let server = SpawnedServer::start("buffer-cap", &config).await;
    let embed = |tenant: &str| {
        let key = format!("{tenant}-test-key");
        let server = &server;
        async move { server.post_as(&key, "/v1/embed", json!({ "input": "held" })).await.0 }
    };
    let held = "embedserve_usage_held";
    let dropped = "embedserve_usage_dropped_total";

    redis.kill();
    // The first request finds Redis gone: decided locally, its usage held (one counter), and
    // the flusher's failed batch keeps holding it.
    assert_eq!(embed("cap-a").await, 200);
    wait_for_metric(&server, held, 1.0).await;
    assert_eq!(server.metric("embedserve_store_up").await, 0.0);
    // A second counter fits; a third tenant's would pass the bound: dropped and counted.
    assert_eq!(embed("cap-b").await, 200);
    assert_eq!(embed("cap-c").await, 200);
    assert_eq!(server.metric(dropped).await, 1.0);
    // A counter already held still counts.
    assert_eq!(embed("cap-b").await, 200);
    assert_eq!(embed("cap-c").await, 200);
    assert_eq!(server.metric(dropped).await, 2.0);
    wait_for_metric(&server, held, 2.0).await;
    let log = server.log_text();
    assert_eq!(log.matches("usage counters held reached store.usage_buffer_keys").count(), 1, "{log}");

    // Redis is back: what was held is written, once.
    redis.restart();
    wait_for_metric(&server, held, 0.0).await;
    wait_for_metric(&server, "embedserve_store_up", 1.0).await;
    let counted: Vec<u64> = ["cap-a", "cap-b", "cap-c"].iter().map(|t| counted_in_redis(&redis, t)).collect();
    assert_eq!(counted, [1, 2, 0], "requests counted per tenant after the outage");
}

/// Waits (10 s at most) until `sample` on `server` reads `want`.
async fn wait_for_metric(server: &SpawnedServer, sample: &str, want: f64) {
    let deadline = Instant::now() + secs(10);
    loop {
        // Not yet counted reads as 0; a misspelt name fails by the deadline.
        let now = find_sample(&server.metrics().await, sample).unwrap_or(0.0);
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sample} is {now}, never {want}:\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
