//! Models from the Hugging Face Hub, with the real download code (the `hf-hub` crate, and
//! Python's `huggingface_hub` for the shared cache) against a hub-shaped server on loopback:
//! `/{org}/{name}/resolve/{revision}/{file}` serving the default MiniLM-L6 export folder that
//! `make assets` writes, at one pinned commit, with ETag, X-Repo-Commit and ranges as the hub
//! answers. `HF_ENDPOINT` points there; nothing here can reach the real hub.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::*;
use crate::spawned::{SpawnedServer, TempDir, default_config_text, give_acme};

const REPO: &str = "embedserve-test/minilm-l6-int8";
const COMMIT: &str = "4b9c2f0e6d1a8b7c3e5f9a0d2c4b6e8f1a3c5e7d";
const TOKEN: &str = "hf_test_token";
const ONNX_SHA256: &str = "9997d159981bc014e19330d363bef2106e36b977d4d1a1e63c3e8e352d771fa6";

/// A hub on 127.0.0.1:0 serving `REPO` at `COMMIT` to bearers of `TOKEN`, recording each
/// requested file.
struct Hub {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    /// Each request for an ONNX file, with its `Range` header.
    onnx_ranges: Arc<Mutex<Vec<String>>>,
}

struct HubState {
    folder: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    onnx_ranges: Arc<Mutex<Vec<String>>>,
    /// How long each answer for an ONNX file takes: a slow download.
    onnx_delay: std::time::Duration,
}

impl Hub {
    fn start() -> Hub {
        Self::slow(std::time::Duration::ZERO)
    }

