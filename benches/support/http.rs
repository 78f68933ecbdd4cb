//! The HTTP side of the benchmarks: spawning a server, latency, throughput, and the CPU and
//! memory a server (or a process group) uses, from /proc.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::ceiling::SENTENCES;

pub const MODEL: &str = "minilm-l6-int8";
pub const THROUGHPUT_SECONDS: u64 = 6;
/// The demo tenant with limits that never bind (config/default.toml).
pub const KEY: &str = "acme-dev-key";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where the benchmarks post texts: a route, its key if it takes one, and the model to name.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: String,
    pub key: Option<&'static str>,
    pub model: Option<&'static str>,
}

impl Endpoint {
    /// embedserve's native `/v1/embed` at `base`, as the demo tenant, on its default model.
    pub fn embedserve(base: &str) -> Self {
        Endpoint { url: format!("{base}/v1/embed"), key: Some(KEY), model: None }
    }

    /// A POST of `input` (one text or a list of them).
    pub fn post(&self, client: &reqwest::Client, input: Value) -> reqwest::RequestBuilder {
        let body = match self.model {
            Some(model) => json!({ "input": input, "model": model }),
            None => json!({ "input": input }),
        };
        let request = client.post(&self.url).json(&body);
        match self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }
}

/// The release binary serving `config` on `port`, its metrics on `metrics_port`.
pub fn embedserve_command(config: &Path, port: u16, metrics_port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_embedserve"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--metrics-bind", &format!("127.0.0.1:{metrics_port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    command
}

/// Spawns the server and waits for its first 200 from `model`: (ms, process, port, metrics port).
pub async fn cold_start(config: &Path, model: &'static str) -> (f64, Child, u16, u16) {
    let (port, metrics_port) = (free_port(), free_port());
    let endpoint =
        Endpoint { model: Some(model), ..Endpoint::embedserve(&format!("http://127.0.0.1:{port}")) };
    let command = embedserve_command(config, port, metrics_port);
    let (ms, child) = first_200(command, &endpoint, Duration::from_secs(60)).await;
    (ms, child, port, metrics_port)
}

/// Spawns `command` and posts one sentence to `endpoint` until it answers 200, for at most
/// `limit`: (ms from spawn to that 200, the process).
#[allow(clippy::zombie_processes)] // the caller kills and waits for the child it gets back
pub async fn first_200(mut command: Command, endpoint: &Endpoint, limit: Duration) -> (f64, Child) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut child = command.spawn().expect("the server starts");
    loop {
        if let Ok(r) = endpoint.post(&client, json!(SENTENCES[0])).send().await
            && r.status() == 200
        {
            return (started.elapsed().as_secs_f64() * 1e3, child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{command:?} exited with {status} before answering");
        }
        assert!(started.elapsed() < limit, "{command:?} did not answer within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One sentence per request, `n` sequential requests after 20 of warm-up: (p50, p99) in ms.
pub async fn latency(endpoint: &Endpoint, n: usize) -> (f64, f64) {
    let client = reqwest::Client::new();
    let mut ms = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        let r = endpoint.post(&client, json!(SENTENCES[i % SENTENCES.len()])).send().await.unwrap();
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

/// Embeddings/s with `clients` concurrent clients sending one sentence per request, for
/// THROUGHPUT_SECONDS.
pub async fn throughput(endpoint: &Endpoint, clients: usize) -> f64 {
    throughput_and_p99(endpoint, clients).await.0
}

/// [`throughput`] and the p99 of its requests' latencies, in ms.
pub async fn throughput_and_p99(endpoint: &Endpoint, clients: usize) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(THROUGHPUT_SECONDS);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut ms = Vec::new();
                while Instant::now() < deadline {
                    let text = SENTENCES[(c + ms.len()) % SENTENCES.len()];
                    let sent = Instant::now();
                    let r = endpoint.post(&client, json!(text)).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    ms.push(sent.elapsed().as_secs_f64() * 1e3);
                }
                ms
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (rate, percentile(&all, 0.99))
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces): state is [0],
/// the process group [2], utime and stime [11] and [12], cutime and cstime [13] and [14].
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after.split_whitespace().map(str::to_string).collect()
}

fn ticks_to_seconds(fields: &[String], range: std::ops::Range<usize>) -> f64 {
    let ticks: f64 = fields.get(range).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// CPU seconds (user + system) a process has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    ticks_to_seconds(&stat_fields(pid), 11..13)
}

/// A process's peak resident memory (VmHWM) in MiB, from /proc.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The live processes of process group `pgid` (a server spawned with `process_group(0)`, and
/// the workers it started).
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid))
        .collect()
}

/// CPU seconds a process group has used so far: its live processes' own, and that of the
/// children they have waited for.
pub fn group_cpu_seconds(pgid: u32) -> f64 {
    group_members(pgid).into_iter().map(|pid| ticks_to_seconds(&stat_fields(pid), 11..15)).sum()
}

/// The sum of a process group's peak resident memories, in MiB (for one process, its VmHWM).
pub fn group_peak_rss_mib(pgid: u32) -> f64 {
    group_members(pgid).into_iter().map(peak_rss_mib).sum()
}
