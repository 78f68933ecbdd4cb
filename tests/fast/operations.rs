//! What operators rely on: probes, metrics, request ids, and a panic that is answered,
//! counted and logged once.

use std::sync::Arc;

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

/// Log lines written on this thread while a test runs, as the JSON logger writes them.
///
/// One subscriber serves the whole test binary, installed once, and writes only the events of
/// a thread that is capturing. A scoped subscriber per test (`set_default`) loses events:
/// tracing caches each call site's interest across threads, and a call site first reached by
/// another test's thread, with no subscriber of its own, can be cached as disabled for all
/// (this test failed 4 runs in 15 so). Here every call site's interest is "sometimes", asked
/// again at each event.
mod logs {
    use std::cell::RefCell;
    use std::io::Write;
    use std::sync::{Arc, Mutex, Once};

    use tracing::subscriber::Interest;
    use tracing::{Level, Metadata};
    use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
    use tracing_subscriber::{Layer, Registry};

    /// Where this thread's events go, and from which level.
    type Sink = (Arc<Mutex<Vec<u8>>>, Level);

    thread_local! {
        static CAPTURE: RefCell<Option<Sink>> = const { RefCell::new(None) };
    }

    /// Captures this thread's events at `level` and above until dropped.
    pub struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Capture {
        pub fn start(level: Level) -> Self {
            static INSTALL: Once = Once::new();
            INSTALL.call_once(|| {
                let layer = tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(|| ThreadWriter)
                    .with_filter(Capturing);
                tracing::subscriber::set_global_default(Registry::default().with(layer))
                    .expect("no other global subscriber in this test binary");
            });
            let buffer = Arc::default();
            CAPTURE.with(|c| *c.borrow_mut() = Some((Arc::clone(&buffer), level)));
            Self(buffer)
        }

        pub fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl Drop for Capture {
        fn drop(&mut self) {
            CAPTURE.with(|c| *c.borrow_mut() = None);
        }
    }

    /// Lets through what the current thread captures; never cached per call site.
    struct Capturing;

    impl<S> Filter<S> for Capturing {
        fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
            CAPTURE.with(|c| c.borrow().as_ref().is_some_and(|(_, level)| meta.level() <= level))
        }

        fn callsite_enabled(&self, _: &'static Metadata<'static>) -> Interest {
            Interest::sometimes()
        }
    }

    struct ThreadWriter;

    impl Write for ThreadWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            CAPTURE.with(|c| {
                if let Some((buffer, _)) = c.borrow().as_ref() {
                    buffer.lock().unwrap().extend_from_slice(buf);
                }
            });
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_in_the_error_shape_counted_and_logged_once() {
    let app = FastApp::default().await;
    let logs = logs::Capture::start(tracing::Level::INFO);

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
    let text = logs.text();
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
    let logs = logs::Capture::start(tracing::Level::TRACE);
    app.embed(json!({ "input": "logged request" })).await;
    app.post("/v1/embed", Some("a-wrong-secret-key"), json!({ "input": "x" })).await;
    let text = logs.text();
    assert!(text.contains("\"tenant\":\"acme\""), "the request was not logged:\n{text}");
    for secret in [ACME_KEY, "a-wrong-secret-key"] {
        assert!(!text.contains(secret), "{secret} is in the log");
    }
}
