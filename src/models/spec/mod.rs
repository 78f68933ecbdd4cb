//! What a model is, as configuration describes it: its task (dense embeddings, rerank scores or
//! sparse vectors), files, graph inputs and output, pooling, normalisation, token limit and
//! dimension. Adding an ONNX model is a config change.
//! Its settings may come from an export folder (`folder`) or the Hugging Face Hub (`hub`), and
//! its files can be checked without building a session (`inspect`).

pub mod folder;
pub mod hub;
pub mod inspect;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

pub use crate::models::engine::token_ids::TokenIdsEncoding;

/// One model, from a `[models.<id>]` table: an export folder (`path`), with any key overriding
/// what the folder says, or every file and fact written out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// What the model computes (see [`Task`]); `embed` unless set or the folder says otherwise.
    #[serde(default)]
    pub task: Option<Task>,
    /// A rerank model's score from its logit (see [`ScoreActivation`]).
    #[serde(default)]
    pub activation: Option<ScoreActivation>,
    /// A sentence-transformers or Optimum export folder: the files below, the graph's inputs and
    /// output, pooling, normalisation, limit, dimension and prompts come from it (see
    /// `models::folder`). Relative paths resolve against the config file's folder.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A Hugging Face Hub model, `"org/name"`, fetched into the Hugging Face cache when it first
    /// loads and then read as an export folder (see `models::hub`). Needs `revision`.
    #[serde(default)]
    pub hf: Option<String>,
    /// The commit of `hf` to serve: 40 hex digits (a branch or tag could change under you).
    #[serde(default)]
    pub revision: Option<String>,
    /// Expected sha256 of files of `hf` (or `path`), by file name, e.g.
    /// `{ "onnx/model.onnx" = "9f1c..." }`: checked at every load.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
    /// The ONNX file inside `path`: `onnx/model.onnx` (or `model.onnx`) unless set, e.g.
    /// `file = "onnx/model_quantized.onnx"`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The ONNX graph (from `path` when not set).
    #[serde(default)]
    pub onnx: PathBuf,
    /// A Hugging Face `tokenizer.json` (from `path` when not set). Its own padding and
    /// truncation are replaced by ours.
    #[serde(default)]
    pub tokenizer: PathBuf,
    /// A `tokenizer_config.json` whose settings adjust the tokenizer as `transformers` does when
    /// it loads the folder: `do_lower_case`, `strip_accents` and `tokenize_chinese_chars` for a
    /// BERT normaliser, `add_prefix_space` for a byte-level pre-tokenizer.
    #[serde(default)]
    pub tokenizer_config: Option<PathBuf>,
    /// Lowercase every text before tokenizing (sentence-transformers' `do_lower_case`).
    #[serde(default)]
    pub lowercase: Option<bool>,
    /// Which tensors the graph takes, in any order; when not set, the graph's own inputs among
    /// `input_ids`, `attention_mask` and `token_type_ids` (named as `input_names` says).
    #[serde(default)]
    pub inputs: Option<Vec<InputRole>>,
    /// Graph input names where they differ from the role names, e.g. `{ input_ids = "ids" }`.
    #[serde(default)]
    pub input_names: BTreeMap<InputRole, String>,
    /// The graph output to read: token states `[batch, seq, dim]`, or `[batch, dim]` when
    /// `pooling = "none"`. When not set: `last_hidden_state`, `token_embeddings` or
    /// `sentence_embedding`, whichever the graph has, or its only output; one that is already
    /// `[batch, dim]` is taken as pooled.
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub pooling: Option<Pooling>,
    /// Whether vectors are L2-normalised when the request does not say (default: true, or
    /// whether the folder's modules end with `Normalize`).
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Inputs longer than this are truncated (and counted as truncated).
    #[serde(default)]
    pub max_tokens: usize,
    /// Width of the pooled vector.
    #[serde(default)]
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
    /// The tiktoken encoding of token-id inputs on `/v1/embeddings` (decoded to text, then
    /// tokenized by the model's own tokenizer): `cl100k_base` unless set; `none` refuses them.
    #[serde(default)]
    pub token_ids_encoding: TokenIdsEncoding,
    /// Interchangeable graphs of the same model (e.g. `fp32`, exact, and `int8`, faster where
    /// the CPU has fast int8), each with its own `onnx`; the model's other settings are shared.
    /// With variants, `onnx` is not set on the model.
    #[serde(default)]
    pub variants: BTreeMap<String, VariantSpec>,
    /// Which variant serves: one of `variants`, or `auto` (the default with variants): `int8`
    /// where this CPU multiplies int8 exactly on its fast kernels (VNNI, AVX-VNNI, AMX), else
    /// the fastest in a short timed run. On a loaded model's own spec, the variant it is.
    #[serde(default)]
    pub variant: Option<String>,
    /// What was taken from `path`, and from which file, for `check-config` to show.
    #[serde(skip)]
    pub derived: Vec<Derived>,
}

