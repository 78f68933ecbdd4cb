//! Models from sentence-transformers export folders: the two default models, rearranged as
//! folders by `make assets`, load from `path` alone and give the vectors their hand-written
//! configurations give; what was derived, and from which file, is what `check-config` prints;
//! a folder embedserve cannot serve as it stands is refused at start, naming the file.

use std::path::{Path, PathBuf};

use embedserve::Settings;
use embedserve::models::spec::Pooling;
use serde_json::{Value, json};

use crate::helpers::*;

/// `config/default.toml` with absolute paths, plus `extra`, written to a fresh folder.
fn config_with(name: &str, extra: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("embedserve-folders-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    let base = base.replace("\"../", &format!("\"{}/", repo().display()));
    let path = dir.join("config.toml");
    // New catalogue entries go before the tenants (TOML tables cannot be reopened after them).
    let (head, tenants) = base.split_at(base.find("[tenants.").unwrap());
    std::fs::write(&path, format!("{head}\n{extra}\n{tenants}")).unwrap();
    path
}

fn folders_config() -> PathBuf {
    let assets = repo().join("assets/models");
    config_with(
        "defaults",
        &format!(
            "[models.minilm-folder]\npath = \"{}\"\ngraph_optimization = \"none\"\n\n\
             [models.paraphrase-folder]\npath = \"{}\"\ngraph_optimization = \"none\"\n",
            assets.join("minilm-l6-int8-st").display(),
            assets.join("paraphrase-l3-int8-st").display()
        ),
    )
}

#[tokio::test]
async fn the_default_models_as_export_folders_load_from_path_alone_with_the_same_vectors() {
    let mut settings = Settings::load(&folders_config()).unwrap();
    let minilm = &settings.models["minilm-folder"];
    assert_eq!(
        (minilm.pooling, minilm.normalize, minilm.max_tokens, minilm.dimensions, minilm.lowercase),
        (Some(Pooling::Mean), Some(true), 256, 384, Some(false))
    );
    assert!(minilm.tokenizer_config.as_ref().unwrap().ends_with("tokenizer_config.json"));
    assert!(minilm.output.is_empty() && minilm.inputs.is_none(), "matched against the graph at load");
    let paraphrase = &settings.models["paraphrase-folder"];
    assert_eq!(
        (paraphrase.pooling, paraphrase.normalize, paraphrase.max_tokens),
        (Some(Pooling::Mean), Some(false), 128),
        "no Normalize module: not normalised, as sentence-transformers"
    );
    let acme = settings.tenants.get_mut("acme").unwrap();
    acme.models.extend(["minilm-folder".to_owned(), "paraphrase-folder".to_owned()]);
    let server = TestServer::start(settings);

    let reference = reference();
    let mut texts: Vec<Value> = reference["texts"].as_object().unwrap().values().cloned().collect();
    texts.push(json!("word ".repeat(400)));
    for (folder, configured) in [("minilm-folder", "minilm-l6-int8"), ("paraphrase-folder", "paraphrase-l3")]
    {
        let (got, got_tokens) = embed_normalized(&server, folder, &texts).await;
        let (want, want_tokens) = embed_normalized(&server, configured, &texts).await;
        assert_eq!(got_tokens, want_tokens, "{folder}");
        for (g, w) in got.iter().zip(&want) {
            assert!(max_abs_diff(g, w) < 1e-6, "{folder} vs {configured}: {}", max_abs_diff(g, w));
        }
    }
    // Without `normalize` in the request, each follows its folder: MiniLM-L6 normalised,
    // paraphrase-L3 not.
    let minilm = server.embed("minilm-folder", json!("A dog ran.")).await.remove(0);
    let paraphrase = server.embed("paraphrase-folder", json!("A dog ran.")).await.remove(0);
    assert!((norm(&minilm) - 1.0).abs() < 1e-5);
    assert!((norm(&paraphrase) - 1.0).abs() > 0.01);
}

async fn embed_normalized(server: &TestServer, model: &str, texts: &[Value]) -> (Vec<Vec<f64>>, Value) {
    let (status, body) =
        server.post("/v1/embed", json!({ "model": model, "input": texts, "normalize": true })).await;
    assert_eq!(status, 200, "{model}: {body}");
    (vectors(&body["embeddings"]), body["usage"]["prompt_tokens"].clone())
}

