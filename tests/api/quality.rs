//! The int8 quality gate: what the server answers for the int8 models against their fp32
//! references (tests/data/quality: the fp32 sentence-transformers vectors of MiniLM-L6 from
//! scripts/make_quality_reference.py; for paraphrase-L3, its fp32 ONNX file served alongside),
//! on the CPU at hand (named in the output), and `make quantize` refusing a model that fails the
//! same gate. tests/api/cpu_kinds.rs runs the same gate as other kinds of CPU compute it.

use std::path::PathBuf;
use std::process::Command;

use embedserve::models::spec::InputRole;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::spawned::TempDir;

/// The gate, as scripts/quantize.py applies it: each group's min and mean cosine, the
/// retrieval set's top-1 agreement and recall@10.
const MIN_COSINE: f64 = 0.99;
const MEAN_COSINE: f64 = 0.996;
const TOP1_AGREEMENT: f64 = 0.98;
const RECALL_POINTS: f64 = 1.0;
/// The long texts' length buckets in tokens (as scripts/quantize.py's LENGTH_BUCKETS).
const LENGTH_BUCKETS: [(&str, usize, usize); 4] =
    [("< 100", 0, 99), ("100-159", 100, 159), ("160-256", 160, 256), ("> 256", 257, usize::MAX)];

pub struct QualitySet {
    texts: Vec<String>,
    corpus: Vec<String>,
    queries: Vec<String>,
    answers: Vec<usize>,
    long: Vec<String>,
    long_tokens: Vec<usize>,
    /// MiniLM-L6's fp32 sentence-transformers vectors of `all()`, in order.
    pub minilm_reference: Vec<Vec<f64>>,
}

fn read_f32(path: &str) -> Vec<Vec<f64>> {
    let bytes = std::fs::read(repo().join(path)).unwrap();
    let floats: Vec<f64> =
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect();
    floats.chunks_exact(384).map(<[f64]>::to_vec).collect()
}

pub fn quality_set() -> QualitySet {
    let dir = repo().join("tests/data/quality");
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let (set, long) = (read("set.json"), read("long.json"));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
    };
    let queries = set["queries"].as_array().unwrap();
    let long = long["texts"].as_array().unwrap();
    let mut minilm_reference = read_f32("tests/data/quality/minilm-l6-fp32.f32");
    minilm_reference.extend(read_f32("tests/data/quality/long-minilm-l6-fp32.f32"));
    let qs = QualitySet {
        texts: strings(&set["texts"]),
        corpus: strings(&set["corpus"]),
        queries: queries.iter().map(|q| q["text"].as_str().unwrap().to_owned()).collect(),
        answers: queries.iter().map(|q| q["answer"].as_u64().unwrap() as usize).collect(),
        long: long.iter().map(|t| t["text"].as_str().unwrap().to_owned()).collect(),
        long_tokens: long.iter().map(|t| t["tokens"].as_u64().unwrap() as usize).collect(),
        minilm_reference,
    };
    assert_eq!(qs.minilm_reference.len(), qs.all().len());
    assert!(qs.corpus.len() >= 500 && qs.queries.len() >= 100 && qs.long.len() >= 100);
    for (name, lo, hi) in LENGTH_BUCKETS {
        let n = qs.long_tokens.iter().filter(|t| (lo..=hi).contains(*t)).count();
        assert!(n >= 10, "only {n} long texts of {name} tokens");
    }
    qs
}

