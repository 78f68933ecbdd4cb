//! The int8 models on every kind of x86 CPU this host can pass for, every run: the real server
//! as another kind of CPU would run it, so ONNX Runtime runs the kernels such a CPU would. On
//! each kind: the int8 kernels embedserve chose (u8 x u8 where the u8 x s8 kernel would clip:
//! AVX2 and AVX-512 without VNNI), the quality gate, and the same vectors as on the host itself.
//!
//! How a process passes for another kind ([`pass_for`]): tests/support/cpumask.c hides AVX-512,
//! VNNI and AMX from CPUID where the host offers CPUID faulting (Intel's, at native speed); on a
//! host without it (AMD's, and VMs that do not pass it on), QEMU's user-mode emulator
//! (`qemu-x86_64 -cpu EPYC-Rome`, Debian's qemu-user, which `make test` installs) runs the server
//! as an AVX2-only EPYC, about 100 times slower, so on fewer texts. QEMU emulates no AVX-512:
//! there the AVX-512 kinds are not run, and the output says so.

use std::process::Command;

use serde_json::Value;

use crate::helpers::*;
use crate::quality::{Pace, QualitySet, Report, embed_in_chunks, quality_set};
use crate::spawned::{SpawnedServer, TempDir, default_config_text};

/// int8 vectors of one text on two kinds of CPU: the reference tolerance, and why (helpers.rs).
const INT8_CROSS_CPU_MIN_COSINE: f64 = REFERENCE_MIN_COSINE;
/// fp32 vectors of one text on two kinds of CPU: only rounding differs.
const FP32_CROSS_CPU_MIN_COSINE: f64 = 0.99999;
/// The reranker's logits on two kinds of CPU: it computes in fp32 (its int8 weights dequantized,
/// see scripts/quantize.py dequantize_matmuls), so only rounding differs.
const RERANK_CROSS_CPU_LOGIT: f64 = 1e-3;

struct Kind {
    name: &'static str,
    /// /proc/cpuinfo flags the host needs to pass for this kind.
    needs: &'static [&'static str],
    /// Whether ONNX Runtime's u8 x s8 MatMul is exact on this kind (VNNI).
    u8s8_exact: bool,
}

const AVX512: [&str; 4] = ["avx512f", "avx512bw", "avx512dq", "avx512vl"];

const KINDS: [Kind; 4] = [
    Kind { name: "avx2", needs: &["avx2", "fma"], u8s8_exact: false },
    Kind { name: "avx512", needs: &["avx2", AVX512[0], AVX512[1], AVX512[2], AVX512[3]], u8s8_exact: false },
    Kind { name: "avx-vnni", needs: &["avx2", "avx_vnni"], u8s8_exact: true },
    Kind {
        name: "avx512-vnni",
        needs: &["avx2", AVX512[0], AVX512[1], AVX512[2], AVX512[3], "avx512_vnni"],
        u8s8_exact: true,
    },
];

pub fn host_flags() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let line = info.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    line.split_whitespace().map(str::to_owned).collect()
}

/// How a server process passes for a kind of CPU.
pub enum PassFor {
    /// tests/support/cpumask.c preloaded: CPUID faulting hides the features, at native speed.
    Masked { library: std::path::PathBuf, kind: &'static str },
    /// Under QEMU's user-mode emulator as an AVX2-only AMD EPYC (Rome): about 100 times slower.
    Emulated,
}

/// A request to a server under QEMU: about 100 times slower than natively.
const EMULATED_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(400);

/// QEMU's CPU model for the `avx2` kind: AVX2 and FMA, no AVX-512, no VNNI (AMD EPYC Rome, the
/// kind of host many cloud functions run on).
const QEMU_AVX2: [&str; 3] = ["qemu-x86_64", "-cpu", "EPYC-Rome"];

impl PassFor {
    pub fn env(&self) -> Vec<(&str, &str)> {
        match self {
            PassFor::Masked { library, kind } => {
                vec![("LD_PRELOAD", library.to_str().unwrap()), ("CPUMASK", kind)]
            }
            // A slow emulator: the server's own deadline must not cut a load or a request short.
            PassFor::Emulated => vec![("EMBEDSERVE__SERVER__REQUEST_TIMEOUT_MS", "390000")],
        }
    }

    pub fn wrapper(&self) -> &'static [&'static str] {
        match self {
            PassFor::Masked { .. } => &[],
            PassFor::Emulated => &QEMU_AVX2,
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            PassFor::Masked { .. } => "CPUID masked (tests/support/cpumask.c)",
            PassFor::Emulated => "under qemu-x86_64 -cpu EPYC-Rome",
        }
    }
}

