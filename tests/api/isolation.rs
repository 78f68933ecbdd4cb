//! Batch isolation on a real ONNX model that fails at run time on some inputs: tiny-xlmr with its
//! word-embedding table cut to its first rows (`scripts/make_failing_model.py`), so ONNX Runtime
//! refuses inputs holding rarer token ids ("indices element out of data bounds"). Requests of
//! many clients share its runs; only those holding such an input may fail.

use std::path::PathBuf;
use std::process::Command;

use embedserve::Settings;
use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::*;

/// Rows of the embedding table kept: token ids from this one up fail.
const ROWS: u64 = 1000;
const CLIENTS: usize = 16;
const REQUESTS_PER_CLIENT: usize = 25;

/// The Python that runs the model scripts (make's models venv).
fn models_python() -> PathBuf {
    let p = std::env::var_os("EMBEDSERVE_MODELS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-models/bin/python"));
    assert!(p.exists(), "{} not found: run the tests with `make test`, which creates it", p.display());
    p
}

/// Settings with the failing model as acme's `failing`.
fn settings_with_failing_model() -> Settings {
    let dir = std::env::temp_dir().join(format!("embedserve-failing-{}", std::process::id()));
    let folder = dir.join("failing");
    let out = Command::new(models_python())
        .arg(repo().join("scripts/make_failing_model.py"))
        .arg(&folder)
        .args(["--rows", &ROWS.to_string()])
        .output()
        .expect("scripts/make_failing_model.py runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let base = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    let base = base.replace("\"../", &format!("\"{}/", repo().display()));
    let (head, tenants) = base.split_at(base.find("[tenants.").unwrap());
    let model = format!("[models.failing]\npath = \"{}\"\n", folder.display());
    let config = dir.join("config.toml");
    std::fs::write(&config, format!("{head}\n{model}\n{tenants}")).unwrap();
    let mut settings = Settings::load(&config).unwrap();
    settings.tenants.get_mut("acme").unwrap().models.push("failing".to_owned());
    settings
}

/// Three-word phrases of the reference texts, split by whether the model can run them alone.
async fn clean_and_failing_texts(server: &TestServer) -> (Vec<String>, Vec<String>) {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/data/tiny-xlmr-reference.json")).unwrap(),
    )
    .unwrap();
    let mut phrases: Vec<String> = Vec::new();
    for text in reference["texts"].as_array().unwrap().iter().filter_map(Value::as_str).take(12) {
        let words: Vec<&str> = text.split_whitespace().collect();
        phrases.extend(words.windows(3).map(|w| w.join(" ")));
    }
    phrases.sort();
    phrases.dedup();
    let (status, tokens) = server.post("/v1/tokenize", json!({ "model": "failing", "input": phrases })).await;
    assert_eq!(status, 200, "{tokens}");
    let (mut clean, mut failing) = (Vec::new(), Vec::new());
    for (phrase, data) in phrases.into_iter().zip(tokens["data"].as_array().unwrap()) {
        let highest = data["ids"].as_array().unwrap().iter().filter_map(Value::as_u64).max().unwrap();
        if highest < ROWS { clean.push(phrase) } else { failing.push(phrase) }
    }
    assert!(
        clean.len() >= CLIENTS && failing.len() >= CLIENTS,
        "{} clean, {} failing",
        clean.len(),
        failing.len()
    );
    (clean, failing)
}

