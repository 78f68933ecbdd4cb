//! The clients retrieval code is written with, unchanged but for the base URL and key, against
//! the real models (tests/embed_clients.py drives them): LangChain's `OpenAIEmbeddings` (token
//! ids, its default), Cohere's `ClientV2.embed`, LlamaIndex's `TextEmbeddingsInference` and
//! `huggingface_hub`'s `InferenceClient`, each giving `/v1/embed`'s vectors.

use crate::helpers::*;
use serde_json::{Value, json};

/// Cosine to the native route's vector below which a client's vector counts as different.
const CLIENT_MIN_COSINE: f64 = 0.9999;
/// LangChain's default `embedding_ctx_length`: longer texts are split into chunks of this many
/// tiktoken tokens and the chunks' vectors averaged, weighted by their lengths.
const LANGCHAIN_CHUNK_TOKENS: usize = 8191;

/// A folder holding tiktoken's cl100k_base file under the name tiktoken's Python cache gives it
/// (the sha1 of its URL), copied from the `tiktoken-rs` crate's sources, which carry the same
/// file (tiktoken checks its sha256 when it reads it).
fn tiktoken_cache() -> tempfile_dir::Dir {
    let metadata = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // Only this platform's packages: a fresh machine has not downloaded the others (Windows'
        // anstyle-wincon, say), and --offline cannot.
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform"])
        .arg(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(metadata.status.success(), "{}", String::from_utf8_lossy(&metadata.stderr));
    let metadata: Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let manifest = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tiktoken-rs")
        .expect("tiktoken-rs in the dependency graph")["manifest_path"]
        .as_str()
        .unwrap()
        .to_owned();
    let source = std::path::Path::new(&manifest).parent().unwrap().join("assets/cl100k_base.tiktoken");
    let dir = tempfile_dir::Dir::new("tiktoken");
    std::fs::copy(source, dir.path().join("9b5ad71b2ce5302211f9c61530b329a4922fc6a4")).unwrap();
    dir
}

/// A temporary folder, removed on drop.
mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new(what: &str) -> Self {
            let path = std::env::temp_dir().join(format!("embedserve-{what}-{}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn as_vectors(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

#[test]
fn the_clients_people_have_get_the_native_route_s_vectors() {
    let server = TestServer::shared();
    // Short texts, non-ASCII, and one text LangChain splits into two chunks.
    let corpus: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/data/quality/set.json")).unwrap())
            .unwrap();
    let bpe = tiktoken_rs::cl100k_base_singleton();
    let mut long = String::new();
    for sentence in corpus["corpus"].as_array().unwrap().iter().cycle() {
        long.push_str(sentence.as_str().unwrap());
        long.push(' ');
        if bpe.encode_ordinary(&long).len() > LANGCHAIN_CHUNK_TOKENS + 600 {
            break;
        }
    }
    let texts = vec![
        "The cat sat on the mat.".to_owned(),
        "Embeddings map text to vectors.".to_owned(),
        "Ünïcödé, 日本語 and emoji 🎉 survive the round trip through token ids.".to_owned(),
        long.trim_end().to_owned(),
    ];
    let model = "minilm-l6-int8";
    let cache = tiktoken_cache();
    let mut child = std::process::Command::new(python())
        .arg(repo().join("tests/embed_clients.py"))
        .arg(server.url(""))
        .arg(model)
        .env("TIKTOKEN_CACHE_DIR", cache.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(json!(texts).to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "embedding clients failed:\n{stdout}\n{stderr}");
    let clients: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let native = rt.block_on(server.embed(model, json!(texts)));
    for client in ["cohere", "llama_index", "huggingface_hub"] {
        let theirs = as_vectors(&clients[client]);
        assert_eq!(theirs.len(), texts.len(), "{client}");
        let least = theirs.iter().zip(&native).map(|(a, b)| cosine(a, b)).fold(1.0, f64::min);
        println!("{client}: least cosine to /v1/embed {least:.7} over {} texts", texts.len());
        assert!(least >= CLIENT_MIN_COSINE, "{client}: cosine {least}");
    }

    // LangChain: the short texts as they are; the long one as the average of its chunks.
    let langchain = as_vectors(&clients["langchain_documents"]);
    for (i, (got, want)) in langchain.iter().zip(&native).take(3).enumerate() {
        let c = cosine(got, want);
        assert!(c >= CLIENT_MIN_COSINE, "langchain: text {i}: cosine {c}");
    }
    let query: Vec<f64> =
        clients["langchain_query"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(cosine(&query, &native[0]) >= CLIENT_MIN_COSINE, "langchain embed_query");
    let ids = bpe.encode_ordinary(&texts[3]);
    let chunks: Vec<&[u32]> = ids.chunks(LANGCHAIN_CHUNK_TOKENS).collect();
    assert_eq!(chunks.len(), 2, "the long text is two chunks for LangChain");
    let (status, reply) =
        rt.block_on(server.post("/v1/embeddings", json!({ "input": chunks, "model": model })));
    assert_eq!(status, 200, "{reply}");
    let mut average = vec![0.0; native[0].len()];
    for (chunk, item) in chunks.iter().zip(reply["data"].as_array().unwrap()) {
        for (a, x) in average.iter_mut().zip(item["embedding"].as_array().unwrap()) {
            *a += x.as_f64().unwrap() * chunk.len() as f64;
        }
    }
    let c = cosine(&langchain[3], &average);
    println!(
        "langchain: long text ({} tiktoken tokens, 2 chunks): cosine {c:.7} to the weighted mean of our chunk \
         vectors, {:.4} to /v1/embed of the whole text",
        ids.len(),
        cosine(&langchain[3], &native[3])
    );
    assert!(c >= CLIENT_MIN_COSINE, "langchain: long text: cosine {c} to the mean of the chunk vectors");
}
