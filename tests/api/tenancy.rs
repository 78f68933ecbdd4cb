//! Tenants: keys, isolation of models, and per-tenant limits.

use futures::future::join_all;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn the_key_may_also_come_as_x_api_key() {
    let server = TestServer::shared();
    let r = client_with_key(None)
        .post(server.url("/v1/embed"))
        .header("x-api-key", ACME_KEY)
        .json(&json!({ "input": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_tenant_cannot_use_or_see_another_tenants_private_model() {
    // A server of its own: four requests stay within globex's burst of 5.
    let server = TestServer::start(default_settings());
    for route in EMBED_ROUTES {
        let denied =
            server.post_as(Some(GLOBEX_KEY), route, json!({ "input": "x", "model": "paraphrase-l3" })).await;
        let missing =
            server.post_as(Some(GLOBEX_KEY), route, json!({ "input": "x", "model": "no-such-model" })).await;
        assert_eq!(denied.status(), 404);
        assert_eq!(missing.status(), 404);
        let (denied, missing): (serde_json::Value, serde_json::Value) =
            (denied.json().await.unwrap(), missing.json().await.unwrap());
        // Exactly the same answer as for a model that does not exist, but for the name.
        let normalise = |v: &serde_json::Value, name: &str| v.to_string().replace(name, "MODEL");
        assert_eq!(normalise(&denied, "paraphrase-l3"), normalise(&missing, "no-such-model"));
    }
    let models: serde_json::Value = client_with_key(Some(GLOBEX_KEY))
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> =
        models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["minilm-l6-int8"]);
}

#[tokio::test]
async fn a_429_body_has_the_error_shape() {
    let server = TestServer::start(default_settings());
    let responses =
        join_all((0..8).map(|_| server.post_as(Some(GLOBEX_KEY), "/v1/embeddings", json!({ "input": "x" }))))
            .await;
    let refused = responses.into_iter().find(|r| r.status() == 429).expect("a refusal");
    let body = refused.json().await.unwrap();
    assert_error_shape(&body);
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn a_tenants_token_budget_is_enforced() {
    let mut settings = default_settings();
    settings.tenants.get_mut("globex").unwrap().limits.tokens_per_minute = 20;
    let server = TestServer::start(settings);
    // "[CLS] one two three [SEP]" is 5 tokens: four fit in 20, the fifth does not.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            server
                .post_as(Some(GLOBEX_KEY), "/v1/embed", json!({ "input": "one two three" }))
                .await
                .status()
                .as_u16(),
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await; // stay under 5 requests/s
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
    let over = server.post_as(Some(GLOBEX_KEY), "/v1/embed", json!({ "input": "word ".repeat(40) })).await;
    assert_eq!(over.status(), 413, "a request larger than a whole minute's budget can never pass");
}

#[test]
fn hash_key_prints_the_sha256_of_stdin_without_its_newline() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_embedserve"))
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"acme-dev-key\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "7f2e6802f17f6ba210bb387707340e4fa6d03de0347ddcc5dd4ece4439694fce"
    );
}

#[test]
fn check_config_names_the_file_and_field_of_every_problem() {
    let dir = crate::spawned::TempDir::new("check-config");
    let path = dir.0.join("bad.toml");
    let text = crate::spawned::default_config_text()
        .replace(
            "keys = [\"12cad79350669be6df490bdd33bd12237b1b5c2b917224bf9b70b380e35c3e95\"]",
            "keys = [\"not-a-hash\"]",
        )
        .replace("limits = { requests_per_second = 5,", "limits = { requests_per_second = 0,")
        .replace("[tenants.globex]", "[tenants.globex]\ndefault_model = \"paraphrase-l3\"");
    let stderr = check_config_fails(&path, &text);
    for field in [
        "tenants.globex.keys[0]",
        "tenants.globex.limits.requests_per_second",
        "tenants.globex.default_model",
    ] {
        assert!(stderr.contains(&format!("{}: {field}:", path.display())), "{field} not named in:\n{stderr}");
    }
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_embedserve"))
        .args(["check-config", "--config", "config/default.toml"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
fn check_config_opens_every_models_files_and_names_what_is_wrong() {
    let dir = crate::spawned::TempDir::new("check-config-files");
    let garbage = dir.0.join("garbage.onnx");
    std::fs::write(&garbage, b"this is not an ONNX graph").unwrap();
    let bad_tokenizer = dir.0.join("tokenizer.json");
    std::fs::write(&bad_tokenizer, b"{\"not\": \"a tokenizer\"}").unwrap();
    let text = crate::spawned::default_config_text()
        .replace(
            &format!("onnx = \"{}/assets/models/paraphrase-l3-int8/model.onnx\"", repo().display()),
            &format!("onnx = \"{}\"", garbage.display()),
        )
        .replace("output = \"last_hidden_state\"", "output = \"no_such_output\"")
        .replace(
            "[tenants.globex]",
            &format!(
                "[tenants.globex.private_models.missing]\nonnx = \"{0}/nope.onnx\"\ntokenizer = \"{1}\"\n\
                 output = \"x\"\npooling = \"mean\"\nmax_tokens = 16\ndimensions = 8\n\n[tenants.globex]",
                dir.0.display(),
                bad_tokenizer.display()
            ),
        );
    let path = dir.0.join("config.toml");
    let stderr = check_config_fails(&path, &text);
    for needle in [
        "models.minilm-l6-int8.onnx:",
        "the graph has no output \"no_such_output\"",
        "tenants.acme.private_models.paraphrase-l3.onnx:",
        "not an ONNX model",
        "tenants.globex.private_models.missing.onnx:",
        "cannot read",
        "tenants.globex.private_models.missing.tokenizer:",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
}

/// Writes `text` to `path`, runs `embedserve check-config` on it, asserts it fails and returns
/// what it printed.
fn check_config_fails(path: &std::path::Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_embedserve"))
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}
