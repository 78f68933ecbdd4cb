//! A model of another family than MiniLM, from its export folder alone: an XLM-RoBERTa encoder
//! without token types, a SentencePiece-style Unigram tokenizer, CLS pooling, Normalize, and
//! query/document prompts (`tests/data/tiny-xlmr`, written with sentence-transformers' own vectors
//! by `scripts/make_tiny_xlmr.py`). embedserve must give the same token ids and vectors.

use embedserve::Settings;
use embedserve::models::spec::Pooling;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn an_xlm_roberta_folder_matches_sentence_transformers_with_its_prompts() {
    let folder = repo().join("tests/data/tiny-xlmr");
    let dir = std::env::temp_dir().join(format!("embedserve-tiny-xlmr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    let base = base.replace("\"../", &format!("\"{}/", repo().display()));
    let (head, tenants) = base.split_at(base.find("[tenants.").unwrap());
    let config = dir.join("config.toml");
    let model = format!("[models.tiny-xlmr]\npath = \"{}\"\n", folder.display());
    std::fs::write(&config, format!("{head}\n{model}\n{tenants}")).unwrap();
    let mut settings = Settings::load(&config).unwrap();
    let spec = &settings.models["tiny-xlmr"];
    assert_eq!(
        (spec.pooling, spec.normalize, spec.max_tokens, spec.dimensions),
        (Some(Pooling::Cls), Some(true), 128, 64)
    );
    assert_eq!(spec.prompts.len(), 2);
    settings.tenants.get_mut("acme").unwrap().models.push("tiny-xlmr".to_owned());
    let server = TestServer::start(settings);

    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/data/tiny-xlmr-reference.json")).unwrap(),
    )
    .unwrap();
    let texts = reference["texts"].clone();
    for prompt in ["none", "query", "document"] {
        let mut body = json!({ "model": "tiny-xlmr", "input": texts });
        if prompt != "none" {
            body["input_type"] = json!(prompt);
        }
        let (status, tokens) = server.post("/v1/tokenize", body.clone()).await;
        assert_eq!(status, 200, "{tokens}");
        for (i, want) in reference["ids"][prompt].as_array().unwrap().iter().enumerate() {
            assert_eq!(&tokens["data"][i]["ids"], want, "{prompt}: ids of text {i}");
        }
        let (status, out) = server.post("/v1/embed", body).await;
        assert_eq!(status, 200, "{out}");
        let got = vectors(&out["embeddings"]);
        let want = vectors(&reference["vectors"][prompt]);
        assert_eq!(got.len(), want.len());
        let worst = got.iter().zip(&want).map(|(g, w)| cosine(g, w)).fold(1.0, f64::min);
        println!(
            "tiny-xlmr, prompt {prompt}: {} texts, min cosine to sentence-transformers {worst:.7}",
            got.len()
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let c = cosine(g, w);
            assert!(c >= 0.999, "{prompt}: text {i}: cosine {c}");
            assert!(max_abs_diff(g, w) < 1e-3, "{prompt}: text {i}");
        }
    }
    // The prompts reach the model: other ids, other vectors (CLS pooling attends to them).
    assert_ne!(reference["ids"]["query"][0], reference["ids"]["none"][0]);
    let (q, n) = (vectors(&reference["vectors"]["query"]), vectors(&reference["vectors"]["none"]));
    assert!(max_abs_diff(&q[0], &n[0]) > 1e-3);
}
