//! A deterministic stand-in for ONNX Runtime and the model files, for the fast test tier (test
//! code only, never in the service): it
//! needs no library and no assets, so auth, limits, errors, fairness, batching and the cache
//! can be tested in seconds. Tests of embeddings themselves use the real models.
//!
//! - Tokenizing is real (`tokenizers`), with a character-level vocabulary built in memory:
//!   each printable ASCII character is one token, anything else `[UNK]`, whitespace is
//!   dropped, and `[CLS]`/`[SEP]` frame every input. Truncation is the real one.
//! - A vector is the mean over tokens of a fixed pseudo-random projection of each token id:
//!   the same input gives the same vector alone or in any batch.
//! - A run sleeps `run_delay` (to stand for inference time), records its inputs as text,
//!   and fails when an input contains [`FAILING_CHAR`], as an ONNX Runtime error would; it
//!   panics when an input contains [`PANICKING_CHAR`], or on every run (warm-up runs included)
//!   while [`FakeLoader::panic_on_every_run`] is on, as a broken backend would.
//! - A model whose `onnx` path ends in [`BROKEN_MODEL`] fails to load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use serde_json::json;
use tokenizers::Tokenizer;

use embedserve::models::engine::tokenize::{Encoded, TextEncoder};
use embedserve::models::engine::{Backend, ModelLoader};
use embedserve::models::spec::ModelSpec;

/// An input containing this character makes its run fail.
pub const FAILING_CHAR: char = '~';
/// An input containing this character makes its run panic.
pub const PANICKING_CHAR: char = '^';
/// A model whose `onnx` path ends with this fails to load.
pub const BROKEN_MODEL: &str = "broken.onnx";

const SPECIALS: [&str; 4] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];
/// Id of the first printable ASCII character, `!`.
const FIRST_CHAR_ID: u32 = SPECIALS.len() as u32;

/// Loads fake models; clones share their counters and run log.
#[derive(Clone, Default)]
pub struct FakeLoader {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    run_delay: Duration,
    loads: AtomicUsize,
    runs: Mutex<Vec<Vec<String>>>,
    /// The names of the inference threads that have run inputs (warm-up runs are the loader's).
    threads: Mutex<std::collections::BTreeSet<String>>,
    panic_always: AtomicBool,
}

impl FakeLoader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every run takes at least `delay`, as inference would.
    pub fn with_run_delay(delay: Duration) -> Self {
        Self { shared: Arc::new(Shared { run_delay: delay, ..Shared::default() }) }
    }

    /// Successful loads so far, all models together.
    pub fn loads(&self) -> usize {
        self.shared.loads.load(Ordering::SeqCst)
    }

    /// While `on`, every run of every model panics, warm-up runs included.
    pub fn panic_on_every_run(&self, on: bool) {
        self.shared.panic_always.store(on, Ordering::SeqCst);
    }

    /// Every run so far (warm-up runs included), each as its inputs' text without whitespace.
    pub fn runs(&self) -> Vec<Vec<String>> {
        self.shared.runs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The names of the threads that have run inputs.
    pub fn threads(&self) -> Vec<String> {
        self.shared.threads.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}

impl ModelLoader for FakeLoader {
    fn load(&self, spec: &ModelSpec) -> anyhow::Result<(TextEncoder, Box<dyn Backend>)> {
        if spec.onnx.to_string_lossy().ends_with(BROKEN_MODEL) {
            bail!("cannot load ONNX model {}: not a valid ONNX graph (fake)", spec.onnx.display());
        }
        let encoder = TextEncoder::new(char_tokenizer()?, spec.max_tokens)?;
        self.shared.loads.fetch_add(1, Ordering::SeqCst);
        let backend = FakeBackend { dimensions: spec.dimensions, shared: Arc::clone(&self.shared) };
        Ok((encoder, Box::new(backend)))
    }

    /// Another session of a loaded model: not a load.
    fn load_session(&self, spec: &ModelSpec) -> anyhow::Result<Box<dyn Backend>> {
        Ok(Box::new(FakeBackend { dimensions: spec.dimensions, shared: Arc::clone(&self.shared) }))
    }
}

struct FakeBackend {
    dimensions: usize,
    shared: Arc<Shared>,
}

impl Backend for FakeBackend {
    fn run(&mut self, batch: &[&Encoded]) -> anyhow::Result<Vec<Vec<f32>>> {
        std::thread::sleep(self.shared.run_delay);
        let texts: Vec<String> = batch.iter().map(|e| decode(&e.ids)).collect();
        self.shared.runs.lock().unwrap_or_else(|e| e.into_inner()).push(texts.clone());
        if let Some(name) = std::thread::current().name().filter(|n| n.starts_with("infer-")) {
            self.shared.threads.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned());
        }
        if self.shared.panic_always.load(Ordering::SeqCst) {
            panic!("fake backend panic on every run");
        }
        if texts.iter().any(|t| t.contains(PANICKING_CHAR)) {
            panic!("fake backend panic: an input contains {PANICKING_CHAR:?}");
        }
        if texts.iter().any(|t| t.contains(FAILING_CHAR)) {
            bail!("fake inference failure: an input contains {FAILING_CHAR:?}");
        }
        Ok(batch.iter().map(|e| embed(&e.ids, self.dimensions)).collect())
    }
}

