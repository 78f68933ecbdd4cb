//! `make bench` (rerank and sparse): figures, not assertions, measured in one run.
//!
//! - rerank, one query with 20 passages of about 60 tokens (`support/rerank.rs`) over HTTP:
//!   p50 and p99 at one client, pairs/s and server CPU per pair at 8 clients;
//! - the same model at batch 32 in-process (embedserve's engine, no HTTP and no queue) and in
//!   Python onnxruntime with `tokenizers` (scripts/bench_rerank_ceiling.py): the ceilings;
//! - sparse (SPLADE) embeddings/s and CPU per embedding at 8 one-sentence clients, beside the
//!   dense models on the same route.
//!
//! Needs the reference venv (`make bench` installs scripts/requirements-reference.txt).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embedserve::Settings;
use support::ceiling::{SENTENCES, pairs_per_second};
use support::http::{KEY, MODEL, THROUGHPUT_SECONDS, cold_start, cpu_seconds, percentile};
use support::rerank::{PASSAGES, Request, workload};

#[allow(dead_code)] // each bench uses its own part of the shared support
mod support {
    pub mod ceiling;
    pub mod cpu;
    pub mod http;
    pub mod rerank;
}

const RERANKER: &str = "ms-marco-minilm-l12";
const SEQUENTIAL: usize = 100;
const CLIENTS: usize = 8;
const CEILING_BATCH: usize = 32;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = repo.join("config/default.toml");
    let requests = std::sync::Arc::new(workload(repo, 16));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, mut server, port, _) = rt.block_on(cold_start(&config, MODEL));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    println!("embedserve rerank and sparse benchmark");
    println!("CPU: {}", support::cpu::describe());
    let tokens = rt.block_on(async {
        let r = rerank(&client, &base, &requests[0]).await;
        r["usage"]["total_tokens"].as_f64().unwrap()
    });
    println!(
        "rerank ({RERANKER}): one query with {PASSAGES} passages per request, {:.0} tokens per pair on average",
        tokens / PASSAGES as f64
    );

    let mut ms: Vec<f64> = rt.block_on(async {
        let mut ms = Vec::new();
        for i in 0..SEQUENTIAL + 5 {
            let t = Instant::now();
            rerank(&client, &base, &requests[i % requests.len()]).await;
            if i >= 5 {
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        ms
    });
    ms.sort_by(f64::total_cmp);
    println!(
        "  1 client, {SEQUENTIAL} sequential requests: p50 {:.1} ms, p99 {:.1} ms per request ({:.0} pairs/s)",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        PASSAGES as f64 * 1e3 / percentile(&ms, 0.5)
    );

    let (cpu, started) = (cpu_seconds(server.id()), Instant::now());
    let done = rt.block_on(concurrent(CLIENTS, {
        let (client, base, requests) = (client.clone(), base.clone(), requests.clone());
        move |i| {
            let (client, base, requests) = (client.clone(), base.clone(), requests.clone());
            async move {
                rerank(&client, &base, &requests[i % requests.len()]).await;
                PASSAGES
            }
        }
    }));
    let elapsed = started.elapsed().as_secs_f64();
    let server_pairs = done as f64 / elapsed;
    let server_cpu_ms = (cpu_seconds(server.id()) - cpu) / done as f64 * 1e3;
    println!(
        "  {CLIENTS} clients, {THROUGHPUT_SECONDS} s: {server_pairs:.0} pairs/s, server CPU {server_cpu_ms:.2} ms per pair"
    );

    let settings = Settings::load(&config).unwrap();
    let each = Duration::from_secs(THROUGHPUT_SECONDS);
    let pairs: Vec<(String, Vec<String>)> =
        requests.iter().map(|r| (r.query.clone(), r.passages.clone())).collect();
    let (cpu, started) = (cpu_seconds(std::process::id()), Instant::now());
    let engine = pairs_per_second(&settings, RERANKER, &pairs, CEILING_BATCH, each).unwrap();
    let engine_cpu_ms =
        (cpu_seconds(std::process::id()) - cpu) / (engine * started.elapsed().as_secs_f64()) * 1e3;
    println!(
        "  embedserve's engine in-process, batch {CEILING_BATCH}: {engine:.0} pairs/s, CPU {engine_cpu_ms:.2} ms per pair"
    );
    let python = python_ceiling(repo, &settings, &requests);
    println!(
        "  Python onnxruntime + tokenizers, batch {CEILING_BATCH}: {:.0} pairs/s, CPU {:.2} ms per pair (the ceiling)",
        python.0, python.1
    );
    println!(
        "  server at {CLIENTS} clients / Python ceiling: {:.0}% of the pairs/s, {:.0}% of the CPU per pair",
        100.0 * server_pairs / python.0,
        100.0 * server_cpu_ms / python.1
    );

    println!(
        "embeddings on /v1/embed, one sentence per request, {CLIENTS} clients, {THROUGHPUT_SECONDS} s each:"
    );
    for (model, kind) in
        [("splade-tiny", "sparse"), ("minilm-l6-int8", "dense"), ("bge-small-en-v1-5", "dense")]
    {
        rt.block_on(embed(&client, &base, model, SENTENCES[0]));
        let (cpu, started) = (cpu_seconds(server.id()), Instant::now());
        let done = rt.block_on(concurrent(CLIENTS, {
            let (client, base) = (client.clone(), base.clone());
            move |i| {
                let (client, base) = (client.clone(), base.clone());
                async move {
                    embed(&client, &base, model, SENTENCES[i % SENTENCES.len()]).await;
                    1
                }
            }
        }));
        let rate = done as f64 / started.elapsed().as_secs_f64();
        let cpu_ms = (cpu_seconds(server.id()) - cpu) / done as f64 * 1e3;
        println!("  {model} ({kind}): {rate:.0} embeddings/s, server CPU {cpu_ms:.2} ms per embedding");
    }
    server.kill().ok();
    server.wait().ok();
}

async fn rerank(client: &reqwest::Client, base: &str, request: &Request) -> serde_json::Value {
    let r = client
        .post(format!("{base}/v1/rerank"))
        .bearer_auth(KEY)
        .json(&request.body(RERANKER))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["results"].as_array().unwrap().len(), PASSAGES);
    body
}

