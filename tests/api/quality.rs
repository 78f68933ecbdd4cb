//! The int8 quality gate: what the server answers for the default model against the fp32
//! sentence-transformers reference (tests/data/quality, scripts/make_quality_reference.py), and
//! `make quantize` refusing a model that fails the same gate.

use std::path::PathBuf;
use std::process::Command;

use embedserve::models::spec::InputRole;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::spawned::TempDir;

const MIN_COSINE: f64 = 0.99;
const MEAN_COSINE: f64 = 0.996;
const TOP1_AGREEMENT: f64 = 0.98;
const RECALL_POINTS: f64 = 1.0;

struct QualitySet {
    texts: Vec<String>,
    corpus: Vec<String>,
    queries: Vec<String>,
    answers: Vec<usize>,
    /// texts, corpus, queries in that order.
    reference: Vec<Vec<f64>>,
}

fn quality_set() -> QualitySet {
    let dir = repo().join("tests/data/quality");
    let set: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("set.json")).unwrap()).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
    };
    let queries = set["queries"].as_array().unwrap();
    let bytes = std::fs::read(dir.join("minilm-l6-fp32.f32")).unwrap();
    let floats: Vec<f64> =
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect();
    let qs = QualitySet {
        texts: strings(&set["texts"]),
        corpus: strings(&set["corpus"]),
        queries: queries.iter().map(|q| q["text"].as_str().unwrap().to_owned()).collect(),
        answers: queries.iter().map(|q| q["answer"].as_u64().unwrap() as usize).collect(),
        reference: floats.chunks_exact(384).map(<[f64]>::to_vec).collect(),
    };
    assert_eq!(qs.reference.len(), qs.texts.len() + qs.corpus.len() + qs.queries.len());
    assert!(qs.corpus.len() >= 500 && qs.queries.len() >= 100);
    qs
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

/// The gate's figures for `served` against `reference` (texts, corpus, queries in order).
struct Report {
    min: f64,
    mean: f64,
    min_all: f64,
    agreement: f64,
    recall: f64,
    recall_reference: f64,
}

impl Report {
    fn new(qs: &QualitySet, served: &[Vec<f64>], reference: &[Vec<f64>]) -> Report {
        assert_eq!(served.len(), reference.len());
        let cosines: Vec<f64> = served.iter().zip(reference).map(|(a, b)| cosine(a, b)).collect();
        let fixed = &cosines[..qs.texts.len()];
        let (a, b) = (qs.texts.len(), qs.texts.len() + qs.corpus.len());
        let reference_ranks = rankings(&reference[a..b], &reference[b..]);
        let served_ranks = rankings(&served[a..b], &served[b..]);
        let agreeing = reference_ranks.iter().zip(&served_ranks).filter(|(r, s)| r[0] == s[0]).count();
        Report {
            min: fixed.iter().copied().fold(f64::INFINITY, f64::min),
            mean: fixed.iter().sum::<f64>() / fixed.len() as f64,
            min_all: cosines.iter().copied().fold(f64::INFINITY, f64::min),
            agreement: agreeing as f64 / qs.queries.len() as f64,
            recall: recall_at_10(&served_ranks, &qs.answers),
            recall_reference: recall_at_10(&reference_ranks, &qs.answers),
        }
    }

    fn assert_passes(&self, model: &str) {
        println!(
            "{model}: fixed texts min cosine {:.4}, mean {:.4}; all texts min {:.4}; top-1 agreement {:.1}%; \
             recall@10 {:.1}% (fp32 {:.1}%)",
            self.min,
            self.mean,
            self.min_all,
            self.agreement * 100.0,
            self.recall * 100.0,
            self.recall_reference * 100.0
        );
        assert!(self.min >= MIN_COSINE, "{model}: min cosine {} < {MIN_COSINE}", self.min);
        assert!(self.mean >= MEAN_COSINE, "{model}: mean cosine {} < {MEAN_COSINE}", self.mean);
        assert!(
            self.agreement >= TOP1_AGREEMENT,
            "{model}: top-1 agreement {} < {TOP1_AGREEMENT}",
            self.agreement
        );
        assert!(
            (self.recall_reference - self.recall) * 100.0 <= RECALL_POINTS,
            "{model}: recall@10 {} vs fp32 {}",
            self.recall,
            self.recall_reference
        );
    }
}

/// Every text of the set embedded by `model` on `server`, in batches of 64 of mixed lengths
/// as clients send them (so the gate covers batched runs).
async fn embed_all(server: &TestServer, model: &str, qs: &QualitySet) -> Vec<Vec<f64>> {
    let all: Vec<&String> = qs.texts.iter().chain(&qs.corpus).chain(&qs.queries).collect();
    let mut served = Vec::new();
    for chunk in all.chunks(64) {
        served.extend(server.embed(model, json!(chunk)).await);
    }
    served
}

#[tokio::test]
async fn the_default_int8_model_passes_the_quality_gate_against_fp32_sentence_transformers() {
    let qs = quality_set();
    let served = embed_all(TestServer::shared(), "minilm-l6-int8", &qs).await;
    Report::new(&qs, &served, &qs.reference).assert_passes("minilm-l6-int8");
}

#[tokio::test]
async fn the_int8_paraphrase_model_passes_the_quality_gate_against_its_fp32_original() {
    // No sentence-transformers weights ship for paraphrase-MiniLM-L3 here: its reference is
    // the fp32 ONNX file it was quantized from, served by the same server.
    let mut settings = default_settings();
    let acme = settings.tenants.get_mut("acme").unwrap();
    let mut fp32 = acme.private_models["paraphrase-l3"].clone();
    assert!(fp32.onnx.ends_with("paraphrase-l3-int8/model.onnx"), "{}", fp32.onnx.display());
    fp32.onnx = repo().join("assets/models/paraphrase-l3/model.onnx");
    acme.private_models.insert("paraphrase-l3-fp32".into(), fp32);
    let server = TestServer::start(settings);
    let qs = quality_set();
    let reference = embed_all(&server, "paraphrase-l3-fp32", &qs).await;
    let served = embed_all(&server, "paraphrase-l3", &qs).await;
    Report::new(&qs, &served, &reference).assert_passes("paraphrase-l3");
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
    assert!(out.contains("FAIL: min cosine") && out.contains("not written"), "{out}");
    assert!(!bad.exists());
    // --force writes it, and the exit status still says it failed.
    let (code, out) = quantize(&bad, &["--recipe", "per-tensor", "--force"]);
    assert_eq!(code, 1, "{out}");
    assert!(bad.is_file(), "{out}");
}
