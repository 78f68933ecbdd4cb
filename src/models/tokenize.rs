//! Tokenization: the model's own `tokenizer.json`, with truncation set to the model's token
//! limit and no fixed padding (each ONNX Runtime run pads to its own longest input).
//!
//! A text's cost is bounded before the tokenizer sees it: only a prefix is tokenized, first
//! [`FIRST_WINDOW_BYTES_PER_TOKEN`] bytes per token of the model's limit, widened fourfold
//! while the prefix yields fewer tokens than the limit, up to [`MAX_BYTES_PER_TOKEN`] bytes per
//! token. A prefix ends at a whitespace where it can, so the last word is whole: the tokens kept
//! are exactly those truncating the whole text would keep, unless the text has fewer than one
//! token per [`MAX_BYTES_PER_TOKEN`] bytes (almost all whitespace), when the cap cuts it and it
//! counts as truncated. A 1.9 MB input thus costs what a few kilobytes cost.

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

/// Bytes tokenized per token of the model's limit at first.
pub const FIRST_WINDOW_BYTES_PER_TOKEN: usize = 8;
/// Bytes tokenized per token of the model's limit at most.
pub const MAX_BYTES_PER_TOKEN: usize = 64;

/// A tokenizer configured for one model.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_tokens: usize,
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
        Ok(Self { tokenizer, max_tokens })
    }

    /// Tokenizes each text with the model's special tokens.
    pub fn encode(&self, texts: &[String]) -> anyhow::Result<Vec<Encoded>> {
        texts.iter().map(|text| self.encode_one(text)).collect()
    }

    fn encode_one(&self, text: &str) -> anyhow::Result<Encoded> {
        let cap = self.max_tokens.saturating_mul(MAX_BYTES_PER_TOKEN);
        let mut window = self.max_tokens.saturating_mul(FIRST_WINDOW_BYTES_PER_TOKEN);
        loop {
            let (prefix, cut) = prefix(text, window);
            let enc = self
                .tokenizer
                .encode(prefix, true)
                .map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?;
            let overflowed = !enc.get_overflowing().is_empty();
            if !cut || overflowed || window >= cap {
                return Ok(Encoded {
                    ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
                    type_ids: enc.get_type_ids().iter().map(|&i| i64::from(i)).collect(),
                    truncated: overflowed || cut,
                });
            }
            window = window.saturating_mul(4).min(cap);
        }
    }
}

/// The first `max_bytes` of `text`, ending after a whitespace when one lies in the window's
/// second half (so no word is cut), and whether anything was left out.
fn prefix(text: &str, max_bytes: usize) -> (&str, bool) {
    if text.len() <= max_bytes {
        return (text, false);
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = &text[..end];
    let at_space = head.rfind(char::is_whitespace).filter(|&i| i >= end / 2);
    (at_space.map_or(head, |i| &text[..i]), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_between_words_and_on_a_char_boundary() {
        assert_eq!(prefix("short", 10), ("short", false));
        assert_eq!(prefix("one two three", 10), ("one two", true));
        assert_eq!(prefix("ééééé", 5), ("éé", true));
        assert_eq!(prefix(&"!".repeat(20), 8), ("!!!!!!!!", true));
    }
}
