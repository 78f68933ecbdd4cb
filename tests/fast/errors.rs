//! Bad input gets the documented status and the one JSON error shape on both routes, and the
//! service keeps serving.

use std::time::Duration;

use crate::fake::{FAILING_CHAR, FakeLoader};
use axum::http::Method;
use serde_json::{Value, json};

use crate::helpers::*;

async fn assert_refused(app: &FastApp, route: &str, body: Value, status: u16, param: Option<&str>) {
    let r = app.post(route, Some(ACME_KEY), body.clone()).await;
    assert_eq!(r.status, status, "{route} {body} -> {}", r.body);
    assert_error_shape(&r.body);
    if let Some(param) = param {
        assert_eq!(r.body["error"]["param"], param, "{route} {body} -> {}", r.body);
    }
}

#[tokio::test]
async fn invalid_requests_get_422_naming_the_field() {
    let app = FastApp::default().await;
    for route in EMBED_ROUTES {
        for body in invalid_input_bodies() {
            assert_refused(&app, route, body, 422, Some("input")).await;
        }
        for dims in [0, 385] {
            assert_refused(&app, route, json!({ "input": "x", "dimensions": dims }), 422, Some("dimensions"))
                .await;
        }
        assert_refused(&app, route, json!({ "input": "x", "encoding_format": "int8" }), 422, None).await;
    }
}

#[tokio::test]
async fn unknown_fields_are_refused_with_422_on_both_routes() {
    let app = FastApp::default().await;
    for route in EMBED_ROUTES {
        let r = app.post(route, Some(ACME_KEY), json!({ "input": "x", "normalise": true })).await;
        assert_eq!(r.status, 422, "{route}: {}", r.body);
        let message = assert_error_shape(&r.body);
        assert!(message.contains("normalise"), "{message}");
    }
    // What each route documents is accepted: OpenAI's `user`, the native `normalize`.
    assert_eq!(
        app.post("/v1/embeddings", Some(ACME_KEY), json!({ "input": "x", "user": "u1" })).await.status,
        200
    );
    assert_eq!(
        app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "x", "normalize": false })).await.status,
        200
    );
}

#[tokio::test]
async fn malformed_json_gets_400() {
    let app = FastApp::default().await;
    for route in EMBED_ROUTES {
        for raw in ["{\"input\": ", "not json", "", "{\"input\": \"x\"} trailing"] {
            let r = app.send(Method::POST, route, Some(ACME_KEY), raw).await;
            assert_eq!(r.status, 400, "{route} {raw:?} -> {}", r.body);
            assert_error_shape(&r.body);
        }
    }
}

#[tokio::test]
async fn too_many_inputs_and_oversized_bodies_get_413() {
    let app = FastApp::default().await;
    let inputs: Vec<String> = (0..257).map(|i| format!("t{i}")).collect();
    let oversized = json!({ "input": "word ".repeat(500_000) }).to_string();
    for route in EMBED_ROUTES {
        assert_refused(&app, route, json!({ "input": inputs }), 413, Some("input")).await;
        let r = app.send(Method::POST, route, Some(ACME_KEY), oversized.clone()).await;
        assert_eq!(r.status, 413, "{}", r.body);
        assert_error_shape(&r.body);
    }
}

#[tokio::test]
async fn unknown_models_routes_and_methods_answer_in_the_error_shape() {
    let app = FastApp::default().await;
    for route in EMBED_ROUTES {
        assert_refused(&app, route, json!({ "input": "x", "model": "gpt-4" }), 404, Some("model")).await;
    }
    let r = app.get("/v2/nothing", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "unknown_url");
    let r = app.get("/v1/embed", Some(ACME_KEY)).await;
    assert_eq!(r.status, 405);
    assert_error_shape(&r.body);
}

#[tokio::test]
async fn an_inference_failure_is_a_500_naming_the_input_and_the_service_keeps_serving() {
    let app = FastApp::default().await;
    let failing = format!("breaks {FAILING_CHAR} here");
    for route in EMBED_ROUTES {
        let r = app.post(route, Some(ACME_KEY), json!({ "input": ["fine", failing] })).await;
        assert_eq!(r.status, 500, "{}", r.body);
        let message = assert_error_shape(&r.body);
        assert_eq!(r.body["error"]["code"], "model_error");
        assert!(message.starts_with("The model could not process input 1 of `input`"), "{message}");
        assert!(!r.body.to_string().contains("fake"), "the cause leaked: {}", r.body);
    }
    assert_eq!(app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "still here" })).await.status, 200);
}

