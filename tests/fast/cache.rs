//! The model cache: single-flight loads, validation before loading, failures that stay with
//! their model, and the memory budget.

use crate::fake::{BROKEN_MODEL, FakeLoader};
use futures::future::join_all;
use serde_json::json;

use crate::helpers::*;

const PRIVATE: &str = "model=\"acme/paraphrase-l3\"";

#[tokio::test]
async fn fifty_concurrent_first_requests_cause_exactly_one_load() {
    // Loading takes 50 ms (the warm-up run's delay): all 50 requests arrive during the load.
    let fake = FakeLoader::with_run_delay(std::time::Duration::from_millis(50));
    let app = &FastApp::start(default_settings(), fake).await; // preloads minilm-l6-int8 only
    assert_eq!(app.fake.loads(), 1);
    let replies = join_all((0..50).map(|i| {
        app.post(
            "/v1/embed",
            Some(ACME_KEY),
            json!({ "model": "paraphrase-l3", "input": format!("t{}", i % 5) }),
        )
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == 200));
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.body["embeddings"], replies[i % 5].body["embeddings"], "same text, same vector");
    }
    assert_eq!(app.fake.loads(), 2);
    let text = app.metrics();
    assert_eq!(
        metric_value(&text, &format!("embedserve_model_loads_total{{{PRIVATE},outcome=\"ok\"}}")),
        1.0
    );
    assert_eq!(
        metric_value(&text, &format!("embedserve_cache_lookups_total{{{PRIVATE},result=\"miss\"}}")),
        50.0
    );
}

#[tokio::test]
async fn an_invalid_request_for_an_unloaded_model_does_not_load_it() {
    let app = FastApp::default().await;
    let r = app
        .post("/v1/embed", Some(ACME_KEY), json!({ "model": "paraphrase-l3", "input": "x", "dimensions": 0 }))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(app.fake.loads(), 1);
    let text = app.metrics();
    assert_eq!(
        metric_or_zero(&text, &format!("embedserve_model_loads_total{{{PRIVATE},outcome=\"ok\"}}")),
        0.0
    );
    assert_eq!(
        metric_or_zero(&text, &format!("embedserve_cache_lookups_total{{{PRIVATE},result=\"miss\"}}")),
        0.0
    );
}

#[tokio::test]
async fn a_broken_model_fails_only_its_own_requests_and_is_not_retried_within_its_backoff() {
    let mut settings = default_settings();
    let mut spec = settings.models["minilm-l6-int8"].clone();
    spec.onnx = std::path::PathBuf::from(format!("/models/{BROKEN_MODEL}"));
    settings.tenants.get_mut("acme").unwrap().private_models.insert("broken".into(), spec);
    let app = FastApp::start(settings, FakeLoader::new()).await;

    for _ in 0..2 {
        let r = app.post("/v1/embed", Some(ACME_KEY), json!({ "model": "broken", "input": "x" })).await;
        assert_eq!(r.status, 503, "{}", r.body);
        let message = assert_error_shape(&r.body);
        assert!(message.contains("`broken` could not be loaded"), "{message}");
        assert!(
            !r.body.to_string().contains("acme/") && !r.body.to_string().contains(BROKEN_MODEL),
            "{}",
            r.body
        );
        assert_eq!(r.body["error"]["code"], "model_unavailable");
        assert!(r.headers.contains_key("retry-after"));
    }
    let sample = "embedserve_model_loads_total{model=\"acme/broken\",outcome=\"error\"}";
    assert_eq!(metric_value(&app.metrics(), sample), 1.0, "the second request waited out the backoff");
    assert_eq!(app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "x" })).await.status, 200);
    assert_eq!(app.post("/v1/embed", Some(GLOBEX_KEY), json!({ "input": "x" })).await.status, 200);
}

#[tokio::test]
async fn models_over_the_budget_evict_the_least_recently_used_and_reload_with_the_same_vectors() {
    const MIB: u64 = 1 << 20;
    let mut settings = default_settings();
    let mut spec = settings.models["minilm-l6-int8"].clone();
    spec.resident_bytes = Some(100 * MIB);
    for id in ["minilm-l6-int8", "copy-a", "copy-b"] {
        settings.models.insert(id.into(), spec.clone());
        settings.tenants.get_mut("acme").unwrap().models.push(id.into());
    }
    settings.tenants.get_mut("acme").unwrap().models.dedup();
    settings.cache.max_bytes = 250 * MIB; // room for two
    let app = FastApp::start(settings, FakeLoader::new()).await;
    let first = app.embed(json!({ "model": "minilm-l6-int8", "input": "same text" })).await;
    for model in ["copy-a", "copy-b", "copy-a", "minilm-l6-int8"] {
        app.embed(json!({ "model": model, "input": "x" })).await;
        let resident = metric_value(&app.metrics(), "embedserve_cache_resident_bytes") as u64;
        assert!(resident <= 250 * MIB, "after {model}: {} MiB resident", resident / MIB);
    }
    let text = app.metrics();
    let evicted =
        |id: &str| metric_or_zero(&text, &format!("embedserve_model_evictions_total{{model=\"{id}\"}}"));
    assert_eq!(evicted("minilm-l6-int8") + evicted("copy-a") + evicted("copy-b"), 2.0);
    assert_eq!(
        metric_value(&text, "embedserve_model_loads_total{model=\"minilm-l6-int8\",outcome=\"ok\"}"),
        2.0
    );
    assert_eq!(app.embed(json!({ "model": "minilm-l6-int8", "input": "same text" })).await, first);
}
