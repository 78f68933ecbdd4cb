//! `make bench-peers`: embedserve beside Infinity (PyPI's `infinity-emb`, its ONNX engine
//! `--engine optimum`), both serving the same ONNX file on this machine, one after the other in
//! one run. For each server:
//!
//! - process start to the first 200 on its embeddings route, median of 3;
//! - one short sentence, 300 sequential requests: p50 and p99;
//! - embeddings/s at 8 and 64 concurrent one-sentence clients, with the server's CPU time per
//!   embedding (user + system of its whole process group, from /proc);
//! - its peak resident memory (VmHWM, summed over the process group);
//!
//! then the ratios, the cosine of both servers' vectors for the same sentences, and the CPU
//! model with its int8-relevant flags. Figures, not assertions.
//!
//! Both take the same request on their OpenAI-shaped route (`{"input": text, "model": ...}` to
//! embedserve's `/v1/embeddings`, Infinity's `/embeddings`). embedserve serves
//! config/default.toml; Infinity (from `.venv-peers`, `make peers-venv`) runs offline on a
//! folder laid out under target/peers/ as it loads one: the sentence-transformers files of
//! assets/models/minilm-l6-int8-st and `model.onnx`, all symlinks. Run from that folder with
//! `--model-id .`, since Infinity 0.0.78 hands optimum 2.x an ONNX file name that only matches
//! when it is the bare name of a file at the folder's root. Its own defaults stand except: mean
//! pooling (its ONNX engine otherwise takes the CLS token), no graph rewrite
//! (`--onnx-disable-optimize`: otherwise it would serve an optimised copy, not this file), no
//! disk cache of vectors (off by default too). Infinity is measured twice: with its defaults,
//! which warm the model up before it serves (two batches of 32 inputs of 512 tokens: most of
//! its start and its peak memory), and with `--no-model-warmup`.
//!
//! Twice: on the int8 default model, then on its fp32 original (assets/models/minilm-l6-fp32),
//! which embedserve serves under the same name with ONNX Runtime's graph optimisations on.
//! The load generator shares the two cores with the server, for both servers alike.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::ceiling::SENTENCES;
use support::http::{
    Endpoint, KEY, MODEL, THROUGHPUT_SECONDS, embedserve_command, first_200, free_port, group_cpu_seconds,
    group_peak_rss_mib, latency, throughput,
};

#[allow(dead_code)] // each bench uses its own part of the shared support
mod support {
    pub mod ceiling;
    pub mod cpu;
    pub mod http;
}

const COLD_RUNS: usize = 3;
const LATENCY_REQUESTS: usize = 300;
const CLIENTS: [usize; 2] = [8, 64];
/// The sentence-transformers files Infinity reads beside the ONNX file.
const ST_FILES: [&str; 8] = [
    "config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "1_Pooling/config.json",
];

enum Server {
    Embedserve {
        config: PathBuf,
    },
    /// `warmup`: Infinity's default, two batches of 32 inputs of 512 tokens before it serves.
    Infinity {
        venv: PathBuf,
        folder: PathBuf,
        log: PathBuf,
        warmup: bool,
    },
}

impl Server {
    /// The command that starts it on a free port, in a process group of its own, and the
    /// route that embeds.
    fn command(&self) -> (Command, Endpoint) {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let (mut command, endpoint) = match self {
            Server::Embedserve { config } => (
                embedserve_command(config, port, free_port()),
                Endpoint { url: format!("{base}/v1/embeddings"), key: Some(KEY), model: Some(MODEL) },
            ),
            Server::Infinity { venv, folder, log, warmup } => {
                let mut command = Command::new(venv.join("bin/infinity_emb"));
                command
                    .args(["v2", "--model-id", ".", "--served-model-name", MODEL])
                    .args(["--engine", "optimum", "--device", "cpu", "--pooling-method", "mean"])
                    .args(["--onnx-disable-optimize", "--no-vector-disk-cache"])
                    .arg(if *warmup { "--model-warmup" } else { "--no-model-warmup" })
                    .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--log-level", "warning"])
                    .current_dir(folder)
                    .env("HF_HUB_OFFLINE", "1")
                    .env("TRANSFORMERS_OFFLINE", "1")
                    .env("HF_HUB_DISABLE_TELEMETRY", "1")
                    .env("DO_NOT_TRACK", "1")
                    .env("HF_HOME", folder.parent().unwrap().join("hf-home"))
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(log).unwrap());
                (command, Endpoint { url: format!("{base}/embeddings"), key: None, model: Some(MODEL) })
            }
        };
        command.process_group(0);
        (command, endpoint)
    }
}