/// The mean over tokens of a fixed projection of each id into `[-0.5, 0.5)`.
fn embed(ids: &[i64], dimensions: usize) -> Vec<f32> {
    let mut v = vec![0f32; dimensions];
    for &id in ids {
        for (j, x) in v.iter_mut().enumerate() {
            let h = (id as u64).wrapping_mul(2_654_435_761).wrapping_add(j as u64 * 40_503) % 1000;
            *x += h as f32 / 1000.0 - 0.5;
        }
    }
    let n = ids.len().max(1) as f32;
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// The characters behind `ids`, special tokens left out.
fn decode(ids: &[i64]) -> String {
    ids.iter()
        .filter_map(|&id| u32::try_from(id).ok().filter(|id| *id >= FIRST_CHAR_ID))
        .filter_map(|id| char::from_u32(id - FIRST_CHAR_ID + u32::from(b'!')))
        .collect()
}

/// A character-level WordLevel tokenizer over printable ASCII, with BERT's framing.
fn char_tokenizer() -> anyhow::Result<Tokenizer> {
    let mut vocab = serde_json::Map::new();
    for (id, token) in SPECIALS.iter().enumerate() {
        vocab.insert((*token).to_owned(), json!(id));
    }
    for c in '!'..='~' {
        vocab.insert(c.to_string(), json!(FIRST_CHAR_ID + (c as u32 - u32::from(b'!'))));
    }
    let special = |token: &str| json!({ "SpecialToken": { "id": token, "type_id": 0 } });
    let sequence = |id: &str, type_id: u32| json!({ "Sequence": { "id": id, "type_id": type_id } });
    let framing = |token: &str, id: usize| json!({ "id": token, "ids": [id], "tokens": [token] });
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "Sequence", "pretokenizers": [
            { "type": "WhitespaceSplit" },
            { "type": "Split", "pattern": { "Regex": "." }, "behavior": "Isolated", "invert": false }
        ] },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special("[CLS]"), sequence("A", 0), special("[SEP]")],
            "pair": [special("[CLS]"), sequence("A", 0), special("[SEP]"), sequence("B", 1), special("[SEP]")],
            "special_tokens": { "[CLS]": framing("[CLS]", 2), "[SEP]": framing("[SEP]", 3) }
        },
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]" }
    });
    spec.to_string().parse::<Tokenizer>().map_err(|e| anyhow::anyhow!("fake tokenizer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_tokenizer_is_character_level_with_bert_framing() {
        let encoder = TextEncoder::new(char_tokenizer().unwrap(), 6).unwrap();
        let out = encoder
            .encode(
                &["ab c".to_owned(), "abcdefgh".to_owned()],
                &embedserve::models::engine::tokenize::EncodeOptions::truncating(),
            )
            .unwrap();
        assert_eq!(out[0].ids, [2, 4 + 64, 4 + 65, 4 + 66, 3], "[CLS] a b c [SEP]");
        assert!(!out[0].truncated);
        assert_eq!(out[1].len(), 6);
        assert!(out[1].truncated);
        assert_eq!(decode(&out[0].ids), "abc");
    }

    #[test]
    fn a_vector_depends_on_the_input_only() {
        let a = embed(&[2, 70, 71, 3], 8);
        assert_eq!(a, embed(&[2, 70, 71, 3], 8));
        assert_ne!(a, embed(&[2, 70, 72, 3], 8));
        assert_eq!(a.len(), 8);
    }
}
