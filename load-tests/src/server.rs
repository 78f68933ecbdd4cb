//! The server under test: the repository's release binary, started on a free port with a
//! configuration the scenario writes, and its `/metrics` read back after the run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct Server {
    child: Child,
    pub base: String,
    /// The private listener serving `/metrics`.
    pub metrics_base: String,
}

impl Server {
    /// Writes `config` next to the scenario's reports and serves it; returns once `/ready` is 200.
    pub async fn start(binary: &Path, config_path: &Path, config: &str) -> anyhow::Result<Server> {
        std::fs::write(config_path, config)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let metrics_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(config_path.with_extension("log"))?;
        let child = Command::new(binary)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--metrics-bind", &format!("127.0.0.1:{metrics_port}"), "--config"])
            .arg(config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} (build it with `make build`)", binary.display()))?;
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            metrics_base: format!("http://127.0.0.1:{metrics_port}"),
        };
        let client = reqwest_client();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = client.get(format!("{}/ready", server.base)).send().await
                && r.status() == 200
            {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("the server exited ({status}); see {}", config_path.with_extension("log").display());
            }
            if Instant::now() > deadline {
                bail!("the server was not ready within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's Prometheus text.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text =
            reqwest_client().get(format!("{}/metrics", self.metrics_base)).send().await?.text().await?;
        Ok(Metrics(text))
    }

    /// CPU seconds the server has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    /// The server's peak resident memory (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's `embedserve_batch_size` histogram as (sum, count); zeros if unreachable.
/// `metrics_base` is the server's private metrics listener.
pub async fn batch_sizes(metrics_base: &str) -> (f64, f64) {
    let Ok(response) = reqwest_client().get(format!("{metrics_base}/metrics")).send().await else {
        return (0.0, 0.0);
    };
    let metrics = Metrics(response.text().await.unwrap_or_default());
    (metrics.sum("embedserve_batch_size_sum", &[]), metrics.sum("embedserve_batch_size_count", &[]))
}

/// CPU seconds (user and system) process `pid` has used, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    // The kernel's USER_HZ, 100 on Linux's every mainstream architecture.
    ticks / 100.0
}

fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client")
}

/// A scrape of `/metrics`.
pub struct Metrics(String);

impl Metrics {
    /// The sum of every sample of `name` whose labels contain each of `labels`.
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |sum, v| sum + v)
    }
}

/// Paths the configs use, absolute so a config works from any folder.
pub struct Repo(pub PathBuf);

impl Repo {
    /// config/default.toml with absolute asset paths and `edits` (old, new) applied.
    pub fn default_config(&self, edits: &[(&str, &str)]) -> anyhow::Result<String> {
        let mut text = std::fs::read_to_string(self.0.join("config/default.toml"))?
            .replace("\"../assets/", &format!("\"{}/assets/", self.0.display()));
        for (old, new) in edits {
            if !text.contains(old) {
                bail!("config/default.toml no longer has `{old}`");
            }
            text = text.replace(old, new);
        }
        Ok(text)
    }

    pub fn onnxruntime(&self) -> PathBuf {
        self.0.join("assets/onnxruntime/libonnxruntime.so.1.31.1")
    }

    pub fn models(&self) -> PathBuf {
        self.0.join("assets/models")
    }
}

/// A `[tenants.NAME]` table with the key `NAME-key` (stored hashed), the given models and limits.
pub fn tenant_table(name: &str, models: &[&str], limits: &str) -> String {
    let models: Vec<String> = models.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        "[tenants.{name}]\nkeys = [\"{}\"]\nmodels = [{}]\nlimits = {{ {limits} }}\n\n",
        embedserve::config::keys::hash_key(&format!("{name}-key")),
        models.join(", ")
    )
}

/// Limits that never bind: the scenario measures the server, not a tenant's quota.
pub const UNLIMITED: &str =
    "requests_per_second = 1000000, burst = 1000000, tokens_per_minute = 1000000000, max_inputs = 256";