/// One graph of a model with variants.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    pub onnx: PathBuf,
    /// The model's `graph_optimization` unless set.
    #[serde(default)]
    pub graph_optimization: Option<GraphOptimization>,
    /// The model's `resident_bytes` unless set.
    #[serde(default)]
    pub resident_bytes: Option<u64>,
}

/// `variant = "auto"`: chosen at load for this CPU.
pub const AUTO_VARIANT: &str = "auto";

/// One setting taken from an export folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub field: &'static str,
    pub value: String,
    /// The file it came from, relative to the folder.
    pub source: String,
}

/// How a spec meets its graph: what to feed, which output to read, and whether it is pooled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphPlan {
    pub feeds: Vec<(String, InputRole)>,
    pub output: String,
    pub pooling: Pooling,
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

/// What a model computes, and so which routes serve it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One dense vector per text: `/v1/embed`, `/v1/embeddings`.
    #[default]
    Embed,
    /// One relevance score per (query, document) pair: a cross-encoder, `/v1/rerank`.
    Rerank,
    /// One sparse vector over the vocabulary per text (SPLADE): `/v1/embed`, `/embed_sparse`.
    Sparse,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Embed => "embed",
            Task::Rerank => "rerank",
            Task::Sparse => "sparse",
        }
    }

    /// The routes that serve a model of this task.
    pub fn routes(self) -> &'static str {
        match self {
            Task::Embed => "/v1/embed and /v1/embeddings",
            Task::Rerank => "/v1/rerank, /v2/rerank and /rerank",
            Task::Sparse => "/v1/embed and /embed_sparse",
        }
    }
}

/// How a rerank model's logit becomes its relevance score, as sentence-transformers'
/// `CrossEncoder.predict` computes it: the activation saved with the model, else a sigmoid for a
/// one-label model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreActivation {
    /// `1 / (1 + e^-x)`: a score in 0..1.
    Sigmoid,
    /// The logit itself.
    Identity,
}

impl ScoreActivation {
    pub fn apply(self, logit: f32) -> f32 {
        match self {
            ScoreActivation::Sigmoid => 1.0 / (1.0 + (-logit).exp()),
            ScoreActivation::Identity => logit,
        }
    }
}

/// A tensor a graph may take; all are int64 `[batch, seq]`.
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
    /// The largest value of each dimension over the real tokens.
    Max,
    /// SPLADE's: the largest `log(1 + relu(x))` of each vocabulary entry over the real tokens,
    /// from the masked-language-model logits `[batch, seq, vocab]`.
    Splade,
    /// The output is already one vector per input.
    None,
}

impl ModelSpec {
    /// The spec of variant `name` as a model of its own: its graph, the rest shared, and
    /// `variant` naming it. `None` if there is no such variant.
    pub fn with_variant(&self, name: &str) -> Option<ModelSpec> {
        let v = self.variants.get(name)?;
        Some(ModelSpec {
            onnx: v.onnx.clone(),
            graph_optimization: v.graph_optimization.unwrap_or(self.graph_optimization),
            resident_bytes: v.resident_bytes.or(self.resident_bytes),
            variants: BTreeMap::new(),
            variant: Some(name.to_owned()),
            ..self.clone()
        })
    }

    /// The variant the configuration asks for: a name, `auto`, or `None` without variants.
    pub fn variant_policy(&self) -> Option<&str> {
        if self.variants.is_empty() {
            return None;
        }
        Some(self.variant.as_deref().unwrap_or(AUTO_VARIANT))
    }

    /// Whether every setting is known: a hub model's come from its files, fetched at load.
    pub fn is_complete(&self) -> bool {
        self.hf.is_none()
    }

    pub fn task(&self) -> Task {
        self.task.unwrap_or_default()
    }

    /// The default for requests that do not say (rerank scores and sparse vectors are never
    /// normalised).
    pub fn normalize(&self) -> bool {
        self.task() == Task::Embed && self.normalize.unwrap_or(true)
    }

