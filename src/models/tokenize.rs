//! Tokenization: the model's own `tokenizer.json`, with truncation set to the model's token
//! limit and no fixed padding (each ONNX Runtime run pads to its own longest input).

use std::path::Path;

use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

/// One tokenized input, ready to be padded into a batch.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    /// The input was longer than the model's limit and lost its tail.
    pub truncated: bool,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A tokenizer configured for one model.
pub struct TextEncoder {
    tokenizer: Tokenizer,
}

impl TextEncoder {
    /// Reads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path, max_tokens: usize) -> anyhow::Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("cannot read tokenizer {}: {e}", path.display()))?;
        Self::new(tokenizer, max_tokens).map_err(|e| anyhow::anyhow!("tokenizer {}: {e}", path.display()))
    }

    /// Wraps `tokenizer`, truncating to `max_tokens` and padding nothing.
    pub fn new(mut tokenizer: Tokenizer, max_tokens: usize) -> anyhow::Result<Self> {
        // tokenizer.json files often ship `Fixed(128)` padding and a 128 truncation; neither
        // is the model's.
        tokenizer.with_padding(None::<PaddingParams>);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self { tokenizer })
    }

    /// Tokenizes each text with the model's special tokens.
    pub fn encode(&self, texts: &[String]) -> anyhow::Result<Vec<Encoded>> {
        texts
            .iter()
            .map(|text| {
                let enc = self
                    .tokenizer
                    .encode(text.as_str(), true)
                    .map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?;
                Ok(Encoded {
                    ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
                    type_ids: enc.get_type_ids().iter().map(|&i| i64::from(i)).collect(),
                    truncated: !enc.get_overflowing().is_empty(),
                })
            })
            .collect()
    }
}
