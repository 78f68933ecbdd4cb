//! The Lambda door: Function URL events through `lambda_http` into the router, and the real
//! function under `cargo lambda watch`, which must answer exactly like the server.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::*;
use crate::spawned::TempDir;

fn lambda_settings() -> embedserve::Settings {
    embedserve::Settings::load(&repo().join("config/lambda.toml")).expect("config/lambda.toml loads")
}

/// Feeds a Function URL event fixture from tests/data through lambda_http into the router.
async fn invoke_fixture(name: &str) -> (u16, Value) {
    let event = std::fs::read_to_string(repo().join("tests/data").join(name)).unwrap();
    let request = lambda_http::request::from_str(&event).expect("a Function URL event");
    let app = embedserve::build_app(lambda_settings()).unwrap();
    let response = app.router.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn function_url_events_reach_the_router_and_base64_bodies_are_decoded() {
    let (plain_status, plain) = invoke_fixture("function-url-embed.json").await;
    assert_eq!(plain_status, 200, "{plain}");
    assert_eq!(plain["dimensions"], 8);
    let (b64_status, b64) = invoke_fixture("function-url-embed-base64.json").await;
    assert_eq!(b64_status, 200, "{b64}");
    assert_eq!(plain["embeddings"], b64["embeddings"], "the base64 body decoded to different input");

    let (status, body) = invoke_fixture("function-url-missing-key.json").await;
    assert_eq!(status, 401);
    assert_error_shape(&body);
}

#[test]
fn the_deployment_zip_holds_what_lambda_needs_within_the_direct_upload_limits() {
    let zip = repo().join("target/lambda/embedserve.zip");
    assert!(zip.exists(), "{} missing: `make test` builds it with `make lambda-zip`", zip.display());
    let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nprint(sum(i.file_size for i in z.infolist()))\nprint('\\n'.join(z.namelist()))";
    let out = Command::new(python()).args(["-c", script]).arg(&zip).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let unzipped: u64 = lines.next().unwrap().parse().unwrap();
    let names: Vec<&str> = lines.collect();
    let zipped = std::fs::metadata(&zip).unwrap().len();
    println!(
        "lambda package: {:.1} MB zipped, {:.1} MB unzipped",
        zipped as f64 / 1e6,
        unzipped as f64 / 1e6
    );
    assert!(zipped <= 50_000_000, "{zipped} bytes zipped: over Lambda's 50 MB direct upload limit");
    assert!(unzipped <= 250_000_000, "{unzipped} bytes unzipped: over Lambda's 250 MB limit");
    for needed in [
        "bootstrap",
        "config/lambda.toml",
        "assets/onnxruntime/libonnxruntime.so.1.31.1",
        "assets/models/minilm-l6-int8/model.onnx",
        "assets/models/minilm-uncased-tokenizer.json",
    ] {
        assert!(names.contains(&needed), "{needed} not in the package: {names:?}");
    }
}

#[test]
fn the_lambda_package_config_is_valid_and_carries_the_demo_tenants() {
    let settings = lambda_settings();
    assert!(settings.tenants.contains_key("acme") && settings.tenants.contains_key("globex"));
    assert!(settings.server.emit_emf, "Lambda has no scraper: EMF lines carry the metrics");
    assert_eq!(settings.server.reload_poll_ms, 0);
}

/// The real Lambda emulator (`cargo lambda watch --only-lambda-apis`: the Runtime API and
/// Function URL front end) with the function binary running against it, as Lambda runs
/// `bootstrap`. The test starts the function itself rather than letting cargo-lambda manage
/// it: cargo-lambda's process management took this whole machine's session down when its
/// watch mode ran under `cargo test`.
///
/// The emulator holds a Function URL request until a function takes it, so a function that
/// died would hang every request: each wait here is bounded, checks that both processes are
/// alive, and a failure prints both logs (kept under target/test-tmp until the test ends).
pub struct Emulator {
    emulator: Child,
    function: Child,
    base: String,
    logs: TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for child in [&mut self.function, &mut self.emulator] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_file(dir: &TempDir, name: &str) -> std::fs::File {
    std::fs::File::create(dir.0.join(name)).unwrap()
}

impl Emulator {
    async fn start() -> Emulator {
        Emulator::start_with(&[]).await
    }

    /// The function with `env` added to its environment (configuration overrides).
    pub async fn start_with(env: &[(&str, &str)]) -> Emulator {
        // A port picked here may be taken before the emulator binds it, and a function that
        // polls before the emulator's Runtime API is up exits: each failure is printed with
        // both logs, and the whole start is tried again with fresh processes.
        let mut failures = Vec::new();
        for attempt in 1..=3 {
            match Emulator::try_start(attempt, env).await {
                Ok(emulator) => return emulator,
                Err(failure) => {
                    eprintln!("emulator start, attempt {attempt}: {failure}");
                    failures.push(failure);
                }
            }
        }
        panic!("the function never served under the emulator in 3 attempts:\n{}", failures.join("\n\n"));
    }

    async fn try_start(attempt: u32, env: &[(&str, &str)]) -> Result<Emulator, String> {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let start = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let logs = TempDir::new(&format!("lambda-emulator-{start}-{attempt}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cargo_lambda = python().parent().unwrap().join("cargo-lambda");
        let mut emulator = Command::new(cargo_lambda)
            .args(["lambda", "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &port.to_string()])
            .current_dir(repo())
            .stdin(Stdio::null())
            .stdout(log_file(&logs, "emulator.log"))
            .stderr(log_file(&logs, "emulator.err"))
            .process_group(0)
            .spawn()
            .expect("cargo-lambda runs (make test installs it into .venv)");
        // Listening, and its log says the Runtime API has started.
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            || !read_logs(&logs).contains("Runtime server")
        {
            if let Some(status) = emulator.try_wait().unwrap() {
                return Err(format!(
                    "the emulator exited ({status}) before it served:\n{}",
                    read_logs(&logs)
                ));
            }
            if Instant::now() > deadline {
                let _ = emulator.kill();
                let _ = emulator.wait();
                return Err(format!("the emulator did not start within 60 s:\n{}", read_logs(&logs)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let function = Command::new(env!("CARGO_BIN_EXE_embedserve"))
            .current_dir(repo())
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt"))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("EMBEDSERVE_CONFIG", "config/lambda.toml")
            // config/lambda.toml carries the demo tenants; this is a test on loopback.
            .env("EMBEDSERVE__SERVER__ALLOW_DEMO_KEYS", "true")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file(&logs, "function.log"))
            .stderr(log_file(&logs, "function.err"))
            .process_group(0)
            .spawn()
            .unwrap();
        let mut emulator =
            Emulator { emulator, function, base: format!("http://127.0.0.1:{port}/lambda-url/_"), logs };
        // Until INIT is done the emulator holds the request: short tries, checking both processes.
        let probe = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = probe.get(format!("{}/ready", emulator.base)).send().await
                && r.status() == 200
            {
                return Ok(emulator);
            }
            if let Some(exit) = emulator.exited() {
                return Err(exit);
            }
            if Instant::now() > deadline {
                return Err(format!("no answer within 60 s:\n{}", read_logs(&emulator.logs)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Which process has exited, if one has, with both logs.
    fn exited(&mut self) -> Option<String> {
        for (name, child) in [("function", &mut self.function), ("emulator", &mut self.emulator)] {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(format!("the {name} exited ({status}):\n{}", read_logs(&self.logs)));
            }
        }
        None
    }

    async fn post(
        &self,
        key: Option<&str>,
        path: &str,
        body: reqwest::Body,
        content_type: &str,
    ) -> (u16, Value) {
        let r = client_with_key(key)
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await;
        let r = r.unwrap_or_else(|e| panic!("{path} under the emulator: {e}\n{}", read_logs(&self.logs)));
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn post_json(&self, key: Option<&str>, path: &str, body: Value) -> (u16, Value) {
        self.post(key, path, body.to_string().into(), "application/json").await
    }
}

#[tokio::test]
async fn under_the_lambda_emulator_the_function_answers_exactly_like_the_server() {
    let lambda = Emulator::start().await;
    // A server of its own: globex's 5 requests/s are not shared with other tests.
    let server = &TestServer::start(default_settings());
    let reference = reference();

    // The same vectors as the server, for every reference text.
    let texts: Vec<Value> = reference["texts"].as_object().unwrap().values().cloned().collect();
    let body = json!({ "input": texts, "model": "minilm-l6-int8" });
    let (status, from_lambda) = lambda.post_json(Some(ACME_KEY), "/v1/embed", body.clone()).await;
    assert_eq!(status, 200, "{from_lambda}");
    let (_, from_server) = server.post("/v1/embed", body).await;
    for (a, b) in vectors(&from_lambda["embeddings"]).iter().zip(vectors(&from_server["embeddings"])) {
        assert!(cosine(a, &b) >= BATCH_MIN_COSINE);
    }
    assert_eq!(from_lambda["usage"], from_server["usage"]);

    // The OpenAI route, with the encoding the SDKs ask for.
    let (status, openai) = lambda
        .post_json(Some(ACME_KEY), "/v1/embeddings", json!({ "input": "x", "encoding_format": "base64" }))
        .await;
    assert_eq!(status, 200, "{openai}");
    assert!(openai["data"][0]["embedding"].is_string());

    // Quantized output types: the same bytes as the server's.
    let body = json!({ "input": texts, "embedding_types": ["ubinary", "int8"] });
    let (status, from_lambda) = lambda.post_json(Some(ACME_KEY), "/v1/embed", body.clone()).await;
    assert_eq!(status, 200, "{from_lambda}");
    let (_, from_server) = server.post("/v1/embed", body).await;
    assert_eq!(from_lambda["embeddings"]["ubinary"], from_server["embeddings"]["ubinary"]);
    assert_eq!(vectors(&from_lambda["embeddings"]["int8"]).len(), texts.len());

    // Tokenizing, prompts and truncation: the same answers as the server's.
    let long = "word ".repeat(400);
    let body = json!({ "input": [long, "x"], "truncation_direction": "left", "input_type": "search_query" });
    let (status, from_lambda) = lambda.post_json(Some(ACME_KEY), "/v1/tokenize", body.clone()).await;
    assert_eq!(status, 200, "{from_lambda}");
    assert_eq!(from_lambda, server.post("/v1/tokenize", body).await.1);
    assert_eq!(from_lambda["data"][0]["count"], 256);

    // Errors, statuses and auth: the same answers as the server.
    let cases = [
        (None, json!({ "input": "x" })),
        (Some("wrong-key"), json!({ "input": "x" })),
        (Some(ACME_KEY), json!({ "input": "" })),
        (Some(ACME_KEY), json!({ "input": "x", "dimensions": 0 })),
        (Some(ACME_KEY), json!({ "input": "x", "dimensions": 12, "embedding_types": ["binary"] })),
        (Some(ACME_KEY), json!({ "input": "x", "model": "nope" })),
        (Some(ACME_KEY), json!({ "input": "x", "input_type": "nope" })),
        (Some(ACME_KEY), json!({ "input": "word ".repeat(400), "truncate": false })),
        (Some(GLOBEX_KEY), json!({ "input": "x", "model": "paraphrase-l3" })),
        (Some(ACME_KEY), json!({ "input": (0..257).map(|i| i.to_string()).collect::<Vec<_>>() })),
    ];
    for (key, body) in cases {
        let (status, from_lambda) = lambda.post_json(key, "/v1/embed", body.clone()).await;
        let r = server.post_as(key, "/v1/embed", body.clone()).await;
        let (server_status, from_server): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
        assert_eq!(status, server_status, "{key:?} {body}: {from_lambda}");
        assert_eq!(from_lambda, from_server, "{key:?} {body}");
    }
    let (status, body) =
        lambda.post(Some(ACME_KEY), "/v1/embed", "{\"input\": ".into(), "application/json").await;
    assert_eq!(status, 400, "{body}");

    // A binary content type (which the Function URL carries base64-encoded) is not JSON: 415,
    // as from the server. The base64 path itself is covered by function-url-embed-base64.json.
    let raw = json!({ "input": "The cat sat.", "dimensions": 8 }).to_string();
    let (status, binary) =
        lambda.post(Some(ACME_KEY), "/v1/embed", raw.clone().into(), "application/octet-stream").await;
    assert_eq!(status, 415, "{binary}");
    assert_error_shape(&binary);
    let r = server
        .client
        .post(server.url("/v1/embed"))
        .header("content-type", "application/octet-stream")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(binary, r.json::<Value>().await.unwrap());

    // Limits hold on Lambda too: globex's burst of 5.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(lambda.post_json(Some(GLOBEX_KEY), "/v1/embed", json!({ "input": "x" })).await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

/// Both processes' logs, for a failure message.
fn read_logs(dir: &TempDir) -> String {
    ["emulator.log", "emulator.err", "function.log", "function.err"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.0.join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            format!("--- {name}\n{}", tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn under_the_lambda_emulator_a_function_that_reranks_answers_like_the_server() {
    let lambda = Emulator::start_with(&[("EMBEDSERVE_CONFIG", "config/lambda-rerank.toml")]).await;
    let server = TestServer::shared();
    let body = json!({
        "model": "ms-marco-minilm-l12",
        "query": "How many people live in Berlin?",
        "documents": ["Berlin has about 3.7 million inhabitants.", "The cat sat on the mat.", { "text": "Paris is in France." }],
        "return_documents": true,
    });
    for route in ["/v1/rerank", "/v2/rerank"] {
        let (status, from_lambda) = lambda.post_json(Some(ACME_KEY), route, body.clone()).await;
        assert_eq!(status, 200, "{from_lambda}");
        let (_, from_server) = server.post(route, body.clone()).await;
        // The same order and documents; scores within rounding (a run's padding may differ).
        let strip = |v: &Value| -> Vec<(Value, Value, f64)> {
            v["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["index"].clone(), r["document"].clone(), r["relevance_score"].as_f64().unwrap()))
                .collect()
        };
        for (a, b) in strip(&from_lambda).iter().zip(strip(&from_server)) {
            assert_eq!((&a.0, &a.1), (&b.0, &b.1), "{route}");
            assert!((a.2 - b.2).abs() <= 1e-5, "{route}: {} vs {}", a.2, b.2);
        }
        assert_eq!(from_lambda["usage"], from_server["usage"]);
    }
    let tei = json!({ "query": "Berlin", "texts": ["Berlin is a city.", "A cat."], "raw_scores": true });
    let (status, from_lambda) = lambda.post_json(Some(ACME_KEY), "/rerank", tei.clone()).await;
    assert_eq!(status, 200, "{from_lambda}");
    let from_server = server.post("/rerank", tei).await.1;
    for (a, b) in from_lambda.as_array().unwrap().iter().zip(from_server.as_array().unwrap()) {
        assert_eq!(a["index"], b["index"]);
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() <= 1e-4, "{a} vs {b}");
    }
    // Bad input in the error shape, as from the server.
    let bad = json!({ "model": "ms-marco-minilm-l12", "query": "q", "documents": [] });
    let (status, from_lambda) = lambda.post_json(Some(ACME_KEY), "/v1/rerank", bad.clone()).await;
    assert_eq!((status, &from_lambda), (422, &server.post("/v1/rerank", bad).await.1));
}

#[tokio::test]
async fn under_the_lambda_emulator_token_ids_cohere_and_tei_routes_answer_like_the_server() {
    let lambda = Emulator::start().await;
    let server = TestServer::shared();
    // "Hello, world!" in tiktoken's cl100k_base, as LangChain sends it.
    let ids = tiktoken_rs::cl100k_base_singleton().encode_ordinary("Hello, world!");
    let body = json!({ "input": [ids], "model": "minilm-l6-int8", "encoding_format": "float" });
    let (status, from_lambda) = lambda.post_json(Some(ACME_KEY), "/v1/embeddings", body.clone()).await;
    assert_eq!(status, 200, "{from_lambda}");
    let text = server.embed("minilm-l6-int8", json!(["Hello, world!"])).await;
    let v: Vec<f64> =
        from_lambda["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(cosine(&v, &text[0]) >= 0.9999, "token ids under Lambda: cosine {}", cosine(&v, &text[0]));
    let bad = json!({ "input": [[9906, 4_000_000]] });
    let (status, from_lambda) = lambda.post_json(Some(ACME_KEY), "/v1/embeddings", bad.clone()).await;
    assert_eq!((status, &from_lambda), (422, &server.post("/v1/embeddings", bad).await.1));
    for (route, body) in [
        ("/v2/embed", json!({ "texts": ["Hello, world!"], "input_type": "search_query" })),
        ("/embed", json!({ "inputs": ["Hello, world!"] })),
    ] {
        let (status, from_lambda) = lambda.post_json(Some(ACME_KEY), route, body.clone()).await;
        assert_eq!(status, 200, "{route}: {from_lambda}");
        let first = if route == "/embed" { &from_lambda[0] } else { &from_lambda["embeddings"]["float"][0] };
        let v: Vec<f64> = first.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert!(cosine(&v, &text[0]) >= 0.9999, "{route} under Lambda");
    }
}

/// Milliseconds since 1970, as EMF timestamps are.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Checks `record` against the Embedded Metric Format specification (CloudWatch's metadata,
/// every dimension and metric a member of the root, no empty dimension value) and returns its
/// directive's dimension sets.
fn assert_emf(record: &Value, since_ms: u64) -> Vec<Vec<String>> {
    let aws = &record["_aws"];
    let at = aws["Timestamp"].as_u64().unwrap_or_else(|| panic!("no Timestamp: {record}"));
    assert!((since_ms..=unix_ms()).contains(&at), "Timestamp {at} is not of this test: {record}");
    let directives = aws["CloudWatchMetrics"].as_array().unwrap();
    assert_eq!(directives.len(), 1, "{record}");
    let directive = &directives[0];
    assert_eq!(directive["Namespace"], "embedserve");
    let sets: Vec<Vec<String>> = serde_json::from_value(directive["Dimensions"].clone()).unwrap();
    for name in sets.iter().flatten() {
        let value =
            record[name].as_str().unwrap_or_else(|| panic!("dimension {name} is not a string: {record}"));
        assert!(!value.is_empty(), "dimension {name} is empty, which CloudWatch refuses: {record}");
    }
    let units = ["Milliseconds", "Count"];
    for metric in directive["Metrics"].as_array().unwrap() {
        let name = metric["Name"].as_str().unwrap();
        assert!(record[name].is_number(), "metric {name} has no number: {record}");
        assert!(units.contains(&metric["Unit"].as_str().unwrap()), "{metric}");
    }
    sets
}

#[tokio::test]
async fn under_the_lambda_emulator_each_request_writes_one_embedded_metric_format_line() {
    let since = unix_ms();
    let lambda = Emulator::start().await;
    let started = Instant::now();
    let (status, served) = lambda
        .post_json(Some(ACME_KEY), "/v1/embed", json!({ "input": ["The cat sat.", "A dog ran."] }))
        .await;
    let round_trip_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(status, 200, "{served}");
    assert_eq!(lambda.post_json(None, "/v1/embed", json!({ "input": "x" })).await.0, 401);
    let (status, _) =
        lambda.post_json(Some(ACME_KEY), "/v1/embed", json!({ "input": "x", "model": "nope" })).await;
    assert_eq!(status, 404);

    // The function's stdout carries the records (its log goes to stderr), one JSON object a line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let text = std::fs::read_to_string(lambda.logs.0.join("function.log")).unwrap();
        let records: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["route"] == "/v1/embed")
            .collect();
        if records.len() >= 3 || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(records.len(), 3, "{records:?}");
    let by_tenant =
        vec![vec!["tenant".to_owned(), "model".to_owned()], vec!["route".to_owned(), "status".to_owned()]];
    let by_route = vec![vec!["route".to_owned(), "status".to_owned()]];

    let ok = &records[0];
    assert_eq!(assert_emf(ok, since), by_tenant);
    assert_eq!((ok["tenant"].as_str(), ok["model"].as_str()), (Some("acme"), Some("minilm-l6-int8")));
    assert_eq!(ok["status"], "200");
    assert_eq!(ok["Tokens"], served["usage"]["total_tokens"]);
    assert_eq!(ok["Requests"], 1);
    let latency = ok["Latency"].as_f64().unwrap();
    assert!(
        latency > 0.0 && latency <= round_trip_ms,
        "Latency {latency} ms, round trip {round_trip_ms:.1} ms"
    );
    // No tenant (a missing key) or no model (an unknown one): counted by route and status only.
    for (record, status) in [(&records[1], "401"), (&records[2], "404")] {
        assert_eq!(assert_emf(record, since), by_route, "{record}");
        assert_eq!(record["status"], status);
        assert_eq!((record["Tokens"].as_u64(), record["Requests"].as_u64()), (Some(0), Some(1)));
    }
}
