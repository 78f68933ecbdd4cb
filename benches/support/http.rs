//! The HTTP side of the benchmarks: spawning the release binary, latency and throughput.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::ceiling::SENTENCES;

pub const MODEL: &str = "minilm-l6-int8";
pub const THROUGHPUT_SECONDS: u64 = 6;
/// The demo tenant with limits that never bind (config/default.toml).
pub const KEY: &str = "acme-dev-key";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Spawns the release binary and polls `/v1/embed` until it answers 200.
#[allow(clippy::zombie_processes)] // the caller kills and waits for the child it gets back
/// Spawns the server and waits for its first 200: (ms, process, port, metrics port).
pub async fn cold_start(config: &Path) -> (f64, Child, u16, u16) {
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

pub async fn latency(base: &str, n: usize) -> (f64, f64) {
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

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

pub async fn throughput(base: &str, clients: usize) -> f64 {
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

/// CPU seconds (user + system) a process has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14th and 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
