//! The real `embedserve` binary in a process of its own, serving a config file the test
//! writes: for what must not share a process with other tests (resident memory) or needs the
//! file and signals (reload).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

pub struct SpawnedServer {
    pub child: Child,
    pub base: String,
    /// The private listener serving `/metrics`.
    pub metrics_base: String,
    pub config: PathBuf,
    /// Every log line the server has written so far.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: TempDir,
}

/// A folder under the target dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = repo().join("target/test-tmp").join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// config/default.toml with absolute asset paths, so the text works from any folder.
pub fn default_config_text() -> String {
    let text = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    text.replace("\"../assets/", &format!("\"{}/assets/", repo().display()))
}

/// `text` (a config/default.toml) with `model` added to acme's catalogue, after its default.
pub fn give_acme(text: &str, model: &str) -> String {
    let acme = "models = [\"minilm-l6-int8\"";
    assert!(text.contains(acme), "acme's catalogue no longer starts with minilm-l6-int8");
    text.replacen(acme, &format!("{acme}, \"{model}\""), 1)
}

impl SpawnedServer {
    /// Writes `config` and serves it on a free port; returns once `/ready` answers 200.
    pub async fn start(name: &str, config: &str) -> SpawnedServer {
        Self::start_with_env(name, config, &[]).await
    }

    /// [`Self::start`] with these environment variables (and none of the runner's `HF_*`).
    pub async fn start_with_env(name: &str, config: &str, env: &[(&str, &str)]) -> SpawnedServer {
        Self::start_under(name, config, env, &[]).await
    }

    /// [`Self::start_with_env`], the binary run by `wrapper` (a program and its arguments, the
    /// binary's path appended: an emulator, say) unless it is empty.
    pub async fn start_under(
        name: &str,
        config: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> SpawnedServer {
        let dir = TempDir::new(name);
        let path = dir.0.join("config.toml");
        std::fs::write(&path, config).unwrap();
        let binary = env!("CARGO_BIN_EXE_embedserve");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        for var in ["HF_HOME", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE"] {
            command.env_remove(var);
        }
        command.envs(env.iter().copied());
        let mut child = command
            .args(["serve", "--bind", "127.0.0.1:0", "--metrics-bind", "127.0.0.1:0", "--config"])
            .arg(&path)
            .env("EMBEDSERVE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The addresses come from the "listening" log lines; the rest of the log is drained.
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && (v["message"] == "embedserve listening" || v["message"] == "metrics listening")
                {
                    let _ = tx
                        .send((v["message"] == "metrics listening", v["addr"].as_str().unwrap().to_owned()));
                }
            }
        });
        let (base, metrics_base) = tokio::task::spawn_blocking(move || {
            let (mut base, mut metrics) = (None, None);
            while base.is_none() || metrics.is_none() {
                let (is_metrics, addr) = rx.recv_timeout(Duration::from_secs(30)).ok()?;
                *(if is_metrics { &mut metrics } else { &mut base }) = Some(format!("http://{addr}"));
            }
            Some((base?, metrics?))
        })
        .await
        .unwrap()
        .expect("server logged both its addresses");
        let server = SpawnedServer { child, base, metrics_base, config: path, logs, _dir: dir };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = client_with_key(None).get(self.url("/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("spawned server never became ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's log so far, one line each.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.metrics_base);
        client_with_key(None).get(url).send().await.unwrap().text().await.unwrap()
    }

    /// One Prometheus sample; a missing one fails the test.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    /// One sample, 0 if not yet counted (see [`metric_or_zero`]).
    pub async fn metric_or_zero(&self, sample: &str) -> f64 {
        metric_or_zero(&self.metrics().await, sample)
    }

    /// Stops the server as an orchestrator does (SIGTERM) and waits for it to exit: it drains,
    /// writes the usage it holds (a graceful stop loses nothing) and exits 0, within its
    /// shutdown deadline plus the bounded usage flush (2 s), here given 30 s more for a slow CPU.
    /// Returns the server's log.
    pub async fn stop(mut self) -> String {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill only sends a signal to the child this struct owns and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM to the server");
        let deadline = Instant::now() + Duration::from_secs(35);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running 35 s after SIGTERM:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The stderr reader may still hold the last lines: it ends at the pipe's end.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let log = self.log_text();
        assert!(status.success(), "{status}:\n{log}");
        log
    }

    /// `GET path` with `key`, its JSON body.
    pub async fn get_json_as(&self, key: &str, path: &str) -> serde_json::Value {
        client_with_key(Some(key)).get(self.url(path)).send().await.unwrap().json().await.unwrap()
    }

    pub async fn post_as(&self, key: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = client_with_key(Some(key)).post(self.url(path)).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