    /// A rerank model's activation: its own, else a sigmoid (one-label models).
    pub fn activation(&self) -> ScoreActivation {
        self.activation.unwrap_or(ScoreActivation::Sigmoid)
    }

    /// Fills what a rerank or sparse model's task implies and its table did not say: a rerank
    /// model's output is one logit per pair (no pooling, one dimension), a sparse model's is
    /// pooled as SPLADE. Called once the folder (or hub) has been read.
    pub fn apply_task_defaults(&mut self) {
        match self.task() {
            Task::Embed => {}
            Task::Rerank => {
                self.pooling.get_or_insert(Pooling::None);
                if self.dimensions == 0 {
                    self.dimensions = 1;
                }
            }
            Task::Sparse => {
                self.pooling.get_or_insert(Pooling::Splade);
            }
        }
    }

    /// The graph input name of `role`.
    fn input_name(&self, role: InputRole) -> &str {
        self.input_names.get(&role).map_or(role.default_name(), String::as_str)
    }

    /// How this spec meets a graph with these inputs and outputs (each with its rank, when
    /// known): every input the spec feeds exists, every input the graph needs is fed, and the
    /// output exists.
    pub fn plan(&self, inputs: &[&str], outputs: &[(&str, Option<usize>)]) -> Result<GraphPlan, String> {
        const ROLES: [InputRole; 3] =
            [InputRole::InputIds, InputRole::AttentionMask, InputRole::TokenTypeIds];
        let feeds: Vec<(String, InputRole)> = match &self.inputs {
            Some(roles) => roles.iter().map(|&r| (self.input_name(r).to_owned(), r)).collect(),
            None => {
                let mut feeds = Vec::new();
                for name in inputs {
                    let Some(role) = ROLES.into_iter().find(|&r| self.input_name(r) == *name) else {
                        return Err(format!(
                            "the graph needs input {name:?}, which is none of input_ids, attention_mask, \
                             token_type_ids: name its role in `input_names`"
                        ));
                    };
                    feeds.push(((*name).to_owned(), role));
                }
                if !feeds.iter().any(|(_, r)| *r == InputRole::InputIds) {
                    return Err(format!(
                        "the graph has no input {:?} (it has {inputs:?})",
                        self.input_name(InputRole::InputIds)
                    ));
                }
                feeds
            }
        };
        if let Some((name, _)) = feeds.iter().find(|(name, _)| !inputs.contains(&name.as_str())) {
            return Err(format!("the graph has no input {name:?} (it has {inputs:?})"));
        }
        if let Some(missing) = inputs.iter().find(|g| !feeds.iter().any(|(n, _)| n == *g)) {
            return Err(format!("the graph needs input {missing:?}, which `inputs` does not list"));
        }
        let names: Vec<&str> = outputs.iter().map(|(n, _)| *n).collect();
        let pooling = self.pooling.unwrap_or(Pooling::Mean);
        if !self.output.is_empty() {
            let Some(chosen) = outputs.iter().find(|(n, _)| *n == self.output) else {
                return Err(format!("the graph has no output {:?} (it has {names:?})", self.output));
            };
            let pooling = if chosen.1 == Some(2) { Pooling::None } else { pooling };
            return Ok(GraphPlan { feeds, output: self.output.clone(), pooling });
        }
        let preferred: &[&str] = match self.task() {
            Task::Embed => &["last_hidden_state", "token_embeddings", "sentence_embedding"],
            Task::Rerank | Task::Sparse => &["logits"],
        };
        let chosen = preferred
            .iter()
            .find_map(|want| outputs.iter().find(|(n, _)| n == want))
            .or(if outputs.len() == 1 { outputs.first() } else { None })
            .ok_or_else(|| format!("set `output`: the graph has outputs {names:?}"))?;
        // An output that is already one vector per input needs no pooling.
        let pooling = if chosen.1 == Some(2) { Pooling::None } else { pooling };
        Ok(GraphPlan { feeds, output: chosen.0.to_owned(), pooling })
    }

