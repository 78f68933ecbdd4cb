//! Batching under load: fairness between tenants, a bounded queue, and clients that leave.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;

use crate::helpers::*;
use crate::spawned::{SpawnedServer, default_config_text};

fn flood_input() -> Vec<String> {
    (0..32).map(|i| format!("flood sentence {i} with a handful of words to embed in a batch")).collect()
}

#[tokio::test]
async fn a_quiet_tenant_is_served_promptly_while_another_floods_the_same_model() {
    let server = &TestServer::start(default_settings());
    let started = Instant::now();
    let flood = async {
        let requests =
            (0..40).map(|_| server.post_as(Some(ACME_KEY), "/v1/embed", json!({ "input": flood_input() })));
        let statuses: Vec<u16> = join_all(requests).await.iter().map(|r| r.status().as_u16()).collect();
        (statuses, started.elapsed())
    };
    let quiet = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut latencies = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let r =
                server.post_as(Some(GLOBEX_KEY), "/v1/embed", json!({ "input": "a quiet request" })).await;
            assert_eq!(r.status(), 200, "the quiet tenant was refused");
            latencies.push(t.elapsed());
        }
        latencies
    };
    let ((flood_statuses, flood_time), quiet) = tokio::join!(flood, quiet);
    assert!(flood_statuses.iter().all(|s| *s == 200), "{flood_statuses:?}");
    let worst = quiet.iter().max().unwrap();
    // First in, first out would put each quiet request behind the whole flood.
    assert!(
        *worst * 4 < flood_time,
        "quiet tenant's slowest request took {worst:?} while the flood took {flood_time:?}"
    );
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_with_retry_after_and_memory_stays_bounded() {
    // One tenant may fill the whole queue here, so the model's bound is what refuses.
    let config = default_config_text()
        .replace("max_queue_tokens = 200_000", "max_queue_tokens = 3_000")
        .replace("max_tenant_queue_percent = 50", "max_tenant_queue_percent = 100");
    let server = SpawnedServer::start("bounded-queue", &config).await;
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse::<u64>()
            .unwrap()
            >> 10
    };
    let before = rss();
    let client = client_with_key(Some(ACME_KEY));
    let requests = (0..60).map(|_| {
        let client = client.clone();
        let url = server.url("/v1/embed");
        async move {
            let r = client.post(url).json(&json!({ "input": flood_input() })).send().await.unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry, r.json::<serde_json::Value>().await.unwrap())
        }
    });
    let results = join_all(requests).await;
    let refused: Vec<_> = results.iter().filter(|(s, _, _)| *s == 503).collect();
    assert!(!refused.is_empty(), "60 concurrent 32-input requests never filled a 3000-token queue");
    assert!(results.iter().all(|(s, _, _)| *s == 200 || *s == 503));
    for (_, retry, body) in &refused {
        assert!(*retry, "503 without Retry-After");
        assert_eq!(body["error"]["code"], "overloaded");
    }
    assert!(
        server.metric("embedserve_refusals_total{model=\"minilm-l6-int8\",reason=\"queue_full\"}").await
            >= 1.0
    );
    let after = rss();
    assert!(after < before + 300, "resident memory grew from {before} MiB to {after} MiB");
    let (status, _) = server.post_as(ACME_KEY, "/v1/embed", json!({ "input": "after the burst" })).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn under_real_inference_a_flooding_tenant_is_held_to_its_share_and_a_quiet_one_is_served() {
    let config = default_config_text().replace("max_queue_tokens = 200_000", "max_queue_tokens = 3_000");
    let server = SpawnedServer::start("tenant-share", &config).await;
    let client = client_with_key(Some(ACME_KEY));
    let flood = join_all((0..60).map(|_| {
        let request = client.post(server.url("/v1/embed")).json(&json!({ "input": flood_input() }));
        async move {
            let r = request.send().await.unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry, r.json::<serde_json::Value>().await.unwrap())
        }
    }));
    let quiet = async {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            statuses
                .push(server.post_as(GLOBEX_KEY, "/v1/embed", json!({ "input": "a quiet request" })).await.0);
        }
        statuses
    };
    let (flood, quiet) = tokio::join!(flood, quiet);
    assert_eq!(quiet, [200, 200, 200], "the quiet tenant was refused during the flood");
    let refused: Vec<_> = flood.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(!refused.is_empty(), "the flood was never held to its share of a 3000-token queue");
    assert!(flood.iter().all(|(s, _, _)| *s == 200 || *s == 429), "only 200 or 429 for the flood");
    for (_, retry, body) in refused {
        assert!(*retry, "429 without Retry-After");
        assert_eq!(body["error"]["code"], "tenant_queue_full");
    }
    let share = "embedserve_refusals_total{model=\"minilm-l6-int8\",reason=\"tenant_queue_share\"}";
    assert!(server.metric(share).await >= 1.0);
}

#[tokio::test]
async fn a_request_whose_client_went_away_is_dropped_from_the_queue() {
    let server = &TestServer::start(default_settings());
    let long = reference()["texts"]["over_limit"].clone();
    let runs = "embedserve_inference_duration_seconds_count{model=\"minilm-l6-int8\"}";
    server.embed("minilm-l6-int8", json!("a first run, so the run count exists")).await;
    let before = server.metric(runs).await;
    // Keep the model busy: 96 long inputs run as three chunks of 32...
    let busy = server.post("/v1/embed", json!({ "input": vec![long; 96] }));
    let impatient = async {
        // ...once the first chunk has run, two more are still to go...
        while server.metric(runs).await < before + 1.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // ...so a request queued now waits, and its client gives up before its turn.
        let client = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().unwrap();
        let r = client
            .post(server.url("/v1/embed"))
            .bearer_auth(ACME_KEY)
            .json(&json!({ "input": "gone" }))
            .send()
            .await;
        assert!(r.is_err(), "the request was meant to time out client-side");
    };
    let ((status, _), ()) = tokio::join!(busy, impatient);
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let gone = "embedserve_refusals_total{model=\"minilm-l6-int8\",reason=\"client_gone\"}";
    while !server.metrics().await.contains(&format!("{gone} 1")) {
        assert!(Instant::now() < deadline, "the abandoned job was never dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
