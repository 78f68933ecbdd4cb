//! `make bench`: figures, not assertions, measured in one run on this machine.
//!
//! - cold start: process spawn to the first 200 on `/v1/embed`, median of 5;
//! - one short sentence over HTTP: p50 and p99;
//! - embeddings/s at 1, 8 and 32 concurrent one-sentence clients, beside an in-process loop
//!   over the same ONNX Runtime session at batch 1 and 32 (the ceiling), and their ratio;
//! - the server's peak resident memory;
//! - a multi-tenant run: 100 tenants, requests spread over 3 models with a Zipf skew, a cache
//!   budget that fits 2: cache hit rate, loads, evictions, p50/p99.
//!
//! The load generator shares the machine's cores with the server, as any one-machine
//! benchmark does; the ratio to the in-process ceiling is the figure to compare.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use embedserve::Settings;
use embedserve::models::session::{Engine, SessionOptions, init_runtime};
use embedserve::models::tokenize::TextEncoder;
use serde_json::json;

const MODEL: &str = "minilm-l6-int8";
const SENTENCES: [&str; 8] = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings turn sentences into vectors of numbers.",
    "A short sentence, like most requests in production.",
    "The train to the airport leaves every fifteen minutes.",
    "She opened the window and let the cool air in.",
    "Search results improve when queries and documents share a space.",
    "Our service answers many tenants from one process.",
    "Rust makes the fast path safe to change.",
];
const THROUGHPUT_SECONDS: u64 = 6;
/// The demo tenant with limits that never bind (config/default.toml).
const KEY: &str = "acme-dev-key";

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = repo.join("config/default.toml");
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("embedserve benchmark, model {MODEL}, {} CPUs", std::thread::available_parallelism().unwrap());
    println!();

    let mut colds: Vec<f64> = (0..5)
        .map(|_| {
            let (ms, mut child, _) = rt.block_on(cold_start(&config));
            child.kill().ok();
            child.wait().ok();
            ms
        })
        .collect();
    colds.sort_by(f64::total_cmp);
    println!(
        "cold start (spawn -> first 200 on /v1/embed), 5 runs: median {:.0} ms (min {:.0}, max {:.0})",
        colds[2], colds[0], colds[4]
    );

    let (_, mut server, port) = rt.block_on(cold_start(&config));
    let base = format!("http://127.0.0.1:{port}");
    let lat = rt.block_on(latency(&base, 500));
    println!("one short sentence over HTTP, 500 sequential: p50 {:.2} ms, p99 {:.2} ms", lat.0, lat.1);

    println!();
    println!("throughput, one sentence per request, {THROUGHPUT_SECONDS} s each:");
    let mut server_rates = Vec::new();
    for clients in [1, 8, 32] {
        let rate = rt.block_on(throughput(&base, clients));
        println!("  server, {clients:>2} concurrent clients: {rate:>7.1} embeddings/s");
        server_rates.push((clients, rate));
    }
    let rss = peak_rss_mib(server.id());
    server.kill().ok();
    server.wait().ok();

    let settings = Settings::load(&config).unwrap();
    let (b1, b32) = in_process(&settings);
    println!("  in-process session, batch  1: {b1:>7.1} embeddings/s");
    println!("  in-process session, batch 32: {b32:>7.1} embeddings/s (the ceiling)");
    for (clients, rate) in server_rates {
        println!("  ratio server/ceiling at {clients:>2} clients: {:.0}%", 100.0 * rate / b32);
    }
    println!();
    println!("server peak resident memory (VmHWM): {rss:.0} MiB");

    println!();
    rt.block_on(multi_tenant(repo));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Spawns the release binary and polls `/v1/embed` until it answers 200.
async fn cold_start(config: &Path) -> (f64, Child, u16) {
    spawn_until_served(config, "minilm-l6-int8", KEY).await
}

