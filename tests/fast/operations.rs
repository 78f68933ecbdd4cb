//! What operators rely on: probes, metrics, request ids, and a panic that is answered,
//! counted and logged once.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn health_and_ready_answer_without_a_key() {
    let app = FastApp::default().await;
    assert_eq!(app.get("/health", None).await.body["status"], "ok");
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "ready");
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_runs_by_tenant_and_model() {
    let app = FastApp::default().await;
    app.embed(json!({ "input": ["abc", "de"] })).await;
    let text = app.metrics();
    let model = "model=\"minilm-l6-int8\"";
    for (sample, value) in [
        (
            format!(
                "embedserve_requests_total{{{model},route=\"/v1/embed\",status=\"200\",tenant=\"acme\"}}"
            ),
            1.0,
        ),
        (format!("embedserve_tokens_total{{{model},tenant=\"acme\"}}"), 9.0),
        (format!("embedserve_embeddings_total{{{model},tenant=\"acme\"}}"), 2.0),
        (format!("embedserve_model_loads_total{{{model},outcome=\"ok\"}}"), 1.0),
        (format!("embedserve_inference_duration_seconds_count{{{model}}}"), 1.0),
        ("embedserve_cache_budget_bytes".to_owned(), 1_073_741_824.0),
    ] {
        assert_eq!(metric_value(&text, &sample), value, "{sample}");
    }
}

#[tokio::test]
async fn the_request_id_is_echoed_or_generated() {
    let app = FastApp::default().await;
    let request = axum::http::Request::builder().uri("/health").header("x-request-id", "abc-123");
    let response =
        tower::ServiceExt::oneshot(app.router.clone(), request.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let generated = app.get("/health", None).await;
    assert_eq!(generated.headers["x-request-id"].len(), 36, "a UUID is generated");
}

/// Log lines written while a test runs, as the JSON logger writes them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_in_the_error_shape_counted_and_logged_once() {
    let app = FastApp::default().await;
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().json().with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The service's own layers around a route that panics.
    let routes = Router::new().route("/panic", get(panics));
    let router = embedserve::http::with_layers(routes, Arc::clone(&app.state.api));
    let request = axum::http::Request::builder().uri("/panic").body(axum::body::Body::empty()).unwrap();
    let response = tower::ServiceExt::oneshot(router, request).await.unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value =
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap())
            .unwrap();
    assert_error_shape(&body);

    let sample = "embedserve_requests_total{model=\"\",route=\"/panic\",status=\"500\",tenant=\"\"}";
    assert_eq!(metric_value(&app.metrics(), sample), 1.0);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("\"level\":\"ERROR\"")).collect();
    assert_eq!(errors.len(), 1, "one error line, not {}:\n{text}", errors.len());
    assert!(errors[0].contains("handler panicked") && errors[0].contains("\"status\":500"), "{}", errors[0]);
}

async fn panics() -> &'static str {
    panic!("a bug in a handler")
}

#[tokio::test]
async fn api_keys_never_reach_the_logs() {
    let app = FastApp::default().await;
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    app.embed(json!({ "input": "logged request" })).await;
    app.post("/v1/embed", Some("a-wrong-secret-key"), json!({ "input": "x" })).await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("\"tenant\":\"acme\""), "the request was not logged:\n{text}");
    for secret in [ACME_KEY, "a-wrong-secret-key"] {
        assert!(!text.contains(secret), "{secret} is in the log");
    }
}
