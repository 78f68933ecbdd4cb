//! A model's prompt and truncation as a request chooses them: `input_type` (Cohere's and
//! Voyage's name) or `prompt_name` (Text Embeddings Inference's) picks one of the model's
//! prompts; `truncate` and `truncation_direction` say how an over-long input is cut.

use super::EmbedError;
use crate::core::clip::clip;
use crate::models::engine::tokenize::{Direction, EncodeOptions};
use crate::models::spec::ModelSpec;

/// How texts become tokens, as a request may choose: the model's prompt and truncation.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextParams<'a> {
    /// Cohere's and Voyage's name for the prompt (`"query"`, `"document"`, `"search_query"`...).
    pub input_type: Option<&'a str>,
    /// Text Embeddings Inference's name for it.
    pub prompt_name: Option<&'a str>,
    /// Cut over-long inputs (the default) or refuse them with 413.
    pub truncate: Option<bool>,
    pub truncation_direction: Option<Direction>,
    /// A lower token limit than the model's (Cohere's `max_tokens`).
    pub max_tokens: Option<usize>,
}

/// Input types that mean nothing to a model without prompts: it embeds them all alike.
const GENERIC_INPUT_TYPES: [&str; 7] =
    ["query", "document", "passage", "search_query", "search_document", "classification", "clustering"];

impl TextParams<'_> {
    /// The model's prompt and truncation for this request, or why they cannot be had.
    pub fn options(&self, spec: &ModelSpec, name: &str) -> Result<EncodeOptions, EmbedError> {
        let (param, asked) = match (self.prompt_name, self.input_type) {
            (Some(p), Some(t)) if p != t => {
                return Err(EmbedError::invalid(
                    "prompt_name",
                    "prompt_name and input_type name the prompt twice; send one of them",
                ));
            }
            (Some(p), _) => ("prompt_name", Some(p)),
            (None, t) => ("input_type", t),
        };
        let prompt = match asked {
            None => spec.default_prompt.as_ref().map_or("", |d| spec.prompts[d].as_str()),
            Some(asked) => {
                // Cohere's names for the two usual prompts.
                let alias = match asked {
                    "search_query" => "query",
                    "search_document" => "document",
                    other => other,
                };
                match spec.prompts.get(asked).or_else(|| spec.prompts.get(alias)) {
                    Some(prompt) => prompt.as_str(),
                    None if spec.prompts.is_empty() && GENERIC_INPUT_TYPES.contains(&asked) => "",
                    None => {
                        let valid: Vec<&str> = spec.prompts.keys().map(String::as_str).collect();
                        let valid = if valid.is_empty() {
                            format!("it has none, so only {} are accepted", GENERIC_INPUT_TYPES.join(", "))
                        } else {
                            format!("valid: {}", valid.join(", "))
                        };
                        return Err(EmbedError::invalid(
                            param,
                            format!("model `{}` has no prompt `{}`; {valid}", clip(name), clip(asked)),
                        ));
                    }
                }
            }
        };
        if self.max_tokens == Some(0) {
            return Err(EmbedError::invalid("max_tokens", "max_tokens must be at least 1"));
        }
        Ok(EncodeOptions {
            prompt: prompt.to_owned(),
            truncate: self.truncate.unwrap_or(true),
            direction: self.truncation_direction.unwrap_or_default(),
            max_tokens: self.max_tokens,
        })
    }
}