/// How this host passes for `kind`: CPUID masking where the host has CPUID faulting, else QEMU
/// for `avx2`; None for a kind this host cannot pass for (an AVX-512 kind without CPUID
/// faulting). Panics if QEMU is needed and missing: a host that cannot run the AVX2 kind must
/// not pass for having tested it.
pub fn pass_for(kind: &'static str, dir: &TempDir) -> Option<PassFor> {
    let library = build_cpumask(dir);
    let status = Command::new("true")
        .env("LD_PRELOAD", &library)
        .env("CPUMASK", kind)
        .status()
        .expect("run `true` under tests/support/cpumask.c");
    if status.success() {
        return Some(PassFor::Masked { library, kind });
    }
    // cpumask.c exits 3 where the host has no CPUID faulting; anything else is a bug in it.
    assert_eq!(status.code(), Some(3), "tests/support/cpumask.c as {kind}: {status}");
    if kind != "avx2" {
        return None;
    }
    let qemu = Command::new(QEMU_AVX2[0]).arg("--version").output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "this host has no CPUID faulting: the AVX2 kind runs under {} (Debian's qemu-user; `make test` \
         installs it)",
        QEMU_AVX2[0]
    );
    Some(PassFor::Emulated)
}

/// The CPU-masking library, built from tests/support/cpumask.c.
pub fn build_cpumask(dir: &TempDir) -> std::path::PathBuf {
    let out = dir.0.join("libcpumask.so");
    let status = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC"])
        .arg(repo().join("tests/support/cpumask.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("a C compiler (cc) builds tests/support/cpumask.c");
    assert!(status.success(), "cc failed on tests/support/cpumask.c");
    out
}

/// config/default.toml with acme's paraphrase-L3 fp32 original beside its int8 model.
fn config() -> String {
    format!(
        "{}\n[tenants.acme.private_models.paraphrase-l3-fp32]\nonnx = \"{}\"\n\
         tokenizer = \"{}\"\ninputs = [\"input_ids\", \"attention_mask\"]\noutput = \"461\"\n\
         pooling = \"none\"\nnormalize = true\nmax_tokens = 128\ndimensions = 384\n",
        default_config_text(),
        repo().join("assets/models/paraphrase-l3/model.onnx").display(),
        repo().join("assets/models/minilm-uncased-tokenizer.json").display(),
    )
}

/// Each model's vectors for the whole quality set, the reranker's logits for its reference pairs,
/// and the int8 kernels the server logged.
struct Run {
    minilm: Vec<Vec<f64>>,
    paraphrase: Vec<Vec<f64>>,
    paraphrase_fp32: Vec<Vec<f64>>,
    rerank_logits: Vec<f64>,
    kernels: Vec<String>,
}

/// The reranker's logits (TEI's `raw_scores`) for every pair of tests/data/rerank-reference.json,
/// in order.
async fn rerank_logits(base: &str, queries: usize, pace: Pace) -> Vec<f64> {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/data/rerank-reference.json")).unwrap(),
    )
    .unwrap();
    let client = client_with_key(Some(ACME_KEY));
    let mut out = Vec::new();
    for q in reference["queries"].as_array().unwrap().iter().take(queries) {
        let texts: Vec<&Value> = q["documents"].as_array().unwrap().iter().map(|d| &d["document"]).collect();
        let body = serde_json::json!({ "model": "ms-marco-minilm-l12", "query": q["query"], "texts": texts, "raw_scores": true });
        let request = client.post(format!("{base}/rerank")).json(&body).timeout(pace.timeout);
        let reply: Value = request.send().await.unwrap().json().await.unwrap();
        let mut by_index: Vec<(u64, f64)> = reply
            .as_array()
            .unwrap_or_else(|| panic!("{reply}"))
            .iter()
            .map(|r| (r["index"].as_u64().unwrap(), r["score"].as_f64().unwrap()))
            .collect();
        by_index.sort_by_key(|r| r.0);
        out.extend(by_index.into_iter().map(|r| r.1));
    }
    out
}

/// The host's own run, on the whole quality set.
async fn run_host(qs: &QualitySet) -> Run {
    let server = SpawnedServer::start("cpu-kind-host", &config()).await;
    run(&server, qs, usize::MAX, Pace { chunk: 64, timeout: REQUEST_TIMEOUT }).await
}

/// `qs` embedded by each model on `server` at `pace`, the reranker's logits for the pairs of the
/// first `rerank_queries` queries,
/// and the int8 kernels the server logged.
async fn run(server: &SpawnedServer, qs: &QualitySet, rerank_queries: usize, pace: Pace) -> Run {
    let base = server.url("");
    let run = Run {
        minilm: embed_in_chunks(&base, "minilm-l6-int8", qs, pace).await,
        paraphrase: embed_in_chunks(&base, "paraphrase-l3", qs, pace).await,
        paraphrase_fp32: embed_in_chunks(&base, "paraphrase-l3-fp32", qs, pace).await,
        rerank_logits: rerank_logits(&base, rerank_queries, pace).await,
        kernels: server
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "int8 weights encoded for this CPU")
            .map(|v| v["int8_kernels"].as_str().unwrap().to_owned())
            .collect(),
    };
    assert_eq!(run.kernels.len(), 2, "one int8 line per int8 model used:\n{}", server.log_text());
    run
}