#[allow(clippy::zombie_processes)] // the caller kills and waits for the child it gets back
async fn spawn_until_served(config: &Path, model: &str, key: &str) -> (f64, Child, u16) {
    let port = free_port();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/embed");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_embedserve"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("embedserve starts");
    loop {
        let body = json!({ "input": SENTENCES[0], "model": model });
        if let Ok(r) = client.post(&url).bearer_auth(key).json(&body).send().await
            && r.status() == 200
        {
            return (started.elapsed().as_secs_f64() * 1e3, child, port);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "server did not answer within 60 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn latency(base: &str, n: usize) -> (f64, f64) {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/embed");
    let mut ms = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        let r = client
            .post(&url)
            .bearer_auth(KEY)
            .json(&json!({ "input": SENTENCES[i % SENTENCES.len()] }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        if i >= 20 {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    (percentile(&ms, 0.50), percentile(&ms, 0.99))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

async fn throughput(base: &str, clients: usize) -> f64 {
    let url = format!("{base}/v1/embed");
    let deadline = Instant::now() + Duration::from_secs(THROUGHPUT_SECONDS);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let text = SENTENCES[(c + done as usize) % SENTENCES.len()];
                    let r = client
                        .post(&url)
                        .bearer_auth(KEY)
                        .json(&json!({ "input": text }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// The same session the server uses, driven directly: no HTTP, no queue.
fn in_process(settings: &Settings) -> (f64, f64) {
    let spec = &settings.models[MODEL];
    let env = init_runtime(settings.onnxruntime_path().as_deref()).unwrap();
    let options =
        SessionOptions { intra_threads: settings.intra_threads(), cpu_arena: settings.runtime.cpu_arena };
    let mut engine = Engine::load(&env, spec, &options).unwrap();
    let encoder = TextEncoder::from_file(&spec.tokenizer, spec.max_tokens).unwrap();
    let texts: Vec<String> = SENTENCES.iter().map(|s| s.to_string()).collect();
    let mut rate = |batch: usize| {
        let inputs: Vec<String> = texts.iter().cycle().take(batch).cloned().collect();
        let deadline = Instant::now() + Duration::from_secs(THROUGHPUT_SECONDS);
        let started = Instant::now();
        let mut done = 0;
        while Instant::now() < deadline {
            let encoded = encoder.encode(&inputs).unwrap();
            let refs: Vec<_> = encoded.iter().collect();
            engine.run(&refs).unwrap();
            done += batch;
        }
        done as f64 / started.elapsed().as_secs_f64()
    };
    (rate(1), rate(32))
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

const TENANTS: usize = 100;
const MT_CLIENTS: usize = 16;
const MT_SECONDS: u64 = 15;
/// Zipf over three models (s = 1): weights 1, 1/2, 1/3.
const MODEL_WEIGHTS: [(&str, f64); 3] =
    [("minilm-l6-int8", 1.0), ("paraphrase-l3", 0.5), ("minilm-l6-int8-cls", 1.0 / 3.0)];

/// 100 tenants sharing three catalogue models under a budget that fits two of them.
async fn multi_tenant(repo: &Path) {
    let dir = repo.join("target/bench-tmp");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("multi-tenant.toml");
    // Budget: the two int8 sessions (about 170 MiB each) fit, all three (with the paraphrase
    // model's ~70 MiB) do not.
    let budget: u64 = 380 << 20;
    std::fs::write(&config, multi_tenant_config(repo, budget)).unwrap();

    let (_, mut server, port) = spawn_until_served(&config, "minilm-l6-int8", "tenant-0-key").await;
    let url = format!("http://127.0.0.1:{port}/v1/embed");
    let deadline = Instant::now() + Duration::from_secs(MT_SECONDS);
    let tasks: Vec<_> = (0..MT_CLIENTS)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
                let (mut ms, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let tenant = (next(&mut rng) % TENANTS as u64) as usize;
                    let model = zipf_model(&mut rng);
                    let body = json!({ "input": SENTENCES[tenant % SENTENCES.len()], "model": model });
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .bearer_auth(format!("tenant-{tenant}-key"))
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    let ok = r.status() == 200;
                    r.bytes().await.unwrap();
                    if ok {
                        ms.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        errors += 1;
                    }
                }
                (ms, errors)
            })
        })
        .collect();
    let (mut ms, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (m, e) = t.await.unwrap();
        ms.extend(m);
        errors += e;
    }
    ms.sort_by(f64::total_cmp);
    let metrics =
        reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    let sum = |name: &str, filter: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (hits, misses) = (
        sum("embedserve_cache_lookups_total", "result=\"hit\""),
        sum("embedserve_cache_lookups_total", "result=\"miss\""),
    );
    server.kill().ok();
    server.wait().ok();

    println!(
        "multi-tenant: {TENANTS} tenants, 3 models (Zipf weights 1, 1/2, 1/3), budget {} MiB (fits 2), {MT_CLIENTS} clients, {MT_SECONDS} s:",
        budget >> 20
    );
    println!(
        "  requests: {} served, {errors} errors, {:.1}/s",
        ms.len(),
        ms.len() as f64 / MT_SECONDS as f64
    );
    println!("  latency: p50 {:.1} ms, p99 {:.1} ms", percentile(&ms, 0.50), percentile(&ms, 0.99));
    println!(
        "  cache: hit rate {:.2}% ({hits} hits, {misses} misses), {} loads, {} evictions",
        100.0 * hits / (hits + misses),
        sum("embedserve_model_loads_total", "outcome=\"ok\""),
        sum("embedserve_model_evictions_total", "")
    );
}

fn next(state: &mut u64) -> u64 {
    // xorshift64: a fixed, seedable request mix without another dependency
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn zipf_model(rng: &mut u64) -> &'static str {
    let total: f64 = MODEL_WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut pick = (next(rng) % 1_000_000) as f64 / 1_000_000.0 * total;
    for (model, weight) in MODEL_WEIGHTS {
        if pick < weight {
            return model;
        }
        pick -= weight;
    }
    MODEL_WEIGHTS[0].0
}

fn multi_tenant_config(repo: &Path, budget: u64) -> String {
    let assets = repo.join("assets/models");
    let model = |onnx: &str, inputs: &str, output: &str, pooling: &str, max_tokens: u32| {
        format!(
            "onnx = \"{}/{onnx}\"\ntokenizer = \"{}/minilm-uncased-tokenizer.json\"\ninputs = [{inputs}]\noutput = \"{output}\"\npooling = \"{pooling}\"\nmax_tokens = {max_tokens}\ndimensions = 384\n",
            assets.display(),
            assets.display()
        )
    };
    let bert = "\"input_ids\", \"attention_mask\", \"token_type_ids\"";
    let mut out = format!(
        "default_model = \"minilm-l6-int8\"\n\n[server]\nreload_poll_ms = 0\n\n[runtime]\nonnxruntime = \"{}\"\n\n[cache]\nmax_bytes = {budget}\n\n",
        repo.join("assets/onnxruntime/libonnxruntime.so.1.31.1").display()
    );
    out += &format!(
        "[models.minilm-l6-int8]\n{}\n",
        model("minilm-l6-int8/model.onnx", bert, "last_hidden_state", "mean", 256)
    );
    out += &format!(
        "[models.minilm-l6-int8-cls]\n{}\n",
        model("minilm-l6-int8/model.onnx", bert, "last_hidden_state", "cls", 256)
    );
    out += &format!(
        "[models.paraphrase-l3]\n{}\n",
        model("paraphrase-l3/model.onnx", "\"input_ids\", \"attention_mask\"", "461", "none", 128)
    );
    for t in 0..TENANTS {
        out += &format!(
            "[tenants.tenant-{t}]\nkeys = [\"{}\"]\nmodels = [\"minilm-l6-int8\", \"minilm-l6-int8-cls\", \"paraphrase-l3\"]\nlimits = {{ requests_per_second = 100000, burst = 100000, tokens_per_minute = 1000000000, max_inputs = 256 }}\n\n",
            embedserve::tenants::hash_key(&format!("tenant-{t}-key"))
        );
    }
    out
}
