//! What operators rely on: health, readiness, metrics, request ids, the model list, and an
//! async runtime that stays free while inference runs.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn health_ready_and_models_answer() {
    let server = TestServer::shared();
    let health: serde_json::Value = server.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let ready = server.get("/ready").await;
    assert_eq!(ready.status(), 200);

    let models: serde_json::Value = server.get("/v1/models").await.json().await.unwrap();
    assert_eq!(models["object"], "list");
    let data = models["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "bge-small-en-v1-5",
            "minilm-l6",
            "minilm-l6-int8",
            "ms-marco-minilm-l12",
            "paraphrase-l3",
            "splade-tiny"
        ]
    );
    assert!(data.iter().all(|m| m["object"] == "model" && m["owned_by"] == "acme"));
    let listed = |id: &str| data.iter().find(|m| m["id"] == id).unwrap();
    // Each model's task, width and token limit, as the catalogue states them.
    for (id, task, dimensions, max_tokens) in [
        ("bge-small-en-v1-5", "embed", 384, 512),
        ("minilm-l6", "embed", 384, 256),
        ("minilm-l6-int8", "embed", 384, 256),
        ("ms-marco-minilm-l12", "rerank", 1, 512),
        ("paraphrase-l3", "embed", 384, 128),
        ("splade-tiny", "sparse", 30522, 512),
    ] {
        let m = listed(id);
        assert_eq!(
            (m["task"].as_str(), m["dimensions"].as_u64(), m["max_tokens"].as_u64()),
            (Some(task), Some(dimensions), Some(max_tokens)),
            "{id}: {m}"
        );
    }
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_latency() {
    let server = TestServer::shared();
    server.embed("minilm-l6-int8", json!(["count me", "and me"])).await;
    let text = server.metrics().await;
    for needle in [
        "embedserve_requests_total{model=\"minilm-l6-int8\",route=\"/v1/embed\",status=\"200\",tenant=\"acme\"}",
        "embedserve_request_duration_seconds_bucket{route=\"/v1/embed\"",
        "embedserve_inference_duration_seconds_bucket{model=\"minilm-l6-int8\"",
        "embedserve_tokens_total{model=\"minilm-l6-int8\",tenant=\"acme\"}",
        "embedserve_cache_lookups_total{model=\"minilm-l6-int8\",result=\"hit\"}",
        "embedserve_model_resident_bytes{model=\"minilm-l6-int8\"}",
        "embedserve_cache_budget_bytes 1073741824",
        "embedserve_model_load_seconds_count{model=\"minilm-l6-int8\"} 1",
        "embedserve_batch_size_bucket{model=\"minilm-l6-int8\"",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn health_answers_while_a_large_batch_runs() {
    let server = TestServer::shared();
    let long = reference()["texts"]["over_limit"].clone();
    let batch = server.post("/v1/embed", json!({ "input": vec![long; 96] }));
    tokio::pin!(batch);
    // Let the batch reach the model's thread, then ask for /health while it runs.
    let early = tokio::time::timeout(Duration::from_millis(300), &mut batch).await;
    assert!(early.is_err(), "the batch finished too fast to test anything");
    let health = server.get("/health").await;
    assert_eq!(health.status(), 200);
    assert!(futures::poll!(&mut batch).is_pending(), "/health waited for the batch");
    let (status, body) = batch.await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["embeddings"].as_array().unwrap().len(), 96);
}
