//! Batching and fairness on the fake backend, whose run log shows what ran together and when.

use std::time::{Duration, Instant};

use crate::fake::FakeLoader;
use futures::future::join_all;
use serde_json::json;

use crate::helpers::*;

/// Runs the fake logged, as the index of the first run that contained `text`.
fn run_with(runs: &[Vec<String>], text: &str) -> Option<usize> {
    runs.iter().position(|run| run.iter().any(|t| t == text))
}

#[tokio::test]
async fn a_quiet_tenants_request_runs_next_behind_another_tenants_flood() {
    let fake = FakeLoader::with_run_delay(Duration::from_millis(60));
    let app = &FastApp::start(default_settings(), fake.clone()).await;
    let warm = fake.runs().len();
    let flood = join_all((0..10).map(|i| {
        let inputs: Vec<String> = (0..32).map(|j| format!("flood-{i}-{j}")).collect();
        app.post("/v1/embed", Some(ACME_KEY), json!({ "input": inputs }))
    }));
    let quiet = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while fake.runs().len() < warm + 2 {
            assert!(Instant::now() < deadline, "the flood never started");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let queued_at = fake.runs().len();
        let r = app.post("/v1/embed", Some(GLOBEX_KEY), json!({ "input": "quiet" })).await;
        (queued_at, r.status)
    };
    let (flood, (queued_at, quiet_status)) = tokio::join!(flood, quiet);
    assert!(flood.iter().all(|r| r.status == 200));
    assert_eq!(quiet_status, 200);
    let runs = fake.runs();
    let quiet_run = run_with(&runs, "quiet").expect("the quiet input ran");
    // At most the run in flight when it was queued and one that started while it was being
    // tokenized, then its own: not behind the rest of the flood.
    assert!(quiet_run <= queued_at + 2, "quiet ran in run {quiet_run}, queued at run {queued_at}");
    let flood_after =
        runs[quiet_run + 1..].iter().filter(|r| r.iter().any(|t| t.starts_with("flood"))).count();
    assert!(flood_after >= 3, "the flood was nearly over when quiet ran ({flood_after} runs after it)");
}

#[tokio::test]
async fn concurrent_requests_share_runs_and_each_gets_its_own_vectors() {
    let fake = FakeLoader::with_run_delay(Duration::from_millis(20));
    let app = &FastApp::start(default_settings(), fake.clone()).await;
    let texts: Vec<String> = (0..16).map(|i| format!("sentence-{i}")).collect();
    let mut alone = Vec::new();
    for text in &texts {
        alone.push(app.embed(json!({ "input": text })).await.remove(0));
    }
    let together = join_all(texts.iter().map(|t| app.embed(json!({ "input": t })))).await;
    for (i, got) in together.iter().enumerate() {
        assert_eq!(got[0], alone[i], "request {i} got another request's vector");
    }
    let widest = fake.runs().iter().map(Vec::len).max().unwrap();
    assert!(widest >= 4, "concurrent requests never shared a run (widest run {widest})");
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_with_503_and_retry_after() {
    let mut settings = default_settings();
    settings.server.max_queue_tokens = 300;
    settings.server.max_tenant_queue_percent = 100;
    let app = &FastApp::start(settings, FakeLoader::with_run_delay(Duration::from_millis(50))).await;
    // 8 inputs of 10 tokens: 80 tokens a request, so the queue holds three or four.
    let body = json!({ "input": vec!["abcdefgh"; 8] });
    let replies = join_all((0..20).map(|_| app.post("/v1/embed", Some(ACME_KEY), body.clone()))).await;
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(!refused.is_empty(), "nothing was refused");
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 503));
    for r in &refused {
        assert_eq!(r.body["error"]["code"], "overloaded");
        assert!(r.headers.contains_key("retry-after"));
    }
    let sample = "embedserve_refusals_total{model=\"minilm-l6-int8\",reason=\"queue_full\"}";
    assert_eq!(metric_value(&app.metrics(), sample), refused.len() as f64);
}

#[tokio::test]
async fn a_flooding_tenant_is_held_to_its_share_of_the_queue_and_the_other_is_never_refused() {
    let mut settings = default_settings();
    settings.server.max_queue_tokens = 1_000;
    let app = &FastApp::start(settings, FakeLoader::with_run_delay(Duration::from_millis(30))).await;
    let flood = join_all(
        (0..20).map(|_| app.post("/v1/embed", Some(ACME_KEY), json!({ "input": vec!["abcdefgh"; 8] }))),
    );
    let quiet = async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        join_all((0..3).map(|_| app.post("/v1/embed", Some(GLOBEX_KEY), json!({ "input": "quiet" })))).await
    };
    let (flood, quiet) = tokio::join!(flood, quiet);
    let share: Vec<&Reply> = flood.iter().filter(|r| r.status == 429).collect();
    assert!(!share.is_empty(), "the flood was never held to its share");
    assert!(share.iter().all(|r| r.body["error"]["code"] == "tenant_queue_full"));
    assert!(
        quiet.iter().all(|r| r.status == 200),
        "{:?}",
        quiet.iter().map(|r| r.status).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_busy_model_gains_a_second_session_and_fails_only_bad_inputs_on_either() {
    let fake = FakeLoader::with_run_delay(Duration::from_millis(30));
    let mut settings = default_settings();
    settings.runtime.sessions_per_model = 2;
    let app = &FastApp::start(settings, fake.clone()).await;
    let texts: Vec<String> = (0..24).map(|i| format!("sentence-{i}")).collect();
    let mut alone = Vec::new();
    for text in &texts {
        alone.push(app.embed(json!({ "input": text })).await.remove(0));
    }
    assert_eq!(fake.threads(), ["infer-minilm-l6-int8"], "one client at a time keeps one session");

    // Concurrent requests queue on the one session: the cache adds the second, and both serve.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let together = join_all(texts.iter().map(|t| app.embed(json!({ "input": t })))).await;
        for (i, got) in together.iter().enumerate() {
            assert_eq!(got[0], alone[i], "request {i} got another request's vector");
        }
        if fake.threads().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no second session served: {:?}", fake.threads());
    }
    assert_eq!(fake.threads(), ["infer-minilm-l6-int8", "infer-minilm-l6-int8-1"]);
    assert_eq!(fake.loads(), 1, "a second session is not another load of the model");
    assert_eq!(metric_value(&app.metrics(), r#"embedserve_model_sessions{model="minilm-l6-int8"}"#), 2.0);

    // A failing input fails alone, whichever session it meets; the others get their vectors.
    let bad = format!("bad {}", crate::fake::FAILING_CHAR);
    let replies = join_all((0..8).map(|i| {
        let input = if i == 3 { json!([texts[i], bad]) } else { json!([texts[i]]) };
        app.post("/v1/embed", Some(ACME_KEY), json!({ "input": input }))
    }))
    .await;
    for (i, r) in replies.iter().enumerate() {
        if i == 3 {
            assert_eq!(r.status, 500, "the request with the failing input: {:?}", r.body);
        } else {
            assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
            assert_eq!(vectors(&r.body["embeddings"])[0], alone[i], "request {i}'s vector");
        }
    }
}