#[test]
fn check_config_prints_what_each_folder_gave_and_from_which_file() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_embedserve"))
        .args(["check-config", "--config"])
        .arg(folders_config())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    for line in [
        "models.minilm-folder.onnx = onnx/model.onnx (from the folder)",
        "models.minilm-folder.pooling = mean (from 1_Pooling/config.json)",
        "models.minilm-folder.normalize = true (from modules.json)",
        "models.minilm-folder.max_tokens = 256 (from sentence_bert_config.json)",
        "models.minilm-folder.dimensions = 384 (from 1_Pooling/config.json)",
        "models.paraphrase-folder.normalize = false (from modules.json)",
        "models.paraphrase-folder.max_tokens = 128 (from sentence_bert_config.json)",
    ] {
        assert!(stdout.lines().any(|l| l == line), "missing {line:?} in\n{stdout}");
    }
}

/// A copy of the MiniLM-L6 folder (the ONNX file linked), changed by `edit`.
fn folder_copy(name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let from = repo().join("assets/models/minilm-l6-int8-st");
    let dir = std::env::temp_dir().join(format!("embedserve-folder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for file in [
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
    ] {
        std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
        std::fs::copy(from.join(file), dir.join(file)).unwrap();
    }
    std::fs::create_dir_all(dir.join("onnx")).unwrap();
    std::fs::hard_link(from.join("onnx/model.onnx"), dir.join("onnx/model.onnx"))
        .or_else(|_| std::fs::copy(from.join("onnx/model.onnx"), dir.join("onnx/model.onnx")).map(drop))
        .unwrap();
    edit(&dir);
    dir
}

fn load_error(name: &str, folder: &Path, extra: &str) -> String {
    let config = config_with(name, &format!("[models.custom]\npath = \"{}\"\n{extra}", folder.display()));
    format!("{:#}", Settings::load(&config).unwrap_err())
}

#[test]
fn what_a_folder_cannot_give_is_refused_at_start_naming_the_file() {
    let dense = folder_copy("dense", |dir| {
        let modules = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#;
        std::fs::write(dir.join("modules.json"), modules).unwrap();
    });
    let e = load_error("dense", &dense, "");
    assert!(e.contains("models.custom.path: modules.json has a Dense module"), "{e}");

    let sqrt = folder_copy("sqrt", |dir| {
        let pooling = r#"{"word_embedding_dimension": 384, "pooling_mode_mean_sqrt_len_tokens": true}"#;
        std::fs::write(dir.join("1_Pooling/config.json"), pooling).unwrap();
    });
    let e = load_error("sqrt", &sqrt, "");
    assert!(e.contains("models.custom.pooling: 1_Pooling/config.json asks for"), "{e}");
    // A key in the configuration wins over the folder.
    let config = config_with(
        "sqrt-override",
        &format!("[models.custom]\npath = \"{}\"\npooling = \"cls\"\n", sqrt.display()),
    );
    assert_eq!(Settings::load(&config).unwrap().models["custom"].pooling, Some(Pooling::Cls));

    let no_tokenizer =
        folder_copy("no-tokenizer", |dir| std::fs::remove_file(dir.join("tokenizer.json")).unwrap());
    let e = load_error("no-tokenizer", &no_tokenizer, "");
    assert!(e.contains("has no tokenizer.json"), "{e}");
    let e = load_error("no-file", &no_tokenizer, "file = \"onnx/model_quantized.onnx\"\ntokenizer = \"/x\"");
    assert!(e.contains("models.custom.file:") && e.contains("onnx/model_quantized.onnx"), "{e}");
    let broken = folder_copy("broken", |dir| std::fs::write(dir.join("modules.json"), "[{").unwrap());
    let e = load_error("broken", &broken, "");
    assert!(e.contains("modules.json") && e.contains("EOF"), "{e}");
}

#[tokio::test]
async fn prompts_and_max_pooling_come_from_the_folder_too() {
    let folder = folder_copy("prompts", |dir| {
        let st =
            r#"{"prompts": {"query": "query: ", "document": "passage: "}, "default_prompt_name": "query"}"#;
        std::fs::write(dir.join("config_sentence_transformers.json"), st).unwrap();
        let pooling = r#"{"word_embedding_dimension": 384, "pooling_mode_max_tokens": true}"#;
        std::fs::write(dir.join("1_Pooling/config.json"), pooling).unwrap();
    });
    let config = config_with("prompts", &format!("[models.custom]\npath = \"{}\"\n", folder.display()));
    let mut settings = Settings::load(&config).unwrap();
    let spec = &settings.models["custom"];
    assert_eq!(spec.default_prompt.as_deref(), Some("query"));
    assert_eq!(spec.prompts["document"], "passage: ");
    assert_eq!(spec.pooling, Some(Pooling::Max));
    settings.tenants.get_mut("acme").unwrap().models.push("custom".to_owned());
    let server = TestServer::start(settings);
    let (status, body) = server.post("/v1/tokenize", json!({ "model": "custom", "input": "x" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["tokens"], json!(["[CLS]", "query", ":", "x", "[SEP]"]), "the default prompt");
    let (_, body) = server
        .post("/v1/tokenize", json!({ "model": "custom", "input": "x", "input_type": "document" }))
        .await;
    assert_eq!(body["data"][0]["tokens"], json!(["[CLS]", "passage", ":", "x", "[SEP]"]));
    // Max pooling: each dimension's largest value over the tokens, so never below the mean of
    // the same tokens (the default model pools them by mean).
    let (status, body) = server
        .post(
            "/v1/embed",
            json!({ "model": "custom", "input": "a dog ran", "input_type": "document", "normalize": false }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let max = vectors(&body["embeddings"]).remove(0);
    let (_, body) = server
        .post(
            "/v1/embed",
            json!({ "model": "minilm-l6-int8", "input": "passage: a dog ran", "normalize": false }),
        )
        .await;
    let mean = vectors(&body["embeddings"]).remove(0);
    assert!(max.iter().zip(&mean).all(|(m, a)| *m >= a - 1e-5), "max pooling is at least the mean");
    assert!(max.iter().zip(&mean).filter(|(m, a)| *m > &(*a + 1e-3)).count() > 300, "and mostly above it");
}

#[tokio::test]
async fn tokenizer_config_and_do_lower_case_change_ids_as_sentence_transformers_does() {
    // transformers rebuilds a BERT normaliser that disagrees with tokenizer_config.json.
    let cased = folder_copy("cased", |dir| {
        let config =
            r#"{"do_lower_case": false, "tokenizer_class": "BertTokenizer", "model_max_length": 512}"#;
        std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
    });
    // sentence-transformers lowercases the text itself when its config says do_lower_case.
    let lowered = folder_copy("lowered", |dir| {
        let config =
            r#"{"do_lower_case": false, "tokenizer_class": "BertTokenizer", "model_max_length": 512}"#;
        std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
        std::fs::write(
            dir.join("sentence_bert_config.json"),
            r#"{"max_seq_length": 256, "do_lower_case": true}"#,
        )
        .unwrap();
    });
    let extra = format!(
        "[models.cased]\npath = \"{}\"\n\n[models.lowered]\npath = \"{}\"\n",
        cased.display(),
        lowered.display()
    );
    let mut settings = Settings::load(&config_with("cased", &extra)).unwrap();
    settings.tenants.get_mut("acme").unwrap().models.extend(["cased".to_owned(), "lowered".to_owned()]);
    let server = TestServer::start(settings);
    let text = "Hello World from Paris";

    // What the tokenizers library gives with the normaliser's lowercase off, and on.
    let json = std::fs::read_to_string(repo().join("assets/models/minilm-uncased-tokenizer.json")).unwrap();
    let mut value: Value = serde_json::from_str(&json).unwrap();
    let expected = |value: &Value| {
        let mut tokenizer: tokenizers::Tokenizer = serde_json::from_value(value.clone()).unwrap();
        tokenizer.with_padding(None);
        let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        json!(ids)
    };
    let uncased_ids = expected(&value);
    value["normalizer"]["lowercase"] = json!(false);
    let cased_ids = expected(&value);
    assert_ne!(cased_ids, uncased_ids, "an uncased vocabulary does not know capitalised words");

    for (model, want) in [("cased", &cased_ids), ("lowered", &uncased_ids), ("minilm-l6-int8", &uncased_ids)]
    {
        let (status, body) = server.post("/v1/tokenize", json!({ "model": model, "input": text })).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(&body["data"][0]["ids"], want, "{model}");
    }
}
