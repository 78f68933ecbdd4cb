//! How texts become tokens, as a request chooses: the model's prompts (`input_type`,
//! `prompt_name`), truncation (`truncate`, `truncation_direction`), and `/v1/tokenize` showing
//! exactly what the model sees, checked against the Hugging Face `tokenizers` library itself.

use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::helpers::*;

const MODEL: &str = "minilm-l6-int8";
const LIMIT: usize = 256;

/// The default configuration, with E5-style prompts on the default model and a second model
/// (the same files) whose default prompt is `query`.
fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut settings = default_settings();
        let spec = settings.models.get_mut(MODEL).unwrap();
        spec.prompts = [("query", "query: "), ("document", "passage: ")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut with_default = spec.clone();
        with_default.default_prompt = Some("query".to_owned());
        settings.models.insert("queries".to_owned(), with_default);
        settings.tenants.get_mut("acme").unwrap().models.push("queries".to_owned());
        TestServer::start(settings)
    })
}

/// A text far over the limit whose words are numbered, so which end was kept shows.
fn long_text() -> String {
    (0..600).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")
}

/// What the `tokenizers` library (Python) makes of `texts` with the model's tokenizer file,
/// truncated to `max_length` from `direction`, with or without special tokens.
fn reference_ids(
    texts: &[String],
    max_length: Option<usize>,
    direction: &str,
    special: bool,
) -> Vec<Vec<u64>> {
    let script = r#"
import json, sys
from tokenizers import Tokenizer
args = json.loads(sys.stdin.read())
tok = Tokenizer.from_file(args["tokenizer"])
tok.no_padding()
tok.no_truncation()
if args["max_length"]:
    tok.enable_truncation(args["max_length"], direction=args["direction"])
print(json.dumps([tok.encode(t, add_special_tokens=args["special"]).ids for t in args["texts"]]))
"#;
    let tokenizer = repo().join("assets/models/minilm-uncased-tokenizer.json");
    let args = json!({
        "tokenizer": tokenizer, "texts": texts, "max_length": max_length,
        "direction": direction, "special": special,
    });
    let mut child = std::process::Command::new(python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(args.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python tokenizers failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ids(body: &Value, i: usize) -> Vec<u64> {
    body["data"][i]["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

async fn tokenize(body: Value) -> Value {
    let (status, body) = server().post("/v1/tokenize", body).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn tokenize_gives_the_tokenizer_s_own_ids_truncated_from_either_end() {
    let texts: Vec<String> = vec![
        "Hello, World!".into(),
        "Ünïcödé façade — naïve café 東京 😀".into(),
        long_text(),
        format!("{} {}", "word ".repeat(2000), "end"),
    ];
    for direction in ["right", "left"] {
        let body =
            tokenize(json!({ "model": MODEL, "input": texts, "truncation_direction": direction })).await;
        assert_eq!(body["max_tokens"], LIMIT);
        let want = reference_ids(&texts, Some(LIMIT), direction, true);
        for (i, want) in want.iter().enumerate() {
            assert_eq!(&ids(&body, i), want, "{direction}: input {i}");
            let d = &body["data"][i];
            assert_eq!(d["count"], want.len());
            assert_eq!(d["tokens"].as_array().unwrap().len(), want.len());
            assert_eq!(d["truncated"], want.len() == LIMIT, "{direction}: input {i}");
            let special = d["special"].as_array().unwrap();
            assert_eq!((special[0].as_bool(), special[want.len() - 1].as_bool()), (Some(true), Some(true)));
            assert!(special[1..want.len() - 1].iter().all(|s| s == false));
        }
        // The long text's kept words show the direction: w0 first on the right, w599 last on
        // the left (numbers are word pieces: w ##59 ##9).
        let tokens = body["data"][2]["tokens"].to_string();
        assert_eq!(
            tokens.starts_with(r###"["[CLS]","w","##0","w","##1","###),
            direction == "right",
            "{tokens}"
        );
        assert_eq!(tokens.ends_with(r###""w","##59","##9","[SEP]"]"###), direction == "left", "{tokens}");
    }
}

#[tokio::test]
async fn prompts_are_put_before_the_text_counted_and_kept_when_truncating() {
    let text = "how much protein should a female eat".to_owned();
    let plain = server().embed(MODEL, json!(format!("query: {text}"))).await;
    for (field, name) in [("input_type", "query"), ("prompt_name", "query"), ("input_type", "search_query")] {
        let (status, body) =
            server().post("/v1/embed", json!({ "model": MODEL, "input": text, field: name })).await;
        assert_eq!(status, 200, "{body}");
        // Exactly the vector of the prompt and text sent as one input.
        assert_eq!(vectors(&body["embeddings"])[0], plain[0], "{field}={name}");
        let want = reference_ids(&[format!("query: {text}")], None, "right", true)[0].len();
        assert_eq!(body["usage"]["prompt_tokens"], want, "usage counts the prompt's tokens");
    }
    // The OpenAI route takes the same fields.
    let (status, body) = server()
        .post("/v1/embeddings", json!({ "model": MODEL, "input": text, "input_type": "query" }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(vectors(&json!([body["data"][0]["embedding"]]))[0], plain[0]);
    // A model whose default prompt is `query` applies it unasked; "document" overrides it.
    assert_eq!(server().embed("queries", json!(text)).await[0], plain[0]);
    let passage = server().embed(MODEL, json!(format!("passage: {text}"))).await;
    let (_, body) = server()
        .post("/v1/embed", json!({ "model": "queries", "input": text, "input_type": "document" }))
        .await;
    assert_eq!(vectors(&body["embeddings"])[0], passage[0]);

    // Truncated from either end, the prompt stays: [CLS] query : ... [SEP].
    let prompt_ids = reference_ids(&["query: ".into()], None, "right", false)[0].clone();
    let text_ids = reference_ids(&[long_text()], None, "right", false)[0].clone();
    for direction in ["right", "left"] {
        let body = tokenize(json!({
            "model": MODEL, "input": long_text(), "input_type": "query", "truncation_direction": direction,
        }))
        .await;
        let got = ids(&body, 0);
        assert_eq!(got.len(), LIMIT);
        assert_eq!(got[1..1 + prompt_ids.len()], prompt_ids[..], "{direction}");
        let room = LIMIT - 2 - prompt_ids.len();
        let kept = if direction == "right" { &text_ids[..room] } else { &text_ids[text_ids.len() - room..] };
        assert_eq!(got[1 + prompt_ids.len()..LIMIT - 1], kept[..], "{direction}");
        assert_eq!(body["data"][0]["truncated"], true);
    }
}

#[tokio::test]
async fn unknown_or_conflicting_prompt_names_are_422_listing_the_valid_ones() {
    for (route, body) in [
        ("/v1/embed", json!({ "model": MODEL, "input": "x", "input_type": "classification" })),
        ("/v1/embeddings", json!({ "model": MODEL, "input": "x", "prompt_name": "nope" })),
        ("/v1/tokenize", json!({ "model": MODEL, "input": "x", "input_type": "nope" })),
    ] {
        let (status, body) = server().post(route, body).await;
        assert_eq!(status, 422, "{route}: {body}");
        let message = assert_error_shape(&body);
        assert!(message.contains("valid: document, query"), "{route}: {message}");
    }
    let (status, body) = server()
        .post(
            "/v1/embed",
            json!({ "model": MODEL, "input": "x", "input_type": "query", "prompt_name": "document" }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["param"], "prompt_name");
    // A model without prompts embeds the usual input types alike, and refuses other names.
    let shared = TestServer::shared();
    let plain = shared.embed(MODEL, json!("x y")).await;
    let (status, body) = shared
        .post("/v1/embed", json!({ "model": MODEL, "input": "x y", "input_type": "search_document" }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(vectors(&body["embeddings"])[0], plain[0]);
    let (status, body) =
        shared.post("/v1/embed", json!({ "model": MODEL, "input": "x", "input_type": "nope" })).await;
    assert_eq!(status, 422, "{body}");
    assert!(assert_error_shape(&body).contains("has none"), "{body}");
}

#[tokio::test]
async fn truncate_false_refuses_an_over_long_input_with_413_naming_it() {
    let short = "a short sentence".to_owned();
    let over = long_text();
    let exact = reference_ids(std::slice::from_ref(&over), None, "right", true)[0].len();
    for route in ["/v1/embed", "/v1/embeddings", "/v1/tokenize"] {
        let (status, body) =
            server().post(route, json!({ "model": MODEL, "input": [short, over], "truncate": false })).await;
        assert_eq!(status, 413, "{route}: {body}");
        assert_eq!(body["error"]["code"], "input_too_long");
        assert_eq!(body["error"]["param"], "input");
        let message = assert_error_shape(&body);
        assert!(message.contains(&format!("input[1] has {exact} tokens")), "{route}: {message}");
        assert!(message.contains(&format!("limit of {LIMIT}")), "{route}: {message}");
    }
    // Voyage's name for it; a short input is served as with truncation.
    let (status, body) =
        server().post("/v1/embed", json!({ "model": MODEL, "input": short, "truncation": false })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(vectors(&body["embeddings"])[0], server().embed(MODEL, json!(short)).await[0]);
    // Megabytes of text: refused without tokenizing them all.
    let huge = "word ".repeat(300_000);
    let (status, body) =
        server().post("/v1/embed", json!({ "model": MODEL, "input": huge, "truncate": false })).await;
    assert_eq!(status, 413, "{body}");
    assert!(assert_error_shape(&body).contains("input[0] is longer than"), "{body}");
    // A direction that is not one is refused in the error shape.
    let bad = server()
        .post("/v1/embed", json!({ "model": MODEL, "input": short, "truncation_direction": "middle" }))
        .await;
    assert_eq!(bad.0, 422, "{}", bad.1);
}
