//! Tokenization: the model's own `tokenizer.json`, with no padding (each ONNX Runtime run pads
//! to its own longest input) and our own truncation, so a request can choose its direction and
//! keep the model's prompt.
//!
//! An input is the model's prompt (if any) followed by the text, as sentence-transformers
//! concatenates them. Truncation keeps the prompt's tokens and cuts the text: its tail
//! (`right`, the default, which is exactly what sentence-transformers and the tokenizer's own
//! truncation do) or its head (`left`). The special tokens the tokenizer adds always stay.
//!
//! A text's cost is bounded before the tokenizer sees it: only a window of it is tokenized (a
//! prefix when truncating on the right, a suffix on the left), first
//! [`FIRST_WINDOW_BYTES_PER_TOKEN`] bytes per token of the model's limit, widened fourfold
//! while the window yields fewer tokens than the limit, up to [`MAX_BYTES_PER_TOKEN`] bytes per
//! token. A window ends (or starts) at a whitespace where it can, so no word is cut: the tokens
//! kept are exactly those truncating the whole text would keep, unless the text has fewer than
//! one token per [`MAX_BYTES_PER_TOKEN`] bytes (almost all whitespace), when the cap cuts it
//! and it counts as truncated. A 1.9 MB input thus costs what a few kilobytes cost. Without
//! truncation the whole cap is tokenized at once, to count an over-long input's tokens.

use std::path::Path;

use serde::Deserialize;

use crate::models::spec::ModelSpec;
use tokenizers::utils::truncation::{TruncationParams, TruncationStrategy, truncate_encodings};
use tokenizers::{Encoding, PaddingParams, PostProcessor, Tokenizer, TruncationDirection};

/// One tokenized input, ready to be padded into a batch.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    /// The input was longer than the model's limit and lost part of its text.
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

/// One tokenized input as `/v1/tokenize` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub tokens: Vec<String>,
    /// Which of them the tokenizer added (`[CLS]`, `</s>`, ...).
    pub special: Vec<bool>,
    /// Each token's byte range in the text as tokenized (prompt included); `(0, 0)` for the
    /// tokens the tokenizer added.
    pub offsets: Vec<(usize, usize)>,
    pub truncated: bool,
}

/// Which end of an over-long text is cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Keep the beginning (sentence-transformers' and the tokenizer's own behaviour).
    #[default]
    #[serde(alias = "Right")]
    Right,
    /// Keep the end.
    #[serde(alias = "Left")]
    Left,
}

/// How to turn one request's texts into tokens.
#[derive(Debug, Clone, Default)]
pub struct EncodeOptions {
    /// Text put before every input (the model's query or document prompt).
    pub prompt: String,
    /// Cut over-long inputs (`true`) or refuse them (`false`).
    pub truncate: bool,
    pub direction: Direction,
    /// A lower limit than the model's for this request (Cohere's `max_tokens`), special tokens
    /// included; at least one text token is always kept.
    pub max_tokens: Option<usize>,
}

impl EncodeOptions {
    /// No prompt, over-long inputs cut on the right.
    pub fn truncating() -> Self {
        Self { truncate: true, ..Self::default() }
    }
}

/// Why texts could not be tokenized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// With `truncate: false`, an input over the model's limit.
    #[error(
        "input[{index}] has {tokens} tokens, over the model's limit of {limit}; shorten it or send \"truncate\": true"
    )]
    TooLong { index: usize, tokens: usize, limit: usize },
    /// With `truncate: false`, an input longer than is tokenized whole (see the module).
    #[error(
        "input[{index}] is longer than {bytes} bytes, more than the model's limit of {limit} tokens is tokenized \
         from; shorten it or send \"truncate\": true"
    )]
    TooManyBytes { index: usize, bytes: usize, limit: usize },
    /// With `truncate: false`, a query with a document over a rerank model's limit.
    #[error(
        "documents[{index}] with the query has {tokens} tokens, over the model's limit of {limit}; shorten it, \
         set max_tokens_per_doc, or send \"truncate\": true"
    )]
    PairTooLong { index: usize, tokens: String, limit: usize },
    /// With `truncate: false`, a query that leaves no room for any document.
    #[error(
        "the query has {tokens} tokens, over the model's limit of {limit}; shorten it or send \"truncate\": true"
    )]
    QueryTooLong { tokens: String, limit: usize },
    #[error("tokenization failed: {0}")]
    Failed(String),
}

