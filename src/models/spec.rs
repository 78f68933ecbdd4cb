//! What a model is, as configuration describes it: files, graph inputs and output, pooling,
//! normalisation, token limit and dimension. Adding an ONNX embedding model is a config change.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// One embedding model, from a `[models.<id>]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The ONNX graph. Relative paths resolve against the config file's folder.
    pub onnx: PathBuf,
    /// A Hugging Face `tokenizer.json`. Its own padding and truncation are replaced by ours.
    pub tokenizer: PathBuf,
    /// Which tensors the graph takes, in any order.
    #[serde(default = "default_inputs")]
    pub inputs: Vec<InputRole>,
    /// Graph input names where they differ from the role names, e.g. `{ input_ids = "ids" }`.
    #[serde(default)]
    pub input_names: BTreeMap<InputRole, String>,
    /// The graph output to read: token states `[batch, seq, dim]`, or `[batch, dim]` when
    /// `pooling = "none"`.
    pub output: String,
    pub pooling: Pooling,
    /// Whether vectors are L2-normalised when the request does not say.
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Inputs longer than this are truncated (and counted as truncated).
    pub max_tokens: usize,
    /// Width of the pooled vector.
    pub dimensions: usize,
    /// The model's resident size for the cache budget, when you know it; otherwise measured
    /// at load (see the cache).
    #[serde(default)]
    pub resident_bytes: Option<u64>,
    /// How much of ONNX Runtime's graph optimisation runs when the session is built. Graphs
    /// already in their final form (the int8 ones `scripts/quantize.py` writes) build faster and
    /// run faster with `none`.
    #[serde(default)]
    pub graph_optimization: GraphOptimization,
    /// Text put before an input when a request names it (`input_type` or `prompt_name`), e.g.
    /// `{ query = "query: ", document = "passage: " }`, as sentence-transformers' `prompts`.
    #[serde(default)]
    pub prompts: BTreeMap<String, String>,
    /// The prompt used when a request names none.
    #[serde(default)]
    pub default_prompt: Option<String>,
}

/// ONNX Runtime's graph optimisation levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphOptimization {
    None,
    Basic,
    Extended,
    #[default]
    All,
}

/// A tensor an embedding graph may take; all are int64 `[batch, seq]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputRole {
    InputIds,
    AttentionMask,
    TokenTypeIds,
}

impl InputRole {
    pub fn default_name(self) -> &'static str {
        match self {
            InputRole::InputIds => "input_ids",
            InputRole::AttentionMask => "attention_mask",
            InputRole::TokenTypeIds => "token_type_ids",
        }
    }
}

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The first token's state.
    Cls,
    /// The last real (unpadded) token's state.
    LastToken,
    /// The output is already one vector per input.
    None,
}

impl ModelSpec {
    /// The graph input names to feed, with what to feed them.
    pub fn feeds(&self) -> Vec<(String, InputRole)> {
        self.inputs
            .iter()
            .map(|role| {
                let name = self.input_names.get(role).cloned();
                (name.unwrap_or_else(|| role.default_name().to_owned()), *role)
            })
            .collect()
    }

    /// Whether a graph with these inputs and outputs fits the spec: every input the spec feeds
    /// exists, every input the graph needs is fed, and the output exists.
    pub fn check_graph(&self, inputs: &[&str], outputs: &[&str]) -> Result<(), String> {
        let feeds = self.feeds();
        if let Some((name, _)) = feeds.iter().find(|(name, _)| !inputs.contains(&name.as_str())) {
            return Err(format!("the graph has no input {name:?} (it has {inputs:?})"));
        }
        if let Some(missing) = inputs.iter().find(|g| !feeds.iter().any(|(n, _)| n == *g)) {
            return Err(format!("the graph needs input {missing:?}, which `inputs` does not list"));
        }
        if !outputs.contains(&self.output.as_str()) {
            return Err(format!("the graph has no output {:?} (it has {outputs:?})", self.output));
        }
        Ok(())
    }

    /// Problems with this spec that need no file access, as `field: message`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.dimensions == 0 {
            out.push("dimensions: must be at least 1".to_owned());
        }
        if self.max_tokens < 2 {
            out.push("max_tokens: must be at least 2 (room for the special tokens)".to_owned());
        }
        if !self.inputs.contains(&InputRole::InputIds) {
            out.push("inputs: must include \"input_ids\"".to_owned());
        }
        if self.output.is_empty() {
            out.push("output: must name a graph output".to_owned());
        }
        if let Some(d) = &self.default_prompt
            && !self.prompts.contains_key(d)
        {
            out.push(format!("default_prompt: {d:?} is not one of `prompts`"));
        }
        for role in self.input_names.keys() {
            if !self.inputs.contains(role) {
                out.push(format!(
                    "input_names.{}: renames an input not listed in `inputs`",
                    role.default_name()
                ));
            }
        }
        out
    }
}

fn default_inputs() -> Vec<InputRole> {
    vec![InputRole::InputIds, InputRole::AttentionMask, InputRole::TokenTypeIds]
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> ModelSpec {
        let text = format!(
            "onnx = \"m.onnx\"\ntokenizer = \"t.json\"\noutput = \"o\"\npooling = \"mean\"\nmax_tokens = 8\n\
             dimensions = 4\n{extra}"
        );
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(&text)).extract().unwrap()
    }

    #[test]
    fn the_default_prompt_must_be_one_of_the_prompts() {
        assert!(spec("prompts = { query = \"query: \" }\ndefault_prompt = \"query\"").problems().is_empty());
        let problems = spec("prompts = { query = \"query: \" }\ndefault_prompt = \"doc\"").problems();
        assert_eq!(problems, ["default_prompt: \"doc\" is not one of `prompts`"]);
    }
}