/// One server's figures on one model.
struct Figures {
    cold_ms: Vec<f64>,
    p50_ms: f64,
    p99_ms: f64,
    /// (clients, embeddings/s, server CPU ms per embedding)
    rates: Vec<(usize, f64, f64)>,
    peak_rss_mib: f64,
    /// The vectors of SENTENCES[..4], from one request.
    vectors: Vec<Vec<f64>>,
}

impl Figures {
    fn cold_median(&self) -> f64 {
        self.cold_ms[self.cold_ms.len() / 2]
    }
}

fn stop(child: &mut Child) {
    // The whole group: Infinity's workers too, were there any.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    child.wait().ok();
}

async fn start(server: &Server) -> (f64, Child, Endpoint) {
    let (command, endpoint) = server.command();
    let (ms, child) = first_200(command, &endpoint, Duration::from_secs(180)).await;
    (ms, child, endpoint)
}

fn measure(rt: &tokio::runtime::Runtime, server: &Server) -> Figures {
    let mut cold_ms: Vec<f64> = (0..COLD_RUNS)
        .map(|_| {
            let (ms, mut child, _) = rt.block_on(start(server));
            stop(&mut child);
            ms
        })
        .collect();
    cold_ms.sort_by(f64::total_cmp);

    let (_, mut child, endpoint) = rt.block_on(start(server));
    let pgid = child.id();
    let (p50_ms, p99_ms) = rt.block_on(latency(&endpoint, LATENCY_REQUESTS));
    let mut rates = Vec::new();
    for clients in CLIENTS {
        let (cpu, started) = (group_cpu_seconds(pgid), std::time::Instant::now());
        let rate = rt.block_on(throughput(&endpoint, clients));
        let cpu_ms = (group_cpu_seconds(pgid) - cpu) / (rate * started.elapsed().as_secs_f64()) * 1e3;
        rates.push((clients, rate, cpu_ms));
    }
    let vectors = rt.block_on(vectors(&endpoint, &SENTENCES[..4]));
    let peak_rss_mib = group_peak_rss_mib(pgid);
    stop(&mut child);
    Figures { cold_ms, p50_ms, p99_ms, rates, peak_rss_mib, vectors }
}