impl QualitySet {
    /// A smaller set for a slow emulator: every fixed text, `per_bucket` long texts of each
    /// length bucket (the first of each), no retrieval set; with each kept text's place in
    /// `all()`, to compare with vectors of the whole set.
    pub fn sample(&self, per_bucket: usize) -> (QualitySet, Vec<usize>) {
        let long_from = self.texts.len() + self.corpus.len() + self.queries.len();
        let mut long = Vec::new();
        for (_, lo, hi) in LENGTH_BUCKETS {
            let bucket = self.long_tokens.iter().enumerate().filter(|(_, t)| (lo..=hi).contains(*t));
            long.extend(bucket.map(|(i, _)| i).take(per_bucket));
        }
        long.sort_unstable();
        let kept: Vec<usize> = (0..self.texts.len()).chain(long.iter().map(|i| long_from + i)).collect();
        let sample = QualitySet {
            texts: self.texts.clone(),
            corpus: Vec::new(),
            queries: Vec::new(),
            answers: Vec::new(),
            long: long.iter().map(|&i| self.long[i].clone()).collect(),
            long_tokens: long.iter().map(|&i| self.long_tokens[i]).collect(),
            minilm_reference: kept.iter().map(|&i| self.minilm_reference[i].clone()).collect(),
        };
        (sample, kept)
    }

    /// texts, corpus, queries, long texts: the order of the references.
    pub fn all(&self) -> Vec<&String> {
        self.texts.iter().chain(&self.corpus).chain(&self.queries).chain(&self.long).collect()
    }

    /// The gated groups of per-text cosines (all() order): the fixed texts, the retrieval
    /// set's sentences and queries, and the long texts by length.
    fn groups(&self, cosines: &[f64]) -> Vec<(String, Vec<f64>)> {
        let (a, b) = (self.texts.len(), self.texts.len() + self.corpus.len() + self.queries.len());
        let mut out = vec![
            ("fixed texts".to_owned(), cosines[..a].to_vec()),
            ("retrieval texts".to_owned(), cosines[a..b].to_vec()),
        ];
        for (name, lo, hi) in LENGTH_BUCKETS {
            let bucket = self.long_tokens.iter().zip(&cosines[b..]).filter(|(t, _)| (lo..=hi).contains(*t));
            out.push((format!("long {name} tokens"), bucket.map(|(_, c)| *c).collect()));
        }
        out
    }
}

/// Corpus indices nearest to each query, best first (the vectors are normalised).
fn rankings(corpus: &[Vec<f64>], queries: &[Vec<f64>]) -> Vec<Vec<usize>> {
    queries
        .iter()
        .map(|q| {
            let mut scored: Vec<(f64, usize)> =
                corpus.iter().enumerate().map(|(i, c)| (cosine(q, c), i)).collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            scored.into_iter().map(|(_, i)| i).collect()
        })
        .collect()
}

fn recall_at_10(ranks: &[Vec<usize>], answers: &[usize]) -> f64 {
    let hits = ranks.iter().zip(answers).filter(|(r, a)| r[..10].contains(a)).count();
    hits as f64 / answers.len() as f64
}

/// The gate's figures for `served` against `reference` (both in all() order).
pub struct Report {
    /// Each group's name, min, mean and size.
    groups: Vec<(String, f64, f64, usize)>,
    /// None for a sample without the retrieval set ([`QualitySet::sample`]).
    retrieval: Option<Retrieval>,
}

struct Retrieval {
    agreement: f64,
    recall: f64,
    recall_reference: f64,
}

