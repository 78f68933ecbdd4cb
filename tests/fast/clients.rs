//! The routes other ecosystems' clients call, on the fake backend: token-id input on OpenAI's
//! route, Cohere's `/v2/embed`, and Text Embeddings Inference's `/embed`, `/`, `/info`,
//! `/tokenize` and `/decode`: their shapes, that they give `/v1/embed`'s vectors, and their
//! refusals. The real clients against the real models are in tests/api/clients.rs.

use crate::helpers::*;
use serde_json::{Value, json};

/// "Hello, world!" in tiktoken's cl100k_base.
const HELLO_CL100K: [u32; 4] = [9906, 11, 1917, 0];

fn floats(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

#[tokio::test]
async fn token_ids_embed_as_the_text_they_encode() {
    let app = FastApp::default().await;
    let text = app.embed(json!({ "input": ["Hello, world!", "Hello"] })).await;
    for input in [json!([HELLO_CL100K, [9906]]), json!(HELLO_CL100K)] {
        let r = app.post("/v1/embeddings", Some(ACME_KEY), json!({ "input": input })).await;
        assert_eq!(r.status, 200, "{}", r.body);
        for (i, item) in r.body["data"].as_array().unwrap().iter().enumerate() {
            let v: Vec<f64> =
                item["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(v, text[i], "input {i}");
        }
        // Usage counts the model's tokens, not tiktoken's: the fake's are characters, framed.
        let expected = if input[0].is_array() { 14 + 7 } else { 14 };
        assert_eq!(r.body["usage"]["total_tokens"], expected);
    }
}

#[tokio::test]
async fn bad_token_ids_are_refused_naming_the_input() {
    let app = FastApp::default().await;
    let cases = [
        (json!([9906, 4_000_000]), "input[0][1] is 4000000, which is not a token id of cl100k_base"),
        (
            json!([[9906], [1, -1]]),
            "input[1][1] must be a token id (an integer from 0 to 4294967295), got -1",
        ),
        (json!([[9906], []]), "input[1] is empty"),
        (json!([[9906], "text"]), "input[1] must be an array of token ids like input[0], got a string"),
        (json!([220]), "input[0] decodes to an empty text"),
    ];
    for (input, message) in cases {
        let r = app.post("/v1/embeddings", Some(ACME_KEY), json!({ "input": input })).await;
        assert_eq!(r.status, 422, "{input}: {}", r.body);
        assert_eq!(r.body["error"]["message"], message);
        assert_eq!(r.body["error"]["param"], "input");
    }
    // The native route takes text only.
    let r = app.post("/v1/embed", Some(ACME_KEY), json!({ "input": [9906] })).await;
    assert_eq!(r.status, 422, "{}", r.body);
}

#[tokio::test]
async fn a_model_s_token_ids_encoding_is_configured_and_checked() {
    let mut settings = default_settings();
    let spec = settings.models.get_mut("minilm-l6-int8").unwrap();
    spec.token_ids_encoding = embedserve::models::spec::TokenIdsEncoding::None;
    let app = FastApp::start(settings, crate::fake::FakeLoader::new()).await;
    let r = app.post("/v1/embeddings", Some(ACME_KEY), json!({ "input": [9906] })).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("token-id input is off"), "{}", r.body);
    // An encoding the server does not know is a configuration error.
    let toml = std::fs::read_to_string(repo().join("config/default.toml")).unwrap().replacen(
        "[models.minilm-l6-int8]\n",
        "[models.minilm-l6-int8]\ntoken_ids_encoding = \"gpt9_base\"\n",
        1,
    );
    let path = repo().join("config").join(format!("token-ids-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let error = format!("{:#}", embedserve::Settings::load(&path).map(|_| ()).unwrap_err());
    std::fs::remove_file(&path).unwrap();
    assert!(error.contains("gpt9_base") && error.contains("cl100k_base"), "{error}");
}

#[tokio::test]
async fn cohere_v2_embed_answers_cohere_s_shape_with_the_native_vectors() {
    let app = FastApp::default().await;
    let texts = ["The cat sat.", "A dog ran."];
    let native = app.embed(json!({ "input": texts })).await;
    let r = app
        .post(
            "/v2/embed",
            Some(ACME_KEY),
            json!({ "model": "minilm-l6-int8", "texts": texts, "input_type": "search_document",
                    "embedding_types": ["float", "int8", "base64"] }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(floats(&r.body["embeddings"]["float"]), native);
    assert_eq!(r.body["embeddings"]["int8"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["embeddings"]["base64"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["texts"], json!(texts));
    assert_eq!(r.body["response_type"], "embeddings_by_type");
    assert_eq!(r.body["meta"]["api_version"]["version"], "2");
    assert!(r.body["meta"]["billed_units"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(!r.body["id"].as_str().unwrap().is_empty());

    // output_dimension shortens; the default type is float.
    let r = app.post("/v2/embed", Some(ACME_KEY), json!({ "texts": ["x"], "output_dimension": 8 })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["embeddings"]["float"][0].as_array().unwrap().len(), 8);

    // truncate: "NONE" refuses an input over max_tokens; "END" cuts it.
    let long = json!({ "texts": ["abcdefghij"], "max_tokens": 4, "truncate": "NONE" });
    assert_eq!(app.post("/v2/embed", Some(ACME_KEY), long).await.status, 413);
    let cut =
        app.post("/v2/embed", Some(ACME_KEY), json!({ "texts": ["abcdefghij"], "max_tokens": 4 })).await;
    assert_eq!(cut.body["meta"]["billed_units"]["input_tokens"], 4, "{}", cut.body);
}

#[tokio::test]
async fn cohere_forms_this_server_does_not_serve_get_clear_errors() {
    let app = FastApp::default().await;
    let cases = [
        (json!({ "texts": ["x"], "images": ["data:image/png;base64,AAAA"] }), "images"),
        (json!({ "inputs": [{ "content": [{ "type": "text", "text": "x" }] }] }), "inputs"),
        (json!({ "texts": ["x"], "input_type": "image" }), "input_type"),
        (json!({ "input_type": "search_query" }), "texts"),
        (json!({ "texts": ["x"], "max_tokens": 0 }), "max_tokens"),
    ];
    for (body, param) in cases {
        let r = app.post("/v2/embed", Some(ACME_KEY), body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["param"], param, "{body}: {}", r.body);
    }
    for body in [
        json!({ "texts": ["x"], "truncate": "MIDDLE" }),
        json!({ "texts": ["x"], "embedding_types": ["float16"] }),
    ] {
        let r = app.post("/v2/embed", Some(ACME_KEY), body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert!(r.body["error"]["message"].is_string(), "{}", r.body);
    }
}

#[tokio::test]
async fn tei_embed_and_its_root_route_give_the_native_vectors() {
    let app = FastApp::default().await;
    let native = app.embed(json!({ "input": ["The cat sat.", "A dog ran."] })).await;
    for path in ["/embed", "/"] {
        let r = app.post(path, Some(ACME_KEY), json!({ "inputs": ["The cat sat.", "A dog ran."] })).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(floats(&r.body), native, "{path}");
    }
    let r = app.post("/embed", Some(ACME_KEY), json!({ "inputs": "The cat sat.", "dimensions": 4 })).await;
    assert_eq!(floats(&r.body)[0].len(), 4);
    assert_eq!(app.post("/embed", None, json!({ "inputs": "x" })).await.status, 401);
    let r = app.post("/embed", Some(ACME_KEY), json!({ "inputs": "x", "model": "splade-tiny" })).await;
    assert_eq!(r.status, 422, "a sparse model is served by /embed_sparse: {}", r.body);
}

#[tokio::test]
async fn tei_info_describes_the_tenant_s_default_model() {
    let app = FastApp::default().await;
    let r = app.get("/info", Some(ACME_KEY)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["model_id"], "minilm-l6-int8");
    assert_eq!(r.body["max_input_length"], 256);
    assert_eq!(r.body["model_type"]["embedding"]["pooling"], "mean");
    assert_eq!(r.body["max_client_batch_size"], 256);
    assert_eq!(r.body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(app.get("/info", None).await.status, 401);
}

#[tokio::test]
async fn tei_tokenize_and_decode_round_trip() {
    let app = FastApp::default().await;
    let r = app.post("/tokenize", Some(ACME_KEY), json!({ "inputs": ["ab c", "d"] })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = r.body[0].as_array().unwrap();
    let texts: Vec<&str> = first.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["[CLS]", "a", "b", "c", "[SEP]"]);
    assert_eq!(first[0]["special"], true);
    assert_eq!(first[0]["start"], Value::Null);
    assert_eq!((first[3]["start"].as_u64(), first[3]["stop"].as_u64()), (Some(3), Some(4)));
    let native = app.post("/v1/tokenize", Some(ACME_KEY), json!({ "input": ["ab c", "d"] })).await;
    let ids: Vec<u64> = first.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(json!(ids), native.body["data"][0]["ids"]);
    let without =
        app.post("/tokenize", Some(ACME_KEY), json!({ "inputs": "ab", "add_special_tokens": false })).await;
    assert_eq!(without.body[0].as_array().unwrap().len(), 2);

    let r = app.post("/decode", Some(ACME_KEY), json!({ "ids": ids[1..4] })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body[0].as_str().unwrap().replace(' ', ""), "abc");
    let r = app
        .post("/decode", Some(ACME_KEY), json!({ "ids": [ids.clone(), ids], "skip_special_tokens": false }))
        .await;
    assert!(r.body[1].as_str().unwrap().contains("[CLS]"), "{}", r.body);
    let r = app.post("/decode", Some(ACME_KEY), json!({ "ids": [5, 1_000_000] })).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("ids[0][1] is 1000000, outside the model's vocabulary")
    );
    let r = app.post("/decode", Some(ACME_KEY), json!({ "ids": [[5], [6, -1]] })).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error"]["param"], "ids");
    assert_eq!(
        r.body["error"]["message"],
        "ids[1][1] must be a token id (an integer from 0 to 4294967295), got -1"
    );
    let r = app.post("/decode", Some(ACME_KEY), json!({ "ids": "abc" })).await;
    assert_eq!((r.status, r.body["error"]["param"].as_str()), (422, Some("ids")), "{}", r.body);
}
