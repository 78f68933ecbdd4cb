//! Bad input gets the documented status and the one JSON error shape, on every route, and the
//! service keeps serving.

use serde_json::{Value, json};

use crate::helpers::*;

async fn assert_status(server: &TestServer, route: &str, body: Value, status: u16, param: Option<&str>) {
    let (got, response) = server.post(route, body.clone()).await;
    assert_eq!(got, status, "{route} {body} -> {response}");
    assert_error_shape(&response);
    if let Some(param) = param {
        assert_eq!(response["error"]["param"], param, "{route} {body} -> {response}");
    }
}

#[tokio::test]
async fn invalid_requests_get_422_with_the_field_named() {
    let server = TestServer::shared();
    for route in EMBED_ROUTES {
        for body in invalid_input_bodies() {
            assert_status(server, route, body, 422, Some("input")).await;
        }
        for dims in [0, 385, 100_000] {
            assert_status(
                server,
                route,
                json!({ "input": "x", "dimensions": dims }),
                422,
                Some("dimensions"),
            )
            .await;
        }
        assert_status(server, route, json!({ "input": "x", "dimensions": -1 }), 422, None).await;
        assert_status(server, route, json!({ "input": "x", "encoding_format": "int8" }), 422, None).await;
    }
    assert_status(server, "/v1/embed", json!({ "input": "x", "normalise": true }), 422, None).await;
}

#[tokio::test]
async fn an_unknown_model_gets_404() {
    let server = TestServer::shared();
    for route in EMBED_ROUTES {
        assert_status(server, route, json!({ "input": "x", "model": "gpt-4" }), 404, Some("model")).await;
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let server = TestServer::shared();
    let r = server.get("/v2/nothing").await;
    assert_eq!(r.status(), 404);
    assert_error_shape(&r.json().await.unwrap());
    let r = server.get("/v1/embed").await;
    assert_eq!(r.status(), 405);
    assert_error_shape(&r.json().await.unwrap());
}

#[tokio::test]
async fn an_onnx_runtime_failure_is_a_500_naming_the_input_and_the_service_keeps_serving() {
    // A model allowed more tokens than its 512 position embeddings: short inputs work, and a
    // long one fails inside ONNX Runtime, for real.
    let mut settings = default_settings();
    let mut overlong = settings.models["minilm-l6-int8"].clone();
    overlong.max_tokens = 600;
    settings.models.insert("overlong".into(), overlong);
    settings.tenants.get_mut("acme").unwrap().models.push("overlong".into());
    let server = TestServer::start(settings);

    let (status, _) = server.post("/v1/embed", json!({ "input": "short", "model": "overlong" })).await;
    assert_eq!(status, 200);
    let long = "word ".repeat(700);
    let (status, body) =
        server.post("/v1/embed", json!({ "input": ["short", long], "model": "overlong" })).await;
    assert_eq!(status, 500, "{body}");
    let message = assert_error_shape(&body);
    assert_eq!(body["error"]["code"], "model_error", "{body}");
    assert!(message.starts_with("The model could not process input 1 of `input`;"), "{message}");
    assert!(!message.contains("ONNX"), "the cause leaked: {message}");

    let (status, _) = server.post("/v1/embed", json!({ "input": "still here", "model": "overlong" })).await;
    assert_eq!(status, 200);
    let (status, _) = server.post("/v1/embed", json!({ "input": "still here" })).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_missing_onnx_runtime_library_is_a_one_line_startup_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_embedserve"))
        .args([
            "serve",
            "--config",
            "config/default.toml",
            "--bind",
            "127.0.0.1:0",
            "--metrics-bind",
            "127.0.0.1:0",
        ])
        .current_dir(repo())
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert!(
        error_lines[0].contains("/nonexistent/libonnxruntime.so") && error_lines[0].contains("make assets"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