impl EncodeError {
    /// The request field an over-long input was in.
    pub fn param(&self) -> &'static str {
        match self {
            EncodeError::PairTooLong { .. } => "documents",
            EncodeError::QueryTooLong { .. } => "query",
            _ => "input",
        }
    }
}

/// Why token ids could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("ids[{input}][{position}] is {id}, outside the model's vocabulary of {vocab} tokens")]
    Unknown { input: usize, position: usize, id: u32, vocab: usize },
    #[error("decoding failed: {0}")]
    Failed(String),
}

/// How to turn a query and its documents into pairs for a rerank model.
#[derive(Debug, Clone, Default)]
pub struct PairOptions {
    /// Cut over-long pairs, longest side first (`true`), or refuse them (`false`).
    pub truncate: bool,
    /// Cut each document to this many tokens before pairing (Cohere's `max_tokens_per_doc`).
    pub max_tokens_per_doc: Option<usize>,
    /// Which end of an over-long text is cut.
    pub direction: Direction,
}

/// Bytes of text per token when estimating a request's tokens before tokenizing it (English
/// prose runs 4-5 with WordPiece or BPE vocabularies, CJK text and code 2-3).
pub const BYTES_PER_TOKEN_ESTIMATE: usize = 4;
/// Bytes tokenized per token of the model's limit at first.
pub const FIRST_WINDOW_BYTES_PER_TOKEN: usize = 8;
/// Bytes tokenized per token of the model's limit at most.
pub const MAX_BYTES_PER_TOKEN: usize = 64;

/// A tokenizer configured for one model.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_tokens: usize,
    /// Tokens the post-processor adds to one sequence (`[CLS]` and `[SEP]`: 2).
    added: usize,
    /// Lowercase prompt and text first (sentence-transformers' `do_lower_case`).
    lowercase: bool,
}

impl TextEncoder {
    /// The tokenizer a model's spec describes: its `tokenizer.json`, adjusted by its
    /// `tokenizer_config.json` as `transformers` adjusts it (see [`adjust`]), lowercasing texts
    /// if the spec says so.
    pub fn for_spec(spec: &ModelSpec) -> anyhow::Result<Self> {
        let path = &spec.tokenizer;
        let read = |p: &Path| -> anyhow::Result<serde_json::Value> {
            let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", p.display()))
        };
        let tokenizer = match &spec.tokenizer_config {
            None => Tokenizer::from_file(path)
                .map_err(|e| anyhow::anyhow!("cannot read tokenizer {}: {e}", path.display()))?,
            Some(config) => {
                let mut json = read(path)?;
                adjust(&mut json, &read(config)?);
                serde_json::from_value(json)
                    .map_err(|e| anyhow::anyhow!("cannot read tokenizer {}: {e}", path.display()))?
            }
        };
        let mut encoder = Self::new(tokenizer, spec.max_tokens)
            .map_err(|e| anyhow::anyhow!("tokenizer {}: {e}", path.display()))?;
        encoder.lowercase = spec.lowercase.unwrap_or(false);
        Ok(encoder)
    }

    /// Wraps `tokenizer`, limiting inputs to `max_tokens` and padding nothing.
    pub fn new(mut tokenizer: Tokenizer, max_tokens: usize) -> anyhow::Result<Self> {
        // tokenizer.json files often ship `Fixed(128)` padding and a 128 truncation; neither
        // is the model's, and truncation is ours (see the module's comment).
        tokenizer.with_padding(None::<PaddingParams>);
        tokenizer.with_truncation(None).map_err(|e| anyhow::anyhow!("{e}"))?;
        let added = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        if added >= max_tokens {
            anyhow::bail!(
                "the tokenizer adds {added} special tokens, leaving no room under max_tokens {max_tokens}"
            );
        }
        Ok(Self { tokenizer, max_tokens, added, lowercase: false })
    }