#[tokio::test]
async fn sixteen_clients_share_a_model_that_fails_on_some_inputs_and_only_those_requests_fail() {
    let server = &TestServer::start(settings_with_failing_model());
    let (clean, failing) = clean_and_failing_texts(server).await;
    let clean = &clean[..CLIENTS];
    let failing = &failing[..CLIENTS];

    // Each clean text's vector alone; each failing text fails alone.
    let mut alone = Vec::new();
    for text in clean {
        alone.push(server.embed("failing", json!(text)).await.remove(0));
    }
    let (status, body) = server.post("/v1/embed", json!({ "model": "failing", "input": failing[0] })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (500, Some("model_error")), "{body}");
    let runs_before = server.metric("embedserve_inference_duration_seconds_count{model=\"failing\"}").await;

    // Even clients send one clean text; odd ones a clean text and a failing one, the failing one
    // first or second by turns, so the error must name the right index.
    let client = |c: usize| async move {
        let mut outcomes = Vec::new();
        for r in 0..REQUESTS_PER_CLIENT {
            let text = &clean[(c + r) % CLIENTS];
            let (input, bad) = if c.is_multiple_of(2) {
                (json!([text]), None)
            } else {
                let bad = &failing[(c + r) % CLIENTS];
                if r.is_multiple_of(2) {
                    (json!([bad, text]), Some(0))
                } else {
                    (json!([text, bad]), Some(1))
                }
            };
            let (status, body) =
                server.post("/v1/embed", json!({ "model": "failing", "input": input })).await;
            outcomes.push(((c + r) % CLIENTS, bad, status, body));
        }
        outcomes
    };
    let outcomes: Vec<_> = join_all((0..CLIENTS).map(client)).await.into_iter().flatten().collect();

    let (mut clean_ok, mut clean_total, mut failing_ok, mut failing_total) = (0, 0, 0, 0);
    for (text, bad, status, body) in &outcomes {
        match bad {
            None => {
                clean_total += 1;
                assert_eq!(*status, 200, "a clean request failed: {body}");
                let got = &vectors(&body["embeddings"])[0];
                let c = cosine(got, &alone[*text]);
                assert!(c >= BATCH_MIN_COSINE, "clean text {text}: cosine {c} to its vector alone");
                clean_ok += 1;
            }
            Some(index) => {
                failing_total += 1;
                assert_eq!(*status, 500, "{body}");
                assert_eq!(body["error"]["code"], "model_error", "{body}");
                assert_eq!(body["error"]["param"], "input", "{body}");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(&format!("could not process input {index} of `input`")),
                    "{message}"
                );
                assert!(!message.contains("Gather"), "the cause leaked: {message}");
                failing_ok += 1;
            }
        }
    }
    let runs =
        server.metric("embedserve_inference_duration_seconds_count{model=\"failing\"}").await - runs_before;
    let failed_runs = server.metric("embedserve_failed_runs_total{kind=\"error\",model=\"failing\"}").await;
    let isolated = server.metric("embedserve_isolated_inputs_total{model=\"failing\"}").await;
    // A request holds at most two inputs: a run of three or more held several clients' requests.
    let shared = server.metric("embedserve_batch_size_count{model=\"failing\"}").await
        - server.metric("embedserve_batch_size_bucket{model=\"failing\",le=\"2\"}").await;
    println!(
        "{CLIENTS} clients on {}: clean requests {clean_ok}/{clean_total} got 200 with their own vector; \
         failing requests {failing_ok}/{failing_total} got 500 model_error naming their index; \
         {runs} runs, {failed_runs} failed (the one alone before included), {isolated} inputs isolated, \
         {shared} runs held more than two inputs (several clients' requests)",
        host_cpu()
    );
    assert_eq!(clean_ok, CLIENTS / 2 * REQUESTS_PER_CLIENT);
    assert_eq!(failing_ok, CLIENTS / 2 * REQUESTS_PER_CLIENT);
    assert_eq!(isolated as usize, failing_total + 1, "each failing input isolated once (and the one alone)");
    assert!(shared > 0.0, "no run held several requests: nothing was shared between clients");
    // The model kept serving: loaded once, never stopped.
    assert_eq!(server.metric("embedserve_model_loads_total{model=\"failing\",outcome=\"ok\"}").await, 1.0);
    let stops = find_sample(&server.metrics().await, "embedserve_model_stops_total{model=\"failing\"}");
    assert_eq!(stops, None, "the model was never stopped");
    assert_eq!(server.embed("failing", json!(clean[0])).await.len(), 1);
}