impl Report {
    pub fn new(qs: &QualitySet, served: &[Vec<f64>], reference: &[Vec<f64>]) -> Report {
        assert_eq!(served.len(), reference.len());
        let cosines: Vec<f64> = served.iter().zip(reference).map(|(a, b)| cosine(a, b)).collect();
        let groups = qs
            .groups(&cosines)
            .into_iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(name, c)| {
                let min = c.iter().copied().fold(f64::INFINITY, f64::min);
                (name, min, c.iter().sum::<f64>() / c.len() as f64, c.len())
            })
            .collect();
        let (a, b, c) = (
            qs.texts.len(),
            qs.texts.len() + qs.corpus.len(),
            qs.texts.len() + qs.corpus.len() + qs.queries.len(),
        );
        let retrieval = (!qs.queries.is_empty()).then(|| {
            let reference_ranks = rankings(&reference[a..b], &reference[b..c]);
            let served_ranks = rankings(&served[a..b], &served[b..c]);
            let agreeing = reference_ranks.iter().zip(&served_ranks).filter(|(r, s)| r[0] == s[0]).count();
            Retrieval {
                agreement: agreeing as f64 / qs.queries.len() as f64,
                recall: recall_at_10(&served_ranks, &qs.answers),
                recall_reference: recall_at_10(&reference_ranks, &qs.answers),
            }
        });
        Report { groups, retrieval }
    }

    /// Prints every figure with the CPU it was computed on, then asserts each.
    pub fn assert_passes(&self, model: &str, cpu: &str) {
        println!("{model} on {cpu}:");
        for (name, min, mean, n) in &self.groups {
            println!("  {name} ({n}): min cosine {min:.4}, mean {mean:.4}");
        }
        match &self.retrieval {
            Some(r) => println!(
                "  top-1 agreement {:.1}%; recall@10 {:.1}% (fp32 {:.1}%)",
                r.agreement * 100.0,
                r.recall * 100.0,
                r.recall_reference * 100.0
            ),
            None => println!("  retrieval: not in this sample"),
        }
        for (name, min, mean, _) in &self.groups {
            assert!(*min >= MIN_COSINE, "{model} on {cpu}: {name}: min cosine {min} < {MIN_COSINE}");
            assert!(*mean >= MEAN_COSINE, "{model} on {cpu}: {name}: mean cosine {mean} < {MEAN_COSINE}");
        }
        if let Some(r) = &self.retrieval {
            assert!(
                r.agreement >= TOP1_AGREEMENT,
                "{model} on {cpu}: top-1 agreement {} < {TOP1_AGREEMENT}",
                r.agreement
            );
            assert!(
                (r.recall_reference - r.recall) * 100.0 <= RECALL_POINTS,
                "{model} on {cpu}: recall@10 {} vs fp32 {}",
                r.recall,
                r.recall_reference
            );
        }
    }
}

/// Every text of the set embedded by `model` on the server at `base`, in batches of 64 of mixed
/// lengths as clients send them (so the gate covers batched runs).
pub async fn embed_all(base: &str, model: &str, qs: &QualitySet) -> Vec<Vec<f64>> {
    embed_in_chunks(base, model, qs, Pace { chunk: 64, timeout: REQUEST_TIMEOUT }).await
}

/// How to send a set: `chunk` texts to a request, each allowed `timeout`.
#[derive(Clone, Copy)]
pub struct Pace {
    pub chunk: usize,
    pub timeout: std::time::Duration,
}

/// [`embed_all`] at `pace`.
pub async fn embed_in_chunks(base: &str, model: &str, qs: &QualitySet, pace: Pace) -> Vec<Vec<f64>> {
    let client = client_with_key(Some(ACME_KEY));
    let mut served = Vec::new();
    for chunk in qs.all().chunks(pace.chunk) {
        let body = json!({ "model": model, "input": chunk });
        let r =
            client.post(format!("{base}/v1/embed")).json(&body).timeout(pace.timeout).send().await.unwrap();
        let (status, body): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
        assert_eq!(status, 200, "{body}");
        served.extend(vectors(&body["embeddings"]));
    }
    served
}

/// The config of acme's paraphrase-L3 with its fp32 original beside it as `paraphrase-l3-fp32`:
/// no sentence-transformers weights ship for paraphrase-MiniLM-L3 here, so its reference is the
/// fp32 ONNX file it was quantized from, served by the same server.
pub fn settings_with_paraphrase_fp32() -> embedserve::Settings {
    let mut settings = default_settings();
    let acme = settings.tenants.get_mut("acme").unwrap();
    let mut fp32 = acme.private_models["paraphrase-l3"].clone();
    assert!(fp32.onnx.ends_with("paraphrase-l3-int8/model.onnx"), "{}", fp32.onnx.display());
    fp32.onnx = repo().join("assets/models/paraphrase-l3/model.onnx");
    acme.private_models.insert("paraphrase-l3-fp32".into(), fp32);
    settings
}