    /// The tokens `texts` are expected to become, before tokenizing them, to reserve queue room
    /// for a request before it costs any tokenizing: [`BYTES_PER_TOKEN_ESTIMATE`] bytes of text
    /// and prompt per token, plus the special tokens, within the limit. An estimate, not a
    /// bound: the reservation is set to the exact count once tokenized.
    pub fn estimate(&self, texts: &[String], options: &EncodeOptions) -> usize {
        let limit = options.max_tokens.map_or(self.max_tokens, |m| m.clamp(self.added + 1, self.max_tokens));
        let prompt = options.prompt.len();
        texts
            .iter()
            .map(|t| ((prompt + t.len()).div_ceil(BYTES_PER_TOKEN_ESTIMATE) + self.added).clamp(1, limit))
            .sum()
    }

    /// [`Self::estimate`] for `documents` each paired with `query`.
    pub fn estimate_pairs(&self, query: &str, documents: &[String]) -> usize {
        documents
            .iter()
            .map(|d| {
                ((query.len() + d.len()).div_ceil(BYTES_PER_TOKEN_ESTIMATE) + self.added + 1)
                    .clamp(1, self.max_tokens)
            })
            .sum()
    }

    /// Tokenizes each text with the prompt, the model's special tokens and `options`' truncation.
    pub fn encode(&self, texts: &[String], options: &EncodeOptions) -> Result<Vec<Encoded>, EncodeError> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let (enc, truncated) = self.encode_one(index, text, options)?;
                Ok(Encoded {
                    ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
                    type_ids: enc.get_type_ids().iter().map(|&i| i64::from(i)).collect(),
                    truncated,
                })
            })
            .collect()
    }

    /// Each document paired with `query` as `transformers` encodes a pair for a cross-encoder:
    /// the tokenizer's pair template (`[CLS] query [SEP] document [SEP]`, token type ids 0 then
    /// 1), truncated longest side first to the model's limit (what `CrossEncoder` does), after
    /// each document is cut to `max_tokens_per_doc`. The query is tokenized once. As for single
    /// inputs, only a window of each text is tokenized (see the module).
    pub fn encode_pairs(
        &self,
        query: &str,
        documents: &[String],
        options: &PairOptions,
    ) -> Result<Vec<Encoded>, EncodeError> {
        let failed = |e: tokenizers::Error| EncodeError::Failed(e.to_string());
        let added = self.tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(true));
        let limit = self.max_tokens;
        let Some(room) = limit.checked_sub(added).filter(|r| *r >= 2) else {
            return Err(EncodeError::Failed(format!(
                "the tokenizer adds {added} tokens to a pair, leaving no room under {limit}"
            )));
        };
        let (query, query_cut) = self.window(query, room, options.direction)?;
        if !options.truncate && (query_cut || query.len() + added > limit) {
            let tokens =
                if query_cut { format!("more than {limit}") } else { (query.len() + added).to_string() };
            return Err(EncodeError::QueryTooLong { tokens, limit });
        }
        let params = TruncationParams {
            max_length: room,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: options.direction.into(),
        };
        documents
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let (mut document, capped) = self.window(text, room, options.direction)?;
                // Cutting to max_tokens_per_doc is asked for: it is no refusal, even without
                // truncation.
                let mut shortened = false;
                if let Some(max) = options.max_tokens_per_doc
                    && document.len() > max
                {
                    document.truncate(max, 0, options.direction.into());
                    drop(document.take_overflowing());
                    shortened = true;
                }
                let over = query.len() + document.len() > room;
                if !options.truncate && (over || capped && !shortened) {
                    let tokens = if capped && !shortened {
                        format!("more than {limit}")
                    } else {
                        (query.len() + document.len() + added).to_string()
                    };
                    return Err(EncodeError::PairTooLong { index, tokens, limit });
                }
                let cut = capped || shortened;
                let (first, second) = if over {
                    let (q, d) =
                        truncate_encodings(query.clone(), Some(document), &params).map_err(failed)?;
                    let d =
                        d.ok_or_else(|| EncodeError::Failed("truncating a pair lost its document".into()))?;
                    (q, d)
                } else {
                    (query.clone(), document)
                };
                let pair = self.tokenizer.post_process(first, Some(second), true).map_err(failed)?;
                Ok(Encoded {
                    ids: pair.get_ids().iter().map(|&i| i64::from(i)).collect(),
                    type_ids: pair.get_type_ids().iter().map(|&i| i64::from(i)).collect(),
                    truncated: over || cut || query_cut,
                })
            })
            .collect()
    }

    /// `text` without special tokens, tokenized from a window (a prefix, or a suffix when cutting
    /// on the left) widened until it holds more than `room` tokens or the whole text; `true` when
    /// the window cut the text (the cap of [`MAX_BYTES_PER_TOKEN`] bytes per token of `room`).
    fn window(&self, text: &str, room: usize, direction: Direction) -> Result<(Encoding, bool), EncodeError> {
        let cap = room.saturating_mul(MAX_BYTES_PER_TOKEN);
        let mut window = room.saturating_mul(FIRST_WINDOW_BYTES_PER_TOKEN);
        loop {
            let (part, cut) = match direction {
                Direction::Right => prefix(text, window),
                Direction::Left => suffix(text, window),
            };
            let enc = if self.lowercase {
                self.tokenizer.encode(part.to_lowercase(), false)
            } else {
                self.tokenizer.encode(part, false)
            }
            .map_err(|e| EncodeError::Failed(e.to_string()))?;
            if !cut || enc.len() > room || window >= cap {
                let capped = cut && enc.len() <= room;
                return Ok((enc, capped));
            }
            window = window.saturating_mul(4).min(cap);
        }
    }

    /// [`Self::encode`] with the tokens' text, for `/v1/tokenize`.
    pub fn tokens(&self, texts: &[String], options: &EncodeOptions) -> Result<Vec<Tokens>, EncodeError> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let (enc, truncated) = self.encode_one(index, text, options)?;
                Ok(Tokens {
                    ids: enc.get_ids().to_vec(),
                    tokens: enc.get_tokens().to_vec(),
                    special: enc.get_special_tokens_mask().iter().map(|&m| m == 1).collect(),
                    offsets: enc.get_offsets().to_vec(),
                    truncated,
                })
            })
            .collect()
    }

    /// Token ids back to text, one string per input (TEI's `/decode`). An id outside the
    /// vocabulary is named by its place: `(input, position, id)`.
    pub fn decode(&self, inputs: &[Vec<u32>], skip_special_tokens: bool) -> Result<Vec<String>, DecodeError> {
        let vocab = self.tokenizer.get_vocab_size(true);
        for (input, ids) in inputs.iter().enumerate() {
            if let Some(position) = ids.iter().position(|&id| id as usize >= vocab) {
                return Err(DecodeError::Unknown { input, position, id: ids[position], vocab });
            }
        }
        let ids: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        self.tokenizer.decode_batch(&ids, skip_special_tokens).map_err(|e| DecodeError::Failed(e.to_string()))
    }

    fn encode_one(
        &self,
        index: usize,
        text: &str,
        options: &EncodeOptions,
    ) -> Result<(Encoding, bool), EncodeError> {
        let failed = |e: tokenizers::Error| EncodeError::Failed(e.to_string());
        let max_tokens =
            options.max_tokens.map_or(self.max_tokens, |m| m.clamp(self.added + 1, self.max_tokens));
        let room = max_tokens - self.added;
        let cap = max_tokens.saturating_mul(MAX_BYTES_PER_TOKEN);
        let mut window =
            if options.truncate { max_tokens.saturating_mul(FIRST_WINDOW_BYTES_PER_TOKEN) } else { cap };
        let prompt = options.prompt.as_str();
        loop {
            let (part, cut) = match options.direction {
                Direction::Right => prefix(text, window),
                Direction::Left => suffix(text, window),
            };
            let mut enc = if self.lowercase {
                self.tokenizer.encode(format!("{prompt}{part}").to_lowercase(), false)
            } else if prompt.is_empty() {
                self.tokenizer.encode(part, false)
            } else {
                self.tokenizer.encode(format!("{prompt}{part}"), false)
            }
            .map_err(failed)?;
            let over = enc.len() > room;
            if !cut && !over || window >= cap || over && options.truncate {
                let limit = max_tokens;
                if !options.truncate && cut {
                    return Err(EncodeError::TooManyBytes { index, bytes: cap, limit });
                }
                if !options.truncate && over {
                    return Err(EncodeError::TooLong { index, tokens: enc.len() + self.added, limit });
                }
                if over {
                    // Offsets are into the text as tokenized: the lowercased one when lowercasing.
                    let prompt_bytes =
                        if self.lowercase { prompt.to_lowercase().len() } else { prompt.len() };
                    enc = self.truncated(enc, prompt_bytes, room, options.direction);
                }
                let enc = self.tokenizer.post_process(enc, None, true).map_err(failed)?;
                return Ok((enc, over || cut));
            }
            window = window.saturating_mul(4).min(cap);
        }
    }

    /// `enc` (prompt and text, no special tokens) cut to `room` tokens: the prompt's tokens (those
    /// starting within its `prompt_bytes`) stay, the text loses its tail or its head.
    fn truncated(
        &self,
        mut enc: Encoding,
        prompt_bytes: usize,
        room: usize,
        direction: Direction,
    ) -> Encoding {
        let prompt_tokens = enc.get_offsets().iter().take_while(|(start, _)| *start < prompt_bytes).count();
        if direction == Direction::Right || prompt_tokens == 0 || prompt_tokens >= room {
            // On the right the prompt is at the head, which is kept; a prompt filling the
            // whole limit leaves no text either way.
            let direction = if prompt_tokens == 0 { direction } else { Direction::Right };
            enc.truncate(room, 0, direction.into());
            drop(enc.take_overflowing());
            return enc;
        }
        let mut head = enc.clone();
        head.truncate(prompt_tokens, 0, TruncationDirection::Right);
        drop(head.take_overflowing());
        enc.truncate(room - prompt_tokens, 0, TruncationDirection::Left);
        drop(enc.take_overflowing());
        Encoding::merge([head, enc], false)
    }
}

