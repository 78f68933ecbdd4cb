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

use std::path::Path;
use std::time::Duration;

use embedserve::Settings;
use support::ceiling::{SENTENCES, embeddings_per_second};
use support::http::{MODEL, THROUGHPUT_SECONDS, cold_start, cpu_seconds, latency, throughput};

mod support {
    pub mod ceiling;
    pub mod http;
}

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
        let (cpu, started) = (cpu_seconds(server.id()), std::time::Instant::now());
        let rate = rt.block_on(throughput(&base, clients));
        let cpu_ms = (cpu_seconds(server.id()) - cpu) / (rate * started.elapsed().as_secs_f64()) * 1e3;
        let after = rt.block_on(batch_sizes(&metrics));
        let mean = (after.0 - before.0) / (after.1 - before.1);
        println!(
            "  server, {clients:>2} concurrent clients: {rate:>7.1} embeddings/s, server CPU {cpu_ms:.2} ms per embedding \
             ({mean:.1} inputs per run on average)"
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