    /// A hub whose every answer for an ONNX file waits `onnx_delay` first.
    fn slow(onnx_delay: std::time::Duration) -> Hub {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let onnx_ranges = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(HubState {
            folder: repo().join("assets/models/minilm-l6-int8-st"),
            requests: Arc::clone(&requests),
            onnx_ranges: Arc::clone(&onnx_ranges),
            onnx_delay,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new()
                    .route("/{org}/{name}/resolve/{revision}/{*file}", axum::routing::get(resolve))
                    .with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        Hub { addr: rx.recv().unwrap(), requests, onnx_ranges }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

async fn resolve(
    State(state): State<Arc<HubState>>,
    UrlPath((org, name, revision, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    state.requests.lock().unwrap().push(file.clone());
    if file.ends_with(".onnx") {
        let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).unwrap_or("whole");
        state.onnx_ranges.lock().unwrap().push(range.to_owned());
        tokio::time::sleep(state.onnx_delay).await;
    }
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return (StatusCode::UNAUTHORIZED, [("x-error-code", "GatedRepo")], "a token is required")
            .into_response();
    }
    let path = state.folder.join(&file);
    if format!("{org}/{name}") != REPO || revision != COMMIT || file.contains("..") || !path.is_file() {
        return (StatusCode::NOT_FOUND, [("x-error-code", "EntryNotFound")], "not found").into_response();
    }
    let bytes = std::fs::read(&path).unwrap();
    let etag = format!("\"{}\"", hex::encode(Sha256::digest(&bytes)));
    let size = bytes.len();
    let common =
        [("etag", etag.clone()), ("x-repo-commit", COMMIT.to_owned()), ("accept-ranges", "bytes".to_owned())];
    let range =
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|r| r.strip_prefix("bytes="));
    if let Some((start, end)) = range.and_then(|r| r.split_once('-')) {
        let start: usize = start.parse().unwrap_or(0);
        let end: usize = end.parse().map_or(size - 1, |e: usize| e.min(size - 1));
        let mut response = (StatusCode::PARTIAL_CONTENT, bytes[start..=end].to_vec()).into_response();
        for (k, v) in common {
            response.headers_mut().insert(k, v.parse().unwrap());
        }
        response
            .headers_mut()
            .insert("content-range", format!("bytes {start}-{end}/{size}").parse().unwrap());
        return response;
    }
    let mut response = bytes.into_response();
    for (k, v) in common {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
}

/// The default config with `hub-minilm` (from `REPO` at `COMMIT`) in acme's catalogue.
fn config(extra: &str) -> String {
    let text = default_config_text();
    let model = format!(
        "[models.hub-minilm]\nhf = \"{REPO}\"\nrevision = \"{COMMIT}\"\ngraph_optimization = \"none\"\n{extra}\n"
    );
    let at = text.find("[tenants.").unwrap();
    let text = format!("{}{model}\n{}", &text[..at], &text[at..]);
    give_acme(&text, "hub-minilm")
}

fn snapshot(hf_home: &Path) -> PathBuf {
    hf_home.join("hub/models--embedserve-test--minilm-l6-int8/snapshots").join(COMMIT)
}

async fn embed(server: &SpawnedServer, model: &str) -> (u16, serde_json::Value) {
    server
        .post_as(ACME_KEY, "/v1/embed", json!({ "model": model, "input": ["The cat sat.", "Ünïcödé 東京"] }))
        .await
}

#[tokio::test]
async fn a_hub_model_downloads_once_into_the_hf_cache_verified_and_a_second_process_reuses_it() {
    let hub = Hub::start();
    let hf_home = TempDir::new("hf-home");
    let home = hf_home.0.to_str().unwrap().to_owned();
    let endpoint = hub.url();
    let env = [("HF_HOME", home.as_str()), ("HF_ENDPOINT", endpoint.as_str()), ("HF_TOKEN", TOKEN)];
    let sha = format!("sha256 = {{ \"onnx/model.onnx\" = \"{ONNX_SHA256}\" }}");
    let server = SpawnedServer::start_with_env("hub-first", &config(&sha), &env).await;
    // Not fetched until first used: its dimension is not known yet.
    let models = server.get_json_as(ACME_KEY, "/v1/models").await;
    let listed = models["data"].as_array().unwrap().iter().find(|m| m["id"] == "hub-minilm").unwrap().clone();
    assert_eq!(listed["dimensions"], json!(null), "{models}");
    assert!(hub.take_requests().is_empty(), "nothing fetched before the model is used");

    let (status, from_hub) = embed(&server, "hub-minilm").await;
    assert_eq!(status, 200, "{from_hub}");
    let (_, local) = embed(&server, "minilm-l6-int8").await;
    assert_eq!(from_hub["embeddings"], local["embeddings"], "the same files give the same vectors");
    let fetched = hub.take_requests();
    for file in ["onnx/model.onnx", "tokenizer.json", "modules.json", "1_Pooling/config.json"] {
        assert!(fetched.iter().any(|f| f == file), "{file} not fetched: {fetched:?}");
    }
    // The Hugging Face cache layout: blobs named by etag, the snapshot pointing at them.
    let onnx = snapshot(&hf_home.0).join("onnx/model.onnx");
    assert!(std::fs::symlink_metadata(&onnx).unwrap().file_type().is_symlink());
    let blob = hf_home.0.join("hub/models--embedserve-test--minilm-l6-int8/blobs").join(ONNX_SHA256);
    assert_eq!(std::fs::canonicalize(&onnx).unwrap(), std::fs::canonicalize(&blob).unwrap());
    let models = server.get_json_as(ACME_KEY, "/v1/models").await;
    let listed = models["data"].as_array().unwrap().iter().find(|m| m["id"] == "hub-minilm").unwrap().clone();
    assert_eq!((listed["dimensions"].clone(), listed["max_tokens"].clone()), (json!(384), json!(256)));
    drop(server);

    // A second process, preloading it, finds every file in the cache: no request reaches the hub.
    let preloaded = config(&sha)
        .replace("preload = [\"minilm-l6-int8\"]", "preload = [\"minilm-l6-int8\", \"hub-minilm\"]");
    let second = SpawnedServer::start_with_env("hub-second", &preloaded, &env).await;
    let (status, again) = embed(&second, "hub-minilm").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["embeddings"], from_hub["embeddings"]);
    assert_eq!(hub.take_requests(), Vec::<String>::new(), "the cache is reused");
    drop(second);

    // A tampered cached file fails the sha256 check: that model only, naming the file.
    let target = std::fs::canonicalize(&onnx).unwrap();
    let mut bytes = std::fs::read(&target).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&target, bytes).unwrap();
    let third = SpawnedServer::start_with_env("hub-tampered", &config(&sha), &env).await;
    let (status, body) = embed(&third, "hub-minilm").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "model_unavailable");
    let message = assert_error_shape(&body);
    assert!(message.contains("onnx/model.onnx") && message.contains("sha256"), "{message}");
    assert!(!message.contains(&home), "no local path in a client message: {message}");
    assert_eq!(embed(&third, "minilm-l6-int8").await.0, 200, "other models serve on");
}

#[tokio::test]
async fn a_slow_download_outlives_a_timed_out_request_is_joined_not_repeated_and_blocks_no_other_load() {
    // Each answer for the ONNX file takes 2.5 s; requests are abandoned after 1 s + 1 s.
    let hub = Hub::slow(std::time::Duration::from_millis(2_500));
    let hf_home = TempDir::new("hf-slow");
    let home = hf_home.0.to_str().unwrap().to_owned();
    let endpoint = hub.url();
    let env = [("HF_HOME", home.as_str()), ("HF_ENDPOINT", endpoint.as_str()), ("HF_TOKEN", TOKEN)];
    let text = config("").replace("request_timeout_ms = 30_000", "request_timeout_ms = 1_000");
    assert!(text.contains("request_timeout_ms = 1_000"), "the config sets request_timeout_ms");
    let server = SpawnedServer::start_with_env("hub-slow", &text, &env).await;

    let started = std::time::Instant::now();
    let first = embed(&server, "hub-minilm");
    // Another model's first load while the download runs: it must not wait behind it.
    let other = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let t = std::time::Instant::now();
        let answer = embed(&server, "paraphrase-l3").await;
        (answer, t.elapsed())
    };
    let ((status, body), ((other_status, other_body), other_took)) = tokio::join!(first, other);
    assert_eq!(status, 504, "the request is abandoned at its deadline: {body}");
    assert_eq!(other_status, 200, "{other_body}");
    assert!(
        other_took < std::time::Duration::from_secs(2),
        "another model loaded within its deadline while the download ran ({other_took:?})"
    );