impl From<Direction> for TruncationDirection {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Right => TruncationDirection::Right,
            Direction::Left => TruncationDirection::Left,
        }
    }
}

/// What `transformers` changes in a fast tokenizer when `tokenizer_config.json` disagrees with
/// `tokenizer.json`, as its `BertTokenizerFast` (and the BERT-like ones) and
/// `RobertaTokenizerFast` do on load: a top-level BERT normaliser gets `lowercase`,
/// `strip_accents` and `handle_chinese_chars` from `do_lower_case` (default true),
/// `strip_accents` (default none) and `tokenize_chinese_chars` (default true), all three at once
/// if any differs; a top-level byte-level pre-tokenizer gets `add_prefix_space`.
fn adjust(tokenizer: &mut serde_json::Value, config: &serde_json::Value) {
    use serde_json::Value;
    let is = |component: &Value, kind: &str| component.get("type").and_then(Value::as_str) == Some(kind);
    if let Some(normalizer) = tokenizer.get_mut("normalizer").filter(|n| is(n, "BertNormalizer"))
        && let Some(normalizer) = normalizer.as_object_mut()
    {
        let wanted = [
            ("lowercase", config.get("do_lower_case").cloned().unwrap_or(Value::Bool(true))),
            ("strip_accents", config.get("strip_accents").cloned().unwrap_or(Value::Null)),
            (
                "handle_chinese_chars",
                config.get("tokenize_chinese_chars").cloned().unwrap_or(Value::Bool(true)),
            ),
        ];
        if wanted.iter().any(|(key, want)| normalizer.get(*key).is_some_and(|have| have != want)) {
            for (key, want) in wanted {
                normalizer.insert(key.to_owned(), want);
            }
        }
    }
    if let Some(pre) = tokenizer.get_mut("pre_tokenizer").filter(|p| is(p, "ByteLevel"))
        && let Some(pre) = pre.as_object_mut()
        && let Some(want) = config.get("add_prefix_space").filter(|v| v.is_boolean())
    {
        pre.insert("add_prefix_space".to_owned(), want.clone());
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

/// The last `max_bytes` of `text`, starting after a whitespace when one lies in the window's
/// first half (so no word is cut), and whether anything was left out.
fn suffix(text: &str, max_bytes: usize) -> (&str, bool) {
    if text.len() <= max_bytes {
        return (text, false);
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = &text[start..];
    let at_space = tail
        .char_indices()
        .find(|(_, c)| c.is_whitespace())
        .filter(|&(i, _)| i <= tail.len() / 2)
        .map(|(i, c)| start + i + c.len_utf8());
    (at_space.map_or(tail, |i| &text[i..]), true)
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

    #[test]
    fn a_suffix_starts_between_words_and_on_a_char_boundary() {
        assert_eq!(suffix("short", 10), ("short", false));
        assert_eq!(suffix("one two three", 10), ("two three", true));
        assert_eq!(suffix("ééééé", 5), ("éé", true));
        assert_eq!(suffix(&"!".repeat(20), 8), ("!!!!!!!!", true));
    }
}
