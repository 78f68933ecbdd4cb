//! Real Redis and HAProxy (Debian's `redis-server` and `haproxy`, which `make test` installs),
//! each started on a free loopback port in a folder of its own and stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::spawned::{SpawnedServer, TempDir, default_config_text};

/// A client keeping its connections alive, as real clients of a load balancer do (within one
/// test's runtime only).
pub fn pooled_client(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).timeout(REQUEST_TIMEOUT).build().unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// Serving TLS only, with the certificates [`make_certificates`] made in `dir`.
    tls: bool,
}

impl Redis {
    /// A Redis that writes every change to its append-only file before answering, so a stop
    /// and a restart lose nothing, as a managed Redis would not.
    pub fn start(name: &str) -> Redis {
        Redis::launch(name, false)
    }

    /// [`Redis::start`] serving TLS only (`--port 0 --tls-port`), its certificate for
    /// 127.0.0.1 signed by a CA of its own ([`Redis::ca_file`]); clients need no certificate.
    pub fn start_tls(name: &str) -> Redis {
        Redis::launch(name, true)
    }

    fn launch(name: &str, tls: bool) -> Redis {
        let dir = TempDir::new(&format!("redis-{name}"));
        if tls {
            make_certificates(&dir.0);
        }
        let mut redis = Redis { child: None, port: free_port(), dir, tls };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}/0", if self.tls { "rediss" } else { "redis" }, self.port)
    }

    /// The PEM certificate of the CA that signed a TLS Redis's certificate.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.0.join("ca.crt")
    }

    /// A connection of the test's own, to read and write keys directly (plain Redis only).
    pub fn connection(&self) -> redis::Connection {
        assert!(!self.tls, "a test's own connection is plain");
        redis::Client::open(self.url()).unwrap().get_connection().expect("a connection to the test's Redis")
    }

    /// Starts (again) on the same port and folder; returns once it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        if self.tls {
            command.args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"]);
            for (option, file) in [
                ("--tls-cert-file", "server.crt"),
                ("--tls-key-file", "server.key"),
                ("--tls-ca-cert-file", "ca.crt"),
            ] {
                command.arg(option).arg(self.dir.0.join(file));
            }
        } else {
            command.args(["--port", &port]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (make test installs Debian's redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not answer PING within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it at once, as a crash or a lost network would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn answers(&self) -> bool {
        if self.tls {
            let out = Command::new("redis-cli")
                .args(["--tls", "--cacert"])
                .arg(self.ca_file())
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "PING"])
                .output()
                .expect("redis-cli runs");
            return out.stdout.starts_with(b"PONG");
        }
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

/// In `dir`, with the `openssl` CLI: a CA (`ca.crt`, `ca.key`), a server certificate for
/// 127.0.0.1 it signs (`server.crt`, `server.key`), and a CA that signs nothing (`other-ca.crt`).
pub fn make_certificates(dir: &std::path::Path) {
    let openssl = |args: &str| {
        let args: Vec<&str> = args.split(' ').collect();
        let out = Command::new("openssl").args(&args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let new_key = "-newkey rsa:2048 -nodes -days 2";
    for name in ["ca", "other-ca"] {
        openssl(&format!("req -x509 {new_key} -subj /CN={name} -keyout {name}.key -out {name}.crt"));
    }
    std::fs::write(dir.join("san.ext"), "subjectAltName = IP:127.0.0.1\n").unwrap();
    openssl(&format!("req {new_key} -subj /CN=127.0.0.1 -keyout server.key -out server.csr"));
    openssl(
        "x509 -req -days 2 -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -extfile san.ext -out server.crt",
    );
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The shipped `deploy/haproxy/haproxy.cfg` in front of three replicas.
pub struct Haproxy {
    child: Child,
    pub base: String,
    pub stats: String,
    _dir: TempDir,
}

impl Haproxy {
    pub async fn start(name: &str, replicas: [&SpawnedServer; 3]) -> Haproxy {
        let dir = TempDir::new(&format!("haproxy-{name}"));
        let (port, stats_port) = (free_port(), free_port());
        let mut command = Command::new("haproxy");
        command
            .args(["-db", "-f"])
            .arg(repo().join("deploy/haproxy/haproxy.cfg"))
            .env("HAPROXY_BIND", format!("127.0.0.1:{port}"))
            .env("HAPROXY_STATS_BIND", format!("127.0.0.1:{stats_port}"))
            .env("HAPROXY_STATS_SOCKET", dir.0.join("admin.sock"))
            .stdout(if std::env::var_os("HAPROXY_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .stderr(Stdio::null());
        for (i, replica) in replicas.iter().enumerate() {
            command.env(format!("EMBEDSERVE_{}", i + 1), replica.base.trim_start_matches("http://"));
        }
        let child = command.spawn().expect("haproxy runs (make test installs Debian's haproxy)");
        let haproxy = Haproxy {
            child,
            base: format!("http://127.0.0.1:{port}"),
            stats: format!("http://127.0.0.1:{stats_port}/stats;csv"),
            _dir: dir,
        };
        // Up when every replica has passed its health checks.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(rows) = haproxy.servers().await
                && rows.len() == 3
                && rows.iter().all(|r| r.status == "UP")
            {
                return haproxy;
            }
            assert!(Instant::now() < deadline, "haproxy never saw three healthy replicas");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each replica's row of HAProxy's statistics.
    pub async fn servers(&self) -> Result<Vec<ServerStats>, reqwest::Error> {
        let text = client_with_key(None).get(&self.stats).send().await?.text().await?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").trim_start_matches("# ").split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (px, sv, status, smax, total) =
            (column("pxname"), column("svname"), column("status"), column("smax"), column("stot"));
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f[px] == "embedserve" && f[sv].starts_with("replica"))
            .map(|f| ServerStats {
                name: f[sv].to_owned(),
                status: f[status].to_owned(),
                max_sessions: f[smax].parse().unwrap_or(0),
                total_sessions: f[total].parse().unwrap_or(0),
            })
            .collect())
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct ServerStats {
    pub name: String,
    pub status: String,
    /// Most requests it held at once.
    pub max_sessions: u64,
    pub total_sessions: u64,
}

/// A tenant of the test clusters: its id, key and limits.
pub struct TestTenant {
    pub id: String,
    pub key: String,
    pub requests_per_second: u32,
    pub burst: u32,
    pub tokens_per_minute: u32,
    /// With a private model of its own (paraphrase-L3's files) as its default.
    pub private_model: bool,
}

impl TestTenant {
    pub fn new(id: &str, requests_per_second: u32, burst: u32, tokens_per_minute: u32) -> Self {
        TestTenant {
            id: id.to_owned(),
            key: format!("{id}-test-key"),
            requests_per_second,
            burst,
            tokens_per_minute,
            private_model: false,
        }
    }
}

/// config/default.toml with the limits in `redis_url` (if any) and `tenants` added.
pub fn cluster_config(redis_url: Option<&str>, tenants: &[TestTenant]) -> String {
    cluster_config_with_timeout(redis_url, tenants, 50)
}

/// [`cluster_config`] with the Redis call timeout (after which a replica falls back to local
/// limits) set to `timeout_ms`.
pub fn cluster_config_with_timeout(
    redis_url: Option<&str>,
    tenants: &[TestTenant],
    timeout_ms: u64,
) -> String {
    let mut text = default_config_text();
    if let Some(url) = redis_url {
        text.push_str(&format!(
            "\n[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\nusage_flush_ms = 200\ntimeout_ms = {timeout_ms}\n"
        ));
    }
    let assets = repo().join("assets/models");
    for t in tenants {
        text.push_str(&format!(
            "\n[tenants.{id}]\nkeys = [\"{hash}\"]\nmodels = [\"minilm-l6-int8\"]\n\
             limits = {{ requests_per_second = {rps}, burst = {burst}, tokens_per_minute = {tpm}, max_inputs = 64 }}\n",
            id = t.id,
            hash = embedserve::config::keys::hash_key(&t.key),
            rps = t.requests_per_second,
            burst = t.burst,
            tpm = t.tokens_per_minute,
        ));
        if t.private_model {
            text.push_str(&format!(
                "default_model = \"own\"\n[tenants.{id}.private_models.own]\n\
                 onnx = \"{onnx}\"\ntokenizer = \"{tok}\"\ninputs = [\"input_ids\", \"attention_mask\"]\n\
                 output = \"461\"\npooling = \"none\"\nnormalize = true\nmax_tokens = 128\ndimensions = 384\n",
                id = t.id,
                onnx = assets.join("paraphrase-l3/model.onnx").display(),
                tok = assets.join("minilm-uncased-tokenizer.json").display(),
            ));
        }
    }
    text
}