    /// Problems with this spec that need no file access, as `field: message`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(repo) = &self.hf {
            let valid_part = |p: &str| {
                !p.is_empty()
                    && p != "."
                    && p != ".."
                    && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if !repo.split_once('/').is_some_and(|(org, name)| valid_part(org) && valid_part(name)) {
                out.push(format!("hf: {repo:?} is not a Hub model id like \"org/name\""));
            }
            match &self.revision {
                Some(r) if r.len() == 40 && r.chars().all(|c| c.is_ascii_hexdigit()) => {}
                Some(r) => out.push(format!(
                    "revision: {r:?} is not a commit: pin the 40 hex digits of one (a branch or tag can change)"
                )),
                None => out.push("revision: required with `hf`: the 40 hex digits of the commit to serve".to_owned()),
            }
            if self.path.is_some() {
                out.push("path: a model comes from `path` or from `hf`, not both".to_owned());
            }
        } else if self.revision.is_some() {
            out.push("revision: pins an `hf` model, which is not set".to_owned());
        }
        if self.hf.is_some() && !self.variants.is_empty() {
            out.push("variants: give each variant's `onnx`; a Hub model serves its own graph".to_owned());
        }
        for (file, hash) in &self.sha256 {
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                out.push(format!("sha256.{file}: not a sha256 (64 hex digits)"));
            }
        }
        if self.hf.is_some() {
            // The rest comes from the hub's files, checked when the model loads.
            return out;
        }
        let given =
            if self.path.is_some() { "not given and not found in `path`" } else { "required (or `path`)" };
        if !self.variants.is_empty() {
            if self.path.is_some() {
                out.push("variants: give each variant's `onnx`, not an export folder's `path`".to_owned());
            } else if !self.onnx.as_os_str().is_empty() {
                out.push("onnx: set each variant's `onnx` instead (`variants.<name>.onnx`)".to_owned());
            }
            for (name, v) in &self.variants {
                if name == AUTO_VARIANT
                    || name.is_empty()
                    || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
                {
                    out.push(format!(
                        "variants.{name}: a variant name is letters, digits, '-' and '_' (not \"auto\")"
                    ));
                }
                if v.onnx.as_os_str().is_empty() {
                    out.push(format!("variants.{name}.onnx: required"));
                }
            }
            if let Some(v) =
                self.variant.as_deref().filter(|v| *v != AUTO_VARIANT && !self.variants.contains_key(*v))
            {
                out.push(format!("variant: {v:?} is neither \"auto\" nor one of `variants`"));
            }
        } else if self.variant.is_some() {
            out.push("variant: chooses among `variants`, which are not set".to_owned());
        } else if self.onnx.as_os_str().is_empty() {
            out.push(format!("onnx: {given}"));
        }
        if self.tokenizer.as_os_str().is_empty() {
            out.push(format!("tokenizer: {given}"));
        }
        if self.pooling.is_none() && self.task() == Task::Embed {
            out.push(format!("pooling: {given}"));
        }
        match self.task() {
            Task::Rerank if self.dimensions > 1 => out.push(format!(
                "dimensions: a rerank model gives one score per pair; this one has {} labels",
                self.dimensions
            )),
            Task::Rerank => {}
            Task::Sparse if self.dimensions == 0 => {
                out.push("dimensions: the size of the model's vocabulary (its logits' last axis)".to_owned())
            }
            _ if self.dimensions == 0 => out.push("dimensions: must be at least 1".to_owned()),
            _ => {}
        }
        if self.activation.is_some() && self.task() != Task::Rerank {
            out.push("activation: applies to rerank models (task = \"rerank\") only".to_owned());
        }
        if self.pooling == Some(Pooling::Splade) && self.task() != Task::Sparse {
            out.push("pooling: splade is for sparse models (task = \"sparse\")".to_owned());
        }
        if self.max_tokens < 2 {
            out.push("max_tokens: must be at least 2 (room for the special tokens)".to_owned());
        }
        if self.file.is_some() && self.path.is_none() && self.hf.is_none() {
            out.push("file: names a file inside `path`, which is not set".to_owned());
        }
        if let Some(inputs) = &self.inputs
            && !inputs.contains(&InputRole::InputIds)
        {
            out.push("inputs: must include \"input_ids\"".to_owned());
        }
        if let Some(d) = &self.default_prompt
            && !self.prompts.contains_key(d)
        {
            out.push(format!("default_prompt: {d:?} is not one of `prompts`"));
        }
        for role in self.input_names.keys() {
            if self.inputs.as_ref().is_some_and(|inputs| !inputs.contains(role)) {
                out.push(format!(
                    "input_names.{}: renames an input not listed in `inputs`",
                    role.default_name()
                ));
            }
        }
        out
    }
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