#[tokio::test]
async fn the_default_int8_model_passes_the_quality_gate_against_fp32_sentence_transformers() {
    let qs = quality_set();
    let server = TestServer::shared();
    let served = embed_all(&server.url(""), "minilm-l6-int8", &qs).await;
    Report::new(&qs, &served, &qs.minilm_reference).assert_passes("minilm-l6-int8", &host_cpu());
}

#[tokio::test]
async fn the_int8_paraphrase_model_passes_the_quality_gate_against_its_fp32_original() {
    let server = TestServer::start(settings_with_paraphrase_fp32());
    let qs = quality_set();
    let reference = embed_all(&server.url(""), "paraphrase-l3-fp32", &qs).await;
    let served = embed_all(&server.url(""), "paraphrase-l3", &qs).await;
    Report::new(&qs, &served, &reference).assert_passes("paraphrase-l3", &host_cpu());
}

/// The Python that runs scripts/quantize.py (make's models venv).
fn models_python() -> PathBuf {
    let p = std::env::var_os("EMBEDSERVE_MODELS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-models/bin/python"));
    assert!(p.exists(), "{} not found: run the tests with `make test`, which creates it", p.display());
    p
}

fn quantize(out: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let assets = repo().join("assets/models");
    let output = Command::new(models_python())
        .arg(repo().join("scripts/quantize.py"))
        .arg(assets.join("paraphrase-l3/model.onnx"))
        .arg(out)
        .arg("--tokenizer")
        .arg(assets.join("minilm-uncased-tokenizer.json"))
        .args(["--output-name", "461", "--pooling", "none", "--max-tokens", "128"])
        .args(extra)
        .output()
        .expect("scripts/quantize.py runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn make_quantize_writes_a_model_that_passes_and_refuses_one_that_fails_unless_forced() {
    let dir = TempDir::new("quantize");
    // A user's fp32 model (paraphrase-L3, pooled inside the graph) with the default recipe.
    let good = dir.0.join("good.onnx");
    let (code, out) = quantize(&good, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS") && good.is_file(), "{out}");
    // The written model serves, and close to its fp32 original.
    let mut settings = default_settings();
    let mut spec = settings.models["minilm-l6-int8"].clone();
    spec.onnx = good.clone();
    spec.inputs = Some(vec![InputRole::InputIds, InputRole::AttentionMask]);
    spec.output = "461".into();
    spec.pooling = Some(embedserve::models::spec::Pooling::None);
    spec.max_tokens = 128;
    settings.models.insert("mine-int8".into(), spec);
    settings.tenants.get_mut("acme").unwrap().models.push("mine-int8".into());
    let mut fp32 = settings.models["mine-int8"].clone();
    fp32.onnx = repo().join("assets/models/paraphrase-l3/model.onnx");
    settings.models.insert("mine-fp32".into(), fp32);
    settings.tenants.get_mut("acme").unwrap().models.push("mine-fp32".into());
    let server = TestServer::start(settings);
    let text = reference()["texts"]["sentence"].clone();
    let got = &server.embed("mine-int8", text.clone()).await[0];
    let fp32 = &server.embed("mine-fp32", text).await[0];
    assert!(cosine(got, fp32) >= MIN_COSINE, "cosine to fp32 {}", cosine(got, fp32));

    // Per-tensor activations (ONNX Runtime's plain dynamic quantization) fail the gate: refused.
    let bad = dir.0.join("bad.onnx");
    let (code, out) = quantize(&bad, &["--recipe", "per-tensor"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL: fixed texts: min cosine") && out.contains("not written"), "{out}");
    assert!(!bad.exists());
    // --force writes it, and the exit status still says it failed.
    let (code, out) = quantize(&bad, &["--recipe", "per-tensor", "--force"]);
    assert_eq!(code, 1, "{out}");
    assert!(bad.is_file(), "{out}");
}