    // The load goes on without its requester; later requests join it, then are served.
    let (status, body) = loop {
        let (status, body) = embed(&server, "hub-minilm").await;
        if status != 504 || started.elapsed() > std::time::Duration::from_secs(60) {
            break (status, body);
        }
    };
    assert_eq!(status, 200, "{body}");
    let (_, local) = embed(&server, "minilm-l6-int8").await;
    assert_eq!(body["embeddings"], local["embeddings"]);
    let ranges = hub.onnx_ranges.lock().unwrap().clone();
    let mut distinct = ranges.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ranges.len(), "no part of the file was fetched twice: {ranges:?}");
    let loads = server.metrics().await;
    let ok = loads
        .lines()
        .filter(|l| l.starts_with("embedserve_model_loads_total{model=\"hub-minilm\""))
        .collect::<Vec<_>>();
    assert_eq!(
        ok,
        vec!["embedserve_model_loads_total{model=\"hub-minilm\",outcome=\"ok\"} 1"],
        "one load, which succeeded"
    );
}

#[tokio::test]
async fn offline_with_an_empty_cache_fails_that_model_only_and_a_wrong_token_names_the_file() {
    let hub = Hub::start();
    let hf_home = TempDir::new("hf-offline");
    let home = hf_home.0.to_str().unwrap().to_owned();
    let endpoint = hub.url();
    let offline = [("HF_HOME", home.as_str()), ("HF_ENDPOINT", endpoint.as_str()), ("HF_HUB_OFFLINE", "1")];
    let server = SpawnedServer::start_with_env("hub-offline", &config(""), &offline).await;
    let (status, body) = embed(&server, "hub-minilm").await;
    assert_eq!(status, 503, "{body}");
    let message = assert_error_shape(&body);
    assert!(message.contains("HF_HUB_OFFLINE") && message.contains("tokenizer.json"), "{message}");
    assert_eq!(embed(&server, "minilm-l6-int8").await.0, 200, "other models serve on");
    assert!(hub.take_requests().is_empty(), "offline never touches the network");
    drop(server);

    let wrong = [("HF_HOME", home.as_str()), ("HF_ENDPOINT", endpoint.as_str()), ("HF_TOKEN", "hf_wrong")];
    let server = SpawnedServer::start_with_env("hub-wrong-token", &config(""), &wrong).await;
    let (status, body) = embed(&server, "hub-minilm").await;
    assert_eq!(status, 503, "{body}");
    let message = assert_error_shape(&body);
    assert!(message.contains("401") && message.contains(REPO), "{message}");
}