async fn embed(client: &reqwest::Client, base: &str, model: &str, text: &str) {
    let body = serde_json::json!({ "model": model, "input": text });
    let r = client.post(format!("{base}/v1/embed")).bearer_auth(KEY).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{model}");
    r.bytes().await.unwrap();
}

/// `clients` loops calling `call(i)` until THROUGHPUT_SECONDS pass: the units they report.
async fn concurrent<F, Fut>(clients: usize, call: F) -> usize
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(THROUGHPUT_SECONDS);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let call = call.clone();
            tokio::spawn(async move {
                let (mut units, mut i) = (0, c);
                while Instant::now() < deadline {
                    units += call(i).await;
                    i += clients;
                }
                units
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

/// (pairs/s, CPU ms per pair) of scripts/bench_rerank_ceiling.py on the same model and pairs.
fn python_ceiling(repo: &Path, settings: &Settings, requests: &[Request]) -> (f64, f64) {
    let spec = &settings.models[RERANKER];
    let python =
        std::env::var_os("EMBEDSERVE_TEST_PYTHON").unwrap_or_else(|| repo.join(".venv/bin/python").into());
    let mut child = Command::new(python)
        .arg(repo.join("scripts/bench_rerank_ceiling.py"))
        .arg(&spec.onnx)
        .arg(&spec.tokenizer)
        .arg(spec.max_tokens.to_string())
        .arg(THROUGHPUT_SECONDS.to_string())
        .arg(CEILING_BATCH.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the venv's python (make venv)");
    let work: Vec<_> =
        requests.iter().map(|r| serde_json::json!({ "query": r.query, "passages": r.passages })).collect();
    serde_json::to_writer(child.stdin.take().unwrap(), &work).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "bench_rerank_ceiling.py failed (pip install -r scripts/requirements-reference.txt)"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["pairs_per_second"].as_f64().unwrap(), v["cpu_ms_per_pair"].as_f64().unwrap())
}
