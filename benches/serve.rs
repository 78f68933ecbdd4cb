//! `make bench`: figures, not assertions, measured in one run on this machine.
//!
//! - cold start: process spawn to the first 200 on `/v1/embed`, median of 5;
//! - one short sentence over HTTP: p50 and p99;
//! - embeddings/s at 1, 8, 32 and 64 concurrent one-sentence clients, beside an in-process loop
//!   over the same ONNX Runtime session at batch 1 and 32 (the ceiling), and their ratio;
//! - the server's peak resident memory.
//!
//! The scenarios under load (many tenants, a noisy neighbour, a spike, mixed lengths) are
//! the load tests' (`make load-test`).
//!
//! The load generator shares the machine's cores with the server, as any one-machine
//! benchmark does; the ratio to the in-process ceiling is the figure to compare.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use embedserve::Settings;
use serde_json::json;
use support::ceiling::{SENTENCES, embeddings_per_second};

mod support {
    pub mod ceiling;
}

const MODEL: &str = "minilm-l6-int8";
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
            let (ms, mut child, ..) = rt.block_on(cold_start(&config));
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

    let (_, mut server, port, metrics_port) = rt.block_on(cold_start(&config));
    let base = format!("http://127.0.0.1:{port}");
    let metrics = format!("http://127.0.0.1:{metrics_port}");
    let lat = rt.block_on(latency(&base, 500));
    println!("one short sentence over HTTP, 500 sequential: p50 {:.2} ms, p99 {:.2} ms", lat.0, lat.1);

    println!();
    println!("throughput, one sentence per request, {THROUGHPUT_SECONDS} s each:");
    let mut server_rates = Vec::new();
    for clients in [1, 8, 32, 64] {
        let before = rt.block_on(batch_sizes(&metrics));
        let rate = rt.block_on(throughput(&base, clients));
        let after = rt.block_on(batch_sizes(&metrics));
        let mean = (after.0 - before.0) / (after.1 - before.1);
        println!(
            "  server, {clients:>2} concurrent clients: {rate:>7.1} embeddings/s ({mean:.1} inputs per run on average)"
        );
        server_rates.push((clients, rate));
    }
    let rss = peak_rss_mib(server.id());
    server.kill().ok();
    server.wait().ok();

    let settings = Settings::load(&config).unwrap();
    let each = Duration::from_secs(THROUGHPUT_SECONDS);
    let rates = embeddings_per_second(&settings, MODEL, &SENTENCES, &[1, 32], each).unwrap();
    let (b1, b32) = (rates[0], rates[1]);
    println!("  in-process session, batch  1: {b1:>7.1} embeddings/s");
    println!("  in-process session, batch 32: {b32:>7.1} embeddings/s (the ceiling)");
    for (clients, rate) in server_rates {
        println!("  ratio server/ceiling at {clients:>2} clients: {:.0}%", 100.0 * rate / b32);
    }
    println!();
    println!("server peak resident memory (VmHWM): {rss:.0} MiB");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Spawns the release binary and polls `/v1/embed` until it answers 200.
#[allow(clippy::zombie_processes)] // the caller kills and waits for the child it gets back
/// Spawns the server and waits for its first 200: (ms, process, port, metrics port).
async fn cold_start(config: &Path) -> (f64, Child, u16, u16) {
    let (port, metrics_port) = (free_port(), free_port());
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/embed");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_embedserve"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--metrics-bind", &format!("127.0.0.1:{metrics_port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("embedserve starts");
    loop {
        let body = json!({ "input": SENTENCES[0], "model": MODEL });
        if let Ok(r) = client.post(&url).bearer_auth(KEY).json(&body).send().await
            && r.status() == 200
        {
            return (started.elapsed().as_secs_f64() * 1e3, child, port, metrics_port);
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

/// The server's `embedserve_batch_size` histogram: (sum, count).
async fn batch_sizes(metrics: &str) -> (f64, f64) {
    let text = reqwest::get(format!("{metrics}/metrics")).await.unwrap().text().await.unwrap();
    let value = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (value("embedserve_batch_size_sum"), value("embedserve_batch_size_count"))
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
