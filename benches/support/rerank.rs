//! The rerank workload: one query with 20 passages of about 60 tokens, as a search's top hits
//! are reranked. Queries and passages come from the quality set (tests/data/quality/set.json:
//! paraphrase queries and sentences of the Python Language Reference); each query's passages
//! hold its answer among 19 others.

use std::path::Path;

/// Passages per request.
pub const PASSAGES: usize = 20;
/// Words per passage at least (about 60 tokens with MiniLM's WordPiece).
const PASSAGE_WORDS: usize = 40;

pub struct Request {
    pub query: String,
    pub passages: Vec<String>,
}

impl Request {
    pub fn body(&self, model: &str) -> serde_json::Value {
        serde_json::json!({ "model": model, "query": self.query, "documents": self.passages })
    }
}

/// `n` requests, each a different query and window of passages.
pub fn workload(repo: &Path, n: usize) -> Vec<Request> {
    let set: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("tests/data/quality/set.json")).unwrap()).unwrap();
    let corpus: Vec<&str> = set["corpus"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    // Consecutive sentences joined until a passage has PASSAGE_WORDS words.
    let mut passages: Vec<(usize, String)> = Vec::new();
    let mut current = (0, String::new());
    for (i, sentence) in corpus.iter().enumerate() {
        if current.1.is_empty() {
            current.0 = i;
        }
        if !current.1.is_empty() {
            current.1.push(' ');
        }
        current.1.push_str(sentence);
        if current.1.split_whitespace().count() >= PASSAGE_WORDS {
            passages.push(std::mem::take(&mut current));
        }
    }
    let queries = set["queries"].as_array().unwrap();
    (0..n)
        .map(|k| {
            let q = &queries[k * 7 % queries.len()];
            let answer = q["answer"].as_u64().unwrap() as usize;
            let hit = passages.iter().rposition(|(first, _)| *first <= answer).unwrap();
            let start = hit.saturating_sub(k % PASSAGES).min(passages.len() - PASSAGES);
            Request {
                query: q["text"].as_str().unwrap().to_string(),
                passages: passages[start..start + PASSAGES].iter().map(|(_, p)| p.clone()).collect(),
            }
        })
        .collect()
}
