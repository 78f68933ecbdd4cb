//! What an attacker tries first, through the real router: echoes, media types, declared sizes,
//! open routes, guessed keys and malformed bodies. Socket-level attacks (slow clients, floods,
//! shutdown) run against the real binary in `tests/api/hardening.rs`.

use crate::fake::FakeLoader;
use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::json;
use tower::ServiceExt;

use crate::helpers::*;

async fn request_id_for(app: &FastApp, sent: &[u8]) -> String {
    let request = Request::builder().uri("/health").header("x-request-id", sent).body(Body::empty()).unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    response.headers()["x-request-id"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn only_short_plain_request_ids_are_echoed_and_others_are_replaced() {
    let app = FastApp::default().await;
    assert_eq!(request_id_for(&app, b"trace-42.a:b").await, "trace-42.a:b");
    for bad in
        ["x".repeat(300_000).into_bytes(), b"".to_vec(), "caf\u{e9}".as_bytes().to_vec(), b"a b".to_vec()]
    {
        let echoed = request_id_for(&app, &bad).await;
        assert_eq!(echoed.len(), 36, "not replaced by a UUID: {} bytes", echoed.len());
    }
}

#[tokio::test]
async fn names_echoed_in_errors_are_cut_and_escaped() {
    let app = FastApp::default().await;
    let long = "m".repeat(100_000);
    let r = app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "x", "model": long })).await;
    assert_eq!(r.status, 404);
    assert!(r.body.to_string().len() < 400, "{} bytes echoed", r.body.to_string().len());
    let r = app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "x", "model": "abc\u{202e}fed" })).await;
    let message = assert_error_shape(&r.body);
    assert!(!message.contains('\u{202e}') && message.contains("\\u{202e}"), "{message}");
    let field = "f".repeat(100_000);
    let r = app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "x", field: 1 })).await;
    assert_eq!(r.status, 422);
    assert!(r.body.to_string().len() < 600, "{} bytes echoed", r.body.to_string().len());
}

#[tokio::test]
async fn a_body_that_is_not_json_by_its_content_type_gets_415() {
    let app = FastApp::default().await;
    for kind in ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream"] {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1/embeddings")
            .header("authorization", format!("Bearer {ACME_KEY}"))
            .header("content-type", kind)
            .body(Body::from(json!({ "input": "x" }).to_string()))
            .unwrap();
        let response = app.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 415, "{kind}");
    }
    for kind in [Some("application/json; charset=utf-8"), Some("application/vnd.api+json"), None] {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/v1/embed")
            .header("authorization", format!("Bearer {ACME_KEY}"));
        if let Some(kind) = kind {
            request = request.header("content-type", kind);
        }
        let body = Body::from(json!({ "input": "x" }).to_string());
        assert_eq!(
            app.router.clone().oneshot(request.body(body).unwrap()).await.unwrap().status(),
            200,
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn a_client_expecting_100_continue_with_a_body_over_the_limit_gets_413_before_sending_it() {
    let app = FastApp::default().await;
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/embed")
        .header("authorization", format!("Bearer {ACME_KEY}"))
        .header("content-length", "5000000")
        .header("expect", "100-continue")
        // A body that never ends: reading it would hang the test.
        .body(Body::from_stream(futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>()))
        .unwrap();
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(5), app.router.clone().oneshot(request))
            .await
            .expect("answered without reading the body")
            .unwrap();
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn the_public_router_reveals_no_tenants_or_models() {
    let app = FastApp::default().await;
    app.embed(json!({ "model": "paraphrase-l3", "input": "x" })).await;
    assert_eq!(app.get("/metrics", None).await.status, 404, "metrics are on their own listener");
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.body, json!({ "status": "ready" }));
    let health = app.get("/health", None).await;
    assert_eq!(health.body, json!({ "status": "ok" }));
}

#[tokio::test]
async fn metrics_on_the_public_router_need_the_metrics_key() {
    let mut settings = default_settings();
    settings.server.metrics_key = Some(embedserve::config::keys::hash_key("scrape-key"));
    let app = FastApp::start(settings, FakeLoader::new()).await;
    assert_eq!(app.get("/metrics", None).await.status, 401);
    assert_eq!(
        app.get("/metrics", Some(ACME_KEY)).await.status,
        401,
        "a tenant's key is not the metrics key"
    );
    let r = app.get("/metrics", Some("scrape-key")).await;
    assert_eq!(r.status, 200);
    assert!(r.body.as_str().unwrap().contains("embedserve_cache_budget_bytes"));
}

#[tokio::test]
async fn failed_authentications_from_one_address_are_throttled_and_valid_keys_still_pass() {
    let mut settings = default_settings();
    settings.server.auth_failures_per_minute = 5;
    let app = FastApp::start(settings, FakeLoader::new()).await;
    let from = |ip: [u8; 4], key: &str| {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/v1/embed")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::from(json!({ "input": "x" }).to_string()))
            .unwrap();
        // What the server (or the Lambda entry) puts on every request it takes.
        request.extensions_mut().insert(embedserve::http::ClientAddr(std::net::IpAddr::from(ip)));
        app.router.clone().oneshot(request)
    };
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(from([10, 0, 0, 1], &format!("guess-{i}")).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    let throttled = from([10, 0, 0, 1], "guess-9").await.unwrap();
    assert!(throttled.headers().contains_key("retry-after"));
    assert_eq!(from([10, 0, 0, 2], "guess").await.unwrap().status(), 401, "another address is not throttled");
    assert_eq!(from([10, 0, 0, 1], ACME_KEY).await.unwrap().status(), 200, "a valid key still passes");
}

#[tokio::test]
async fn malformed_bodies_are_refused_cleanly_and_the_service_keeps_serving() {
    let app = FastApp::default().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies: Vec<(Vec<u8>, u16)> = vec![
        (format!("{{\"input\": {deep}}}").into_bytes(), 400),
        (br#"{"input": "\ud800"}"#.to_vec(), 400),
        (b"{\"input\": \"a\x00b\"}".to_vec(), 400),
        (b"{\"input\": \"\xff\xfe\"}".to_vec(), 400),
        (br#"{"input": "ok\u0000"}"#.to_vec(), 200),
        (br#"{"input": 1e999}"#.to_vec(), 400),
    ];
    for (body, status) in bodies {
        let r = app.send(Method::POST, "/v1/embed", Some(ACME_KEY), body.clone()).await;
        assert_eq!(
            r.status,
            status,
            "{:?} -> {}",
            String::from_utf8_lossy(&body[..body.len().min(40)]),
            r.body
        );
        if status != 200 {
            assert_error_shape(&r.body);
        }
    }
    assert_eq!(app.post("/v1/embed", Some(ACME_KEY), json!({ "input": "still here" })).await.status, 200);
}

#[tokio::test]
async fn usage_dates_at_the_ends_of_the_calendar_get_422_not_a_panic() {
    let app = FastApp::default().await;
    for query in [
        "end=-9999-01-01",
        "end=-9999-01-29",
        "start=-9999-01-01&end=9999-12-31",
        "start=9999-12-31",
        "end=%2B10000-01-01",
    ] {
        let r = app.get(&format!("/v1/usage?{query}"), Some(ACME_KEY)).await;
        assert_eq!(r.status, 422, "{query} -> {}", r.body);
        assert_error_shape(&r.body);
    }
    let r = app.get("/v1/usage?start=-9999-01-01&end=-9999-01-01", Some(ACME_KEY)).await;
    assert_eq!(r.status, 200, "the calendar's first day itself is a valid range: {}", r.body);
    assert_eq!(app.get("/v1/usage", Some(ACME_KEY)).await.status, 200);
}
