//! schemathesis, the real tool, against the service's OpenAPI document on a real server:
//! generated valid and invalid requests to every public route, bounded by
//! `tests/schemathesis.toml` (50 examples per phase and operation). Every response must be a
//! documented status in the documented shape, and none a 5xx.

use std::process::Command;

use crate::helpers::*;

#[tokio::test]
async fn generated_requests_get_documented_answers_and_no_server_error() {
    // schemathesis sends wrong keys to every operation on purpose and expects 401; from one
    // address, 17 operations pass the auth throttle's 30 failures a minute (tested on its own
    // in tests/fast/hardening.rs), which would answer 429 instead.
    let mut settings = default_settings();
    settings.server.auth_failures_per_minute = 100_000;
    let server = TestServer::start(settings);
    let schema = server.url("/openapi.json");
    let r = server.get("/openapi.json").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    // The `st` command that pip installs beside the venv's python.
    let st = python().with_file_name("st");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("600")
            .arg(st)
            .args(["--no-color", "--config-file"])
            .arg(repo().join("tests/schemathesis.toml"))
            .args(["run", &schema, "-H", &format!("Authorization: Bearer {ACME_KEY}")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" passed"), "no test case ran:\n{stdout}");
}