/// The vectors of `texts` from one OpenAI-shaped request, in input order.
async fn vectors(endpoint: &Endpoint, texts: &[&str]) -> Vec<Vec<f64>> {
    let r = endpoint.post(&reqwest::Client::new(), json!(texts)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let mut data: Vec<&Value> = body["data"].as_array().expect("an OpenAI-shaped answer").iter().collect();
    data.sort_by_key(|d| d["index"].as_u64());
    data.iter()
        .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// A folder as Infinity loads one: the export folder's files and `model.onnx`, symlinked.
fn lay_out(folder: &Path, export: &Path, onnx: &Path) {
    let _ = std::fs::remove_dir_all(folder);
    std::fs::create_dir_all(folder.join("1_Pooling")).unwrap();
    for name in ST_FILES {
        std::os::unix::fs::symlink(export.join(name), folder.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(onnx, folder.join("model.onnx")).unwrap();
}

/// A package's version in the venv, from its metadata (no import).
fn version(venv: &Path, package: &str) -> String {
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", &format!("import importlib.metadata as m; print(m.version('{package}'))")])
        .output()
        .expect("the venv's python runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The table: embedserve, then each Infinity with its ratio to embedserve.
fn print(title: &str, embedserve: &Figures, infinity: &[(&str, Figures)]) {
    println!("{title}");
    let mut header = format!("  {:<50} {:>12}", "figure", "embedserve");
    for (name, _) in infinity {
        header.push_str(&format!(" {name:>16} {:>7}", "ratio"));
    }
    println!("{header}");
    let row = |name: &str, value: &dyn Fn(&Figures) -> f64, unit: &str, digits: usize| {
        let e = value(embedserve);
        let mut line = format!("  {name:<50} {:>12}", format!("{e:.digits$}{unit}"));
        for (_, f) in infinity {
            let i = value(f);
            line.push_str(&format!(" {:>16} {:>6.2}x", format!("{i:.digits$}{unit}"), i / e));
        }
        println!("{line}");
    };
    row(&format!("process start to first 200, median of {COLD_RUNS}"), &|f| f.cold_median(), " ms", 0);
    row("1 client, one sentence: p50", &|f| f.p50_ms, " ms", 2);
    row("1 client, one sentence: p99", &|f| f.p99_ms, " ms", 2);
    for (i, clients) in CLIENTS.iter().enumerate() {
        row(&format!("{clients} concurrent clients: embeddings/s"), &|f| f.rates[i].1, "", 0);
        row(&format!("{clients} concurrent clients: server CPU per embedding"), &|f| f.rates[i].2, " ms", 2);
    }
    row("peak resident memory (VmHWM, process group)", &|f| f.peak_rss_mib, " MiB", 0);
    let runs = |f: &Figures| f.cold_ms.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(", ");
    let mut colds = format!("  each cold start (ms): embedserve {}", runs(embedserve));
    for (name, f) in infinity {
        colds.push_str(&format!("; {name} {}", runs(f)));
    }
    println!("{colds}");
    for (name, f) in infinity {
        let cosines: Vec<f64> =
            embedserve.vectors.iter().zip(&f.vectors).map(|(a, b)| cosine(a, b)).collect();
        println!(
            "  vectors: cosine of embedserve's and {name}'s for {} sentences: {} (min {:.6})",
            cosines.len(),
            cosines.iter().map(|c| format!("{c:.6}")).collect::<Vec<_>>().join(", "),
            cosines.iter().copied().fold(f64::INFINITY, f64::min)
        );
    }
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv =
        std::env::var_os("EMBEDSERVE_PEERS_VENV").map_or_else(|| repo.join(".venv-peers"), PathBuf::from);
    assert!(
        venv.join("bin/infinity_emb").exists(),
        "no Infinity in {}: run `make peers-venv`",
        venv.display()
    );
    let dir = repo.join("target/peers");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let default = std::fs::read_to_string(repo.join("config/default.toml"))
        .unwrap()
        .replace("\"../assets/", &format!("\"{}/assets/", repo.display()));
    let int8 = repo.join("assets/models/minilm-l6-int8/model.onnx");
    let fp32 = repo.join("assets/models/minilm-l6-fp32/model.onnx");
    let export = repo.join("assets/models/minilm-l6-int8-st");
    // The export folder's ONNX file is embedserve's default model: a hard link to it.
    assert!(
        std::fs::read(export.join("onnx/model.onnx")).unwrap() == std::fs::read(&int8).unwrap(),
        "{} is not the file config/default.toml serves",
        export.join("onnx/model.onnx").display()
    );
    let int8_config = dir.join("int8.toml");
    std::fs::write(&int8_config, &default).unwrap();
    // fp32: the same entry on its fp32 original, with ONNX Runtime's graph optimisations (the
    // default level: `none` is for graphs already in final form).
    let fp32_config = dir.join("fp32.toml");
    let swapped = default.replacen(&int8.display().to_string(), &fp32.display().to_string(), 1).replacen(
        "graph_optimization = \"none\"",
        "graph_optimization = \"all\"",
        1,
    );
    assert!(
        swapped.contains(&fp32.display().to_string()),
        "config/default.toml no longer serves {}",
        int8.display()
    );
    std::fs::write(&fp32_config, swapped).unwrap();

    let mut versions = BTreeMap::new();
    for package in ["infinity-emb", "optimum", "optimum-onnx", "onnxruntime", "torch"] {
        versions.insert(package, version(&venv, package));
    }
    println!("embedserve beside Infinity, same ONNX file, same machine, one run");
    println!("  CPU: {}", support::cpu::describe());
    println!(
        "  Infinity {} (optimum {}, optimum-onnx {}, onnxruntime {}, torch {}) from {}",
        versions["infinity-emb"],
        versions["optimum"],
        versions["optimum-onnx"],
        versions["onnxruntime"],
        versions["torch"],
        venv.display()
    );
    let runtime = default.split("libonnxruntime.so.").nth(1).and_then(|v| v.split('"').next()).unwrap_or("?");
    println!("  embedserve: the release binary, config/default.toml, ONNX Runtime {runtime}");
    println!(
        "  one sentence per request on the OpenAI-shaped route; throughput {THROUGHPUT_SECONDS} s per load; \
         {LATENCY_REQUESTS} sequential requests for p50/p99"
    );
    println!();

    let rt = tokio::runtime::Runtime::new().unwrap();
    for (title, onnx, config) in [
        ("int8 compute (the default model)", &int8, &int8_config),
        ("fp32 (its original)", &fp32, &fp32_config),
    ] {
        let name = onnx.parent().unwrap().file_name().unwrap().to_str().unwrap();
        let folder = dir.join(name);
        lay_out(&folder, &export, onnx);
        let log = |tag: &str| dir.join(format!("infinity-{name}-{tag}.log"));
        let infinity =
            Server::Infinity { venv: venv.clone(), folder: folder.clone(), log: log("warmup"), warmup: true };
        let cold = Server::Infinity { venv: venv.clone(), folder, log: log("no-warmup"), warmup: false };
        let embedserve = Server::Embedserve { config: config.clone() };
        let infinity = measure(&rt, &infinity);
        let cold = measure(&rt, &cold);
        let embedserve = measure(&rt, &embedserve);
        print(
            &format!("{title}: {}", onnx.strip_prefix(repo).unwrap().display()),
            &embedserve,
            &[("Infinity", infinity), ("Inf. no warmup", cold)],
        );
        println!();
    }
}
