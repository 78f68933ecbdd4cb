//! Token-id input: OpenAI's embeddings API takes `input` as arrays of token ids, and clients use
//! it (LangChain's `OpenAIEmbeddings` tokenizes with tiktoken and sends ids by default). The ids
//! are tiktoken's, in the encoding OpenAI's embedding models use, not the model's own: they are
//! decoded back to text here and the text is then tokenized by the model's tokenizer, as any
//! text is. The encodings ship inside the binary (the `tiktoken-rs` crate); nothing downloads.
//! Only the two encodings of OpenAI's embedding and current models are linked in (GPT-3's
//! p50k/r50k would add a megabyte to the Lambda zip for clients that do not exist).

use serde::Deserialize;
use tiktoken_rs::CoreBPE;

/// Which tiktoken encoding a model's token-id inputs are in (`token_ids_encoding`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenIdsEncoding {
    /// text-embedding-ada-002 and text-embedding-3-*: what LangChain and OpenAI's cookbook send.
    #[default]
    Cl100kBase,
    /// The encoding of OpenAI's newer models.
    O200kBase,
    /// Token ids are refused for this model (422).
    None,
}

/// Why token ids could not become text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenIdsError {
    #[error("model takes text only: token-id input is off for it (token_ids_encoding = \"none\")")]
    Off,
    #[error("input[{input}][{position}] is {id}, which is not a token id of {encoding}")]
    Unknown { input: usize, position: usize, id: u32, encoding: &'static str },
}

impl TokenIdsEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenIdsEncoding::Cl100kBase => "cl100k_base",
            TokenIdsEncoding::O200kBase => "o200k_base",
            TokenIdsEncoding::None => "none",
        }
    }

    /// The encoding's tables, built once per process on first use (about 0.1 s for
    /// cl100k_base): call from a blocking thread.
    fn bpe(self) -> Option<&'static CoreBPE> {
        match self {
            TokenIdsEncoding::Cl100kBase => Some(tiktoken_rs::cl100k_base_singleton()),
            TokenIdsEncoding::O200kBase => Some(tiktoken_rs::o200k_base_singleton()),
            TokenIdsEncoding::None => None,
        }
    }

    /// Each input's text. Bytes that are not valid UTF-8 (a chunk cut inside a character)
    /// become U+FFFD, as tiktoken's Python `decode` does. Blocking.
    pub fn decode(self, inputs: &[Vec<u32>]) -> Result<Vec<String>, TokenIdsError> {
        let bpe = self.bpe().ok_or(TokenIdsError::Off)?;
        inputs
            .iter()
            .enumerate()
            .map(|(input, ids)| {
                let bytes = bpe.decode_bytes(ids).map_err(|e| TokenIdsError::Unknown {
                    input,
                    position: ids.iter().position(|&id| id == e.token).unwrap_or(0),
                    id: e.token,
                    encoding: self.as_str(),
                })?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cl100k_ids_decode_to_their_text_and_unknown_ids_are_named() {
        let encoding = TokenIdsEncoding::Cl100kBase;
        let ids = tiktoken_rs::cl100k_base_singleton().encode_ordinary("Hello, world! Ünïcödé");
        assert_eq!(encoding.decode(std::slice::from_ref(&ids)).unwrap(), vec!["Hello, world! Ünïcödé"]);
        let mut bad = ids;
        bad.insert(2, 4_000_000);
        assert_eq!(
            encoding.decode(&[vec![9906], bad]).unwrap_err(),
            TokenIdsError::Unknown { input: 1, position: 2, id: 4_000_000, encoding: "cl100k_base" }
        );
        assert_eq!(TokenIdsEncoding::None.decode(&[vec![1]]).unwrap_err(), TokenIdsError::Off);
    }

    #[test]
    fn a_character_cut_between_chunks_decodes_to_a_replacement_character() {
        let ids = tiktoken_rs::cl100k_base_singleton().encode_ordinary("é");
        let bytes = tiktoken_rs::cl100k_base_singleton().decode_bytes(&ids).unwrap();
        assert_eq!(bytes.len(), 2);
        // Whatever the split, the text decodes without failing.
        let text = TokenIdsEncoding::Cl100kBase.decode(&[ids]).unwrap();
        assert_eq!(text, vec!["é"]);
    }
}