#[tokio::test]
async fn a_request_over_the_timeout_gets_504() {
    let mut settings = default_settings();
    settings.server.request_timeout_ms = 50;
    let app = FastApp::start(settings, FakeLoader::with_run_delay(Duration::from_millis(300))).await;
    let r = app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "slow" })).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "timeout");
    let sample = "embedserve_refusals_total{model=\"minilm-l6-int8\",reason=\"timeout\"}";
    assert_eq!(metric_value(&app.metrics(), sample), 1.0);
}

#[tokio::test]
async fn bad_rerank_requests_get_a_clear_4xx_on_every_rerank_route() {
    let app = FastApp::default().await;
    let model = "ms-marco-minilm-l12";
    let many: Vec<String> = (0..1_001).map(|i| format!("d{i}")).collect();
    for route in ["/v1/rerank", "/v2/rerank"] {
        let cases = [
            (json!({ "model": model, "documents": ["a"] }), 422, "query"),
            (json!({ "model": model, "query": "", "documents": ["a"] }), 422, "query"),
            (json!({ "model": model, "query": 3, "documents": ["a"] }), 422, "query"),
            (json!({ "model": model, "query": "q" }), 422, "documents"),
            (json!({ "model": model, "query": "q", "documents": [] }), 422, "documents"),
            (json!({ "model": model, "query": "q", "documents": ["a", 7] }), 422, "documents"),
            (json!({ "model": model, "query": "q", "documents": ["a", " "] }), 422, "documents"),
            (
                json!({ "model": model, "query": "q", "documents": [{ "title": "no text" }] }),
                422,
                "documents",
            ),
            (json!({ "model": model, "query": "q", "documents": ["a"], "top_n": 0 }), 422, "top_n"),
            (
                json!({ "model": model, "query": "q", "documents": ["a"], "max_tokens_per_doc": 0 }),
                422,
                "max_tokens_per_doc",
            ),
            (json!({ "model": model, "query": "q", "documents": many }), 413, "documents"),
            // An embedding model on a rerank route names its task and routes.
            (json!({ "model": "minilm-l6-int8", "query": "q", "documents": ["a"] }), 422, "model"),
        ];
        for (body, status, param) in cases {
            assert_refused(&app, route, body, status, Some(param)).await;
        }
    }
    let r = app
        .post(
            "/v1/rerank",
            Some(ACME_KEY),
            json!({ "model": "minilm-l6-int8", "query": "q", "documents": ["a"] }),
        )
        .await;
    assert_eq!(r.body["error"]["code"], "wrong_task");
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains("/v1/embed and /v1/embeddings"),
        "{}",
        r.body
    );
    assert_refused(&app, "/rerank", json!({ "query": "q", "texts": [] }), 422, Some("texts")).await;
    // The other way round: a rerank model on an embedding route, a sparse one on OpenAI's.
    assert_refused(&app, "/v1/embed", json!({ "model": model, "input": "x" }), 422, Some("model")).await;
    assert_refused(
        &app,
        "/v1/embeddings",
        json!({ "model": "splade-tiny", "input": "x" }),
        422,
        Some("model"),
    )
    .await;
    for (field, value) in
        [("dimensions", json!(8)), ("encoding_format", json!("base64")), ("normalize", json!(true))]
    {
        let mut body = json!({ "model": "splade-tiny", "input": "x" });
        body[field] = value;
        assert_refused(&app, "/v1/embed", body, 422, Some(field)).await;
    }
    assert_eq!(
        app.post("/v1/rerank", Some(ACME_KEY), json!({ "model": model, "query": "q", "documents": ["a"] }))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_rerank_answer_is_sorted_best_first_and_cut_to_top_n() {
    let app = FastApp::default().await;
    let documents: Vec<String> = (0..40).map(|i| format!("document number {i} {}", "x".repeat(i))).collect();
    let r = app
        .post(
            "/v1/rerank",
            Some(ACME_KEY),
            json!({ "model": "ms-marco-minilm-l12", "query": "q", "documents": documents, "top_n": 5 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let scores: Vec<f64> = r.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["relevance_score"].as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 5);
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "a sigmoid of the logit: {scores:?}");
    // 40 documents were split into runs and put back together: every index answered once.
    let all = app
        .post(
            "/v1/rerank",
            Some(ACME_KEY),
            json!({ "model": "ms-marco-minilm-l12", "query": "q", "documents": documents }),
        )
        .await;
    let mut indices: Vec<u64> =
        all.body["results"].as_array().unwrap().iter().map(|x| x["index"].as_u64().unwrap()).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..40).collect::<Vec<u64>>());
}