#[tokio::test]
async fn files_python_huggingface_hub_fetched_are_served_offline() {
    let hub = Hub::start();
    let hf_home = TempDir::new("hf-python");
    let home = hf_home.0.to_str().unwrap().to_owned();
    let files = [
        "onnx/model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "config.json",
        "special_tokens_map.json",
    ];
    // File by file: snapshot_download would list the repo first, which this hub does not answer.
    let script_files = r#"
import sys
from huggingface_hub import hf_hub_download
for f in sys.argv[3:]:
    hf_hub_download(sys.argv[1], f, revision=sys.argv[2])
"#;
    let output = std::process::Command::new(python())
        .args(["-c", script_files, REPO, COMMIT])
        .args(files)
        .env("HF_HOME", &home)
        .env("HF_ENDPOINT", hub.url())
        .env("HF_TOKEN", TOKEN)
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(snapshot(&hf_home.0).join("onnx/model.onnx").exists());
    hub.take_requests();
    let offline = [("HF_HOME", home.as_str()), ("HF_HUB_OFFLINE", "1")];
    let server = SpawnedServer::start_with_env("hub-python-cache", &config(""), &offline).await;
    let (status, body) = embed(&server, "hub-minilm").await;
    assert_eq!(status, 200, "{body}");
    let (_, local) = embed(&server, "minilm-l6-int8").await;
    assert_eq!(body["embeddings"], local["embeddings"]);
}

/// Copies the export folder (and everything under it) into `to`.
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Bytes of the file beside the model that its `sha256` lists: hashing it takes about a second.
const LARGE_FILE_BYTES: u64 = 2 << 30;

#[tokio::test]
async fn hashing_a_large_model_file_does_not_stall_requests_on_a_one_thread_runtime() {
    // The model's files already in the Hugging Face cache, with a 2 GiB file beside the graph
    // (sparse on disk) that `sha256` lists: the load hashes it, offline.
    let hf_home = TempDir::new("hf-large");
    let snapshot = snapshot(&hf_home.0);
    copy_folder(&repo().join("assets/models/minilm-l6-int8-st"), &snapshot);
    let large = snapshot.join("onnx/model.onnx_data");
    std::fs::File::create(&large).unwrap().set_len(LARGE_FILE_BYTES).unwrap();
    let hashed = std::time::Instant::now();
    let digest = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let mut file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(large).unwrap());
        std::io::copy(&mut file, &mut hasher).unwrap();
        hex::encode(hasher.finalize())
    })
    .await
    .unwrap();
    let hash_time = hashed.elapsed();
    let sha = format!("sha256 = {{ \"onnx/model.onnx_data\" = \"{digest}\" }}");
    let home = hf_home.0.to_str().unwrap().to_owned();
    // One runtime thread: anything blocking on it would stall every request.
    let env = [("HF_HOME", home.as_str()), ("HF_HUB_OFFLINE", "1"), ("TOKIO_WORKER_THREADS", "1")];
    let server = SpawnedServer::start_with_env("hub-large", &config(&sha), &env).await;

    let done = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let t = std::time::Instant::now();
        let answer = embed(&server, "hub-minilm").await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (answer, t.elapsed())
    };
    let probe = async {
        let client = client_with_key(None);
        let mut worst = std::time::Duration::ZERO;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let t = std::time::Instant::now();
            let status = client.get(server.url("/health")).send().await.unwrap().status();
            assert_eq!(status, 200);
            worst = worst.max(t.elapsed());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        worst
    };
    let (((status, body), load_time), worst) = tokio::join!(load, probe);
    assert_eq!(status, 200, "{body}");
    println!(
        "load with a 2 GiB sha256 check: {load_time:?} (hashing alone here: {hash_time:?}); /health worst {worst:?}"
    );
    // 2 GiB cannot be hashed in under half a second on this kind of machine (~1.5 GB/s at best).
    assert!(load_time >= std::time::Duration::from_millis(500), "the load hashed the file ({load_time:?})");
    assert!(
        worst < load_time / 4,
        "a request waited {worst:?} during a {load_time:?} load: blocking work on the runtime"
    );
}