/// Whether this host multiplies int8 exactly on ONNX Runtime's fast kernels (u8 x s8 with VNNI,
/// AVX-VNNI or AMX).
pub fn host_has_fast_int8() -> bool {
    let flags = host_flags();
    let has = |f: &str| flags.iter().any(|g| g == f);
    has("avx512_vnni") && AVX512.iter().all(|f| has(f)) || has("avx_vnni") || has("amx_int8")
}

pub fn min_cosine(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter().zip(b).map(|(x, y)| cosine(x, y)).fold(f64::INFINITY, f64::min)
}

#[tokio::test]
async fn int8_models_agree_and_pass_the_gate_on_every_kind_of_cpu_this_host_can_pass_for() {
    let flags = host_flags();
    let has = |f: &str| flags.iter().any(|g| g == f);
    assert!(has("avx2"), "these tests need an x86-64 host with AVX2, this is {}", host_cpu());
    let dir = TempDir::new("cpu-kinds");
    let qs = quality_set();

    let host = run_host(&qs).await;
    let expected = if host_has_fast_int8() { "u8s8" } else { "u8u8" };
    assert!(host.kernels.iter().all(|k| k == expected), "host {}: {:?}", host_cpu(), host.kernels);

    let (mut kinds, mut not_here) = (Vec::new(), Vec::new());
    for kind in KINDS.iter().filter(|k| k.needs.iter().all(|f| has(f))) {
        match pass_for(kind.name, &dir) {
            Some(how) => kinds.push((kind, how)),
            None => not_here.push(kind.name),
        }
    }
    let names: Vec<String> =
        kinds.iter().map(|(k, how)| format!("{} ({})", k.name, how.describe())).collect();
    println!("host {}: passes for {names:?}", host_cpu());
    if !not_here.is_empty() {
        println!(
            "  not run here: {not_here:?} (no CPUID faulting on this host, and QEMU emulates no AVX-512)"
        );
    }
    assert!(kinds.iter().any(|(k, _)| !k.u8s8_exact), "every AVX2 host passes for a CPU without VNNI");
    for (kind, how) in kinds {
        let cpu = format!("{} as {}, {}", host_cpu(), kind.name, how.describe());
        // Under the emulator: every fixed text and 3 long texts of each length, 4 to a request,
        // and one query's 8 pairs for the reranker, each request allowed minutes (a first
        // request loads its model there, and other tests share the CPUs).
        let (sample, kept, rerank_queries, pace) = match how {
            PassFor::Masked { .. } => {
                let all = (0..qs.all().len()).collect::<Vec<_>>();
                (None, all, usize::MAX, Pace { chunk: 64, timeout: REQUEST_TIMEOUT })
            }
            PassFor::Emulated => {
                let (sample, kept) = qs.sample(3);
                (Some(sample), kept, 1, Pace { chunk: 4, timeout: EMULATED_REQUEST_TIMEOUT })
            }
        };
        let texts = sample.as_ref().unwrap_or(&qs);
        let name = format!("cpu-kind-{}", kind.name);
        let server = SpawnedServer::start_under(&name, &config(), &how.env(), how.wrapper()).await;
        let got = run(&server, texts, rerank_queries, pace).await;
        drop(server);
        let expected = if kind.u8s8_exact { "u8s8" } else { "u8u8" };
        assert!(got.kernels.iter().all(|k| k == expected), "{cpu}: int8 kernels {:?}", got.kernels);

        let on_host = |vectors: &[Vec<f64>]| kept.iter().map(|&i| vectors[i].clone()).collect::<Vec<_>>();
        let paraphrase_fp32_host = on_host(&host.paraphrase_fp32);
        Report::new(texts, &got.minilm, &texts.minilm_reference).assert_passes("minilm-l6-int8", &cpu);
        Report::new(texts, &got.paraphrase, &got.paraphrase_fp32).assert_passes("paraphrase-l3", &cpu);
        let agreement = [
            ("minilm-l6-int8", min_cosine(&got.minilm, &on_host(&host.minilm)), INT8_CROSS_CPU_MIN_COSINE),
            (
                "paraphrase-l3",
                min_cosine(&got.paraphrase, &on_host(&host.paraphrase)),
                INT8_CROSS_CPU_MIN_COSINE,
            ),
            (
                "paraphrase-l3-fp32",
                min_cosine(&got.paraphrase_fp32, &paraphrase_fp32_host),
                FP32_CROSS_CPU_MIN_COSINE,
            ),
        ];
        for (model, min, floor) in agreement {
            println!("  {model}: min cosine to the host's vectors {min:.7} over {} texts", kept.len());
            assert!(min >= floor, "{cpu}: {model}: min cosine to the host's vectors {min} < {floor}");
        }
        assert!(!got.rerank_logits.is_empty(), "{cpu}: no reranker logits");
        let worst =
            got.rerank_logits.iter().zip(&host.rerank_logits).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!(
            "  ms-marco-minilm-l12: largest logit difference to the host's {worst:.5} over {} pairs",
            got.rerank_logits.len()
        );
        assert!(worst <= RERANK_CROSS_CPU_LOGIT, "{cpu}: reranker logits {worst} from the host's");
    }
}
