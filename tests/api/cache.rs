//! The session cache: single-flight loads, the memory budget, and load failures that stay
//! with their own model.

use futures::future::join_all;
use serde_json::json;

use crate::helpers::*;
use crate::spawned::{SpawnedServer, TempDir, default_config_text, give_acme};

#[tokio::test]
async fn fifty_concurrent_first_requests_cause_exactly_one_load_and_all_are_correct() {
    let server = &TestServer::start(default_settings()); // preloads minilm-l6-int8 only
    let reference = reference();
    let names: Vec<String> = reference["texts"].as_object().unwrap().keys().cloned().collect();
    let requests =
        (0..50).map(|i| {
            let name = names[i % names.len()].clone();
            let text = reference["texts"][&name].clone();
            async move {
                (name, server.post("/v1/embed", json!({ "model": "paraphrase-l3", "input": text })).await)
            }
        });
    for (name, (status, body)) in join_all(requests).await {
        assert_eq!(status, 200, "{body}");
        let got = &vectors(&body["embeddings"])[0];
        let cos = cosine(got, &reference_vector("paraphrase-l3", &name));
        assert!(cos >= REFERENCE_MIN_COSINE, "{name}: cosine {cos}");
    }
    assert_loads_and_misses(server, 1.0, 50.0).await;
}

/// acme's private paraphrase-l3: successful loads and cache misses so far.
async fn assert_loads_and_misses(server: &TestServer, loads: f64, misses: f64) {
    let model = "model=\"acme/paraphrase-l3\"";
    assert_eq!(
        server.metric_or_zero(&format!("embedserve_model_loads_total{{{model},outcome=\"ok\"}}")).await,
        loads
    );
    assert_eq!(
        server.metric_or_zero(&format!("embedserve_cache_lookups_total{{{model},result=\"miss\"}}")).await,
        misses
    );
}

#[tokio::test]
async fn a_corrupt_model_fails_only_its_own_requests_and_retries_after_a_backoff() {
    let dir = TempDir::new("corrupt-model");
    let corrupt = dir.0.join("model.onnx");
    std::fs::write(&corrupt, b"this is not an ONNX graph").unwrap();
    let mut settings = default_settings();
    let mut spec = settings.models["minilm-l6-int8"].clone();
    spec.onnx = corrupt;
    let acme = settings.tenants.get_mut("acme").unwrap();
    acme.private_models.insert("broken".into(), spec);
    let server = TestServer::start(settings);

    let (status, body) = server.post("/v1/embed", json!({ "model": "broken", "input": "x" })).await;
    assert_eq!(status, 503, "{body}");
    let message = assert_error_shape(&body);
    assert!(message.contains("`broken` could not be loaded"), "{message}");
    assert!(!message.contains("acme/"), "the cache id leaked: {message}");
    assert_eq!(body["error"]["code"], "model_unavailable");

    // Within the backoff the load is not tried again, and the answer says when to retry.
    let r = server
        .client
        .post(server.url("/v1/embed"))
        .json(&json!({ "model": "broken", "input": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        server.metric("embedserve_model_loads_total{model=\"acme/broken\",outcome=\"error\"}").await,
        1.0
    );

    // Everything else keeps working, for this tenant and the others.
    let (status, _) = server.post("/v1/embed", json!({ "model": "paraphrase-l3", "input": "fine" })).await;
    assert_eq!(status, 200);
    assert_eq!(server.post_as(Some(GLOBEX_KEY), "/v1/embed", json!({ "input": "fine" })).await.status(), 200);

    // After the backoff (1 s at first) a request tries again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _) = server.post("/v1/embed", json!({ "model": "broken", "input": "x" })).await;
    assert_eq!(status, 503);
    assert_eq!(
        server.metric("embedserve_model_loads_total{model=\"acme/broken\",outcome=\"error\"}").await,
        2.0
    );
}

const THREE: [(&str, &str); 3] = [
    ("minilm-l6-int8", "minilm-l6-int8"),
    ("paraphrase-l3", "acme/paraphrase-l3"),
    ("minilm-l6-int8-cls", "minilm-l6-int8-cls"),
];

/// config/default.toml with a third model (the int8 graph with CLS pooling, a session of its
/// own) for acme, and the given cache budget.
fn three_model_config(budget: u64) -> String {
    let text = default_config_text();
    let minilm = text.split("[models.minilm-l6-int8]").nth(1).unwrap().split("\n\n").next().unwrap();
    let cls = format!(
        "[models.minilm-l6-int8-cls]{}\n\n",
        minilm.replace("pooling = \"mean\"", "pooling = \"cls\"")
    );
    give_acme(&text, "minilm-l6-int8-cls")
        .replace("max_bytes = 1_073_741_824", &format!("max_bytes = {budget}"))
        .replace("# Demo tenants", &format!("{cls}# Demo tenants"))
}

async fn use_model(server: &SpawnedServer, model: &str) {
    let (status, body) =
        server.post_as(ACME_KEY, "/v1/embed", json!({ "model": model, "input": "budget" })).await;
    assert_eq!(status, 200, "{model}: {body}");
}

/// Each model states its resident size (200 MiB), so the budget (450 MiB) fits any two of the
/// three and never all three, whatever this machine's RSS measurements say.
#[tokio::test]
async fn using_three_models_under_a_budget_for_two_keeps_resident_bytes_within_it() {
    const MIB: u64 = 1 << 20;
    let budget = 450 * MIB;
    let config = three_model_config(budget)
        .replace("dimensions = 384\n", &format!("dimensions = 384\nresident_bytes = {}\n", 200 * MIB));
    let server = SpawnedServer::start("eviction", &config).await;
    let mib = |b: u64| b >> 20;

    for (model, _) in THREE.iter().chain(&THREE[..2]) {
        use_model(&server, model).await;
        let resident = server.metric("embedserve_cache_resident_bytes").await as u64;
        assert!(
            resident <= budget,
            "after {model}: {} MiB resident over a {} MiB budget",
            mib(resident),
            mib(budget)
        );
    }
    let mut evictions = 0.0;
    for (_, id) in THREE {
        evictions +=
            server.metric_or_zero(&format!("embedserve_model_evictions_total{{model=\"{id}\"}}")).await;
    }
    assert!(evictions >= 2.0, "{evictions} evictions over five uses of three models");

    // The first model was evicted to make room for the third, and reloads with correct vectors.
    assert_eq!(
        server.metric("embedserve_model_loads_total{model=\"minilm-l6-int8\",outcome=\"ok\"}").await,
        2.0
    );
    let reference = reference();
    for (name, text) in reference["texts"].as_object().unwrap() {
        let (status, body) =
            server.post_as(ACME_KEY, "/v1/embed", json!({ "model": "minilm-l6-int8", "input": text })).await;
        assert_eq!(status, 200);
        let cos = cosine(&vectors(&body["embeddings"])[0], &reference_vector("minilm-l6-int8", name));
        assert!(cos >= REFERENCE_MIN_COSINE, "{name} after reload: cosine {cos}");
    }
}
