//! Export folders: what sentence-transformers (`model.save(...)`, `backend="onnx"`) and Optimum
//! (`optimum-cli export onnx`) write, read the way sentence-transformers reads them.
//!
//! | setting | from |
//! |---|---|
//! | `onnx` | `file`, else `onnx/model.onnx`, else `model.onnx` |
//! | `tokenizer`, `tokenizer_config` | `tokenizer.json`, `tokenizer_config.json` |
//! | `pooling`, `dimensions` | the `Pooling` module's `config.json` (`modules.json` says where), in sentence-transformers 6's form (`pooling_mode`, `embedding_dimension`) or the older one |
//! | `normalize` | whether `modules.json` has a `Normalize` module |
//! | `max_tokens` | `sentence_bert_config.json` `max_seq_length`, else `tokenizer_config.json` `model_max_length`, else `config.json` `max_position_embeddings` |
//! | `lowercase` | `sentence_bert_config.json` `do_lower_case` |
//! | `prompts`, `default_prompt` | `config_sentence_transformers.json` `prompts`, `default_prompt_name` |
//! | `dimensions` (no Pooling module) | `config.json` `hidden_size` |
//! | `task` | `rerank` when `config.json` `architectures` has a `...ForSequenceClassification` (a CrossEncoder), `sparse` when `modules.json` has a `SpladePooling` module (a SparseEncoder) |
//! | `activation` (rerank) | `config_sentence_transformers.json` or `config.json` `sentence_transformers` `activation_fn` |
//! | `dimensions` (rerank; sparse) | `config.json` `id2label`'s size; the `SpladePooling` config's `embedding_dimension`, else `config.json` `vocab_size` |
//!
//! Graph inputs and output are matched at load (see [`ModelSpec::plan`]). Any key the
//! configuration sets wins over the folder. A module the ONNX graph cannot contain (`Dense`, a
//! router, ...) is refused unless the configuration says what to read (`output` and `pooling`).

use std::path::PathBuf;

use serde_json::Value;

use super::{Derived, ModelSpec, Pooling, ScoreActivation, Task};

/// Fills what `spec` leaves unset from its `path` folder, then what its task implies; returns
/// problems as `field: message`.
pub fn derive(spec: &mut ModelSpec) -> Vec<String> {
    let problems = match spec.path.clone() {
        None => Vec::new(),
        Some(dir) if !dir.is_dir() => vec![format!("path: {} is not a folder", dir.display())],
        Some(dir) => {
            let mut folder = Folder { dir, derived: Vec::new(), problems: Vec::new() };
            folder.fill(spec);
            spec.derived = folder.derived;
            folder.problems
        }
    };
    spec.apply_task_defaults();
    problems
}

struct Folder {
    dir: PathBuf,
    derived: Vec<Derived>,
    problems: Vec<String>,
}

impl Folder {
    fn note(&mut self, field: &'static str, value: impl std::fmt::Display, source: &str) {
        self.derived.push(Derived { field, value: value.to_string(), source: source.to_owned() });
    }

    /// A JSON file of the folder, if it is there; a file that is there but unreadable is a
    /// problem.
    fn json(&mut self, name: &str) -> Option<Value> {
        let path = self.dir.join(name);
        if !path.is_file() {
            return None;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(v) => Some(v),
            Err(e) => {
                self.problems.push(format!("path: {}: {e}", path.display()));
                None
            }
        }
    }

    fn fill(&mut self, spec: &mut ModelSpec) {
        let dir = self.dir.clone();
        if spec.onnx.as_os_str().is_empty() {
            let candidates: Vec<PathBuf> = match &spec.file {
                Some(file) => vec![file.clone()],
                None => vec![PathBuf::from("onnx/model.onnx"), PathBuf::from("model.onnx")],
            };
            match candidates.iter().find(|f| dir.join(f).is_file()) {
                Some(file) => {
                    spec.onnx = dir.join(file);
                    self.note(
                        "onnx",
                        file.display(),
                        if spec.file.is_some() { "file" } else { "the folder" },
                    );
                }
                None => self.problems.push(format!(
                    "{}: {} has no {}",
                    if spec.file.is_some() { "file" } else { "path" },
                    dir.display(),
                    candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(" or ")
                )),
            }
        }
        if spec.tokenizer.as_os_str().is_empty() {
            let path = dir.join("tokenizer.json");
            if path.is_file() {
                spec.tokenizer = path;
                self.note("tokenizer", "tokenizer.json", "the folder");
            } else {
                self.problems.push(format!("path: {} has no tokenizer.json", dir.display()));
            }
        }
        let tokenizer_config = self.json("tokenizer_config.json");
        if spec.tokenizer_config.is_none() && tokenizer_config.is_some() {
            spec.tokenizer_config = Some(dir.join("tokenizer_config.json"));
            self.note("tokenizer_config", "tokenizer_config.json", "the folder");
        }

        let modules = self.json("modules.json");
        let modules: Vec<(String, String)> = modules
            .as_ref()
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|m| {
                        let text = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                        (text("type"), text("path"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let kind = |t: &str| t.rsplit('.').next().unwrap_or(t).to_owned();
        let model_config = self.json("config.json");
        self.task(spec, model_config.as_ref(), &modules);
        let pooling_module = modules.iter().find(|(t, _)| kind(t) == "Pooling").map(|(_, p)| p.clone());
        let has_normalize = modules.iter().any(|(t, _)| kind(t) == "Normalize");
        let configured = !spec.output.is_empty() && spec.pooling.is_some();
        for (t, _) in &modules {
            let known = matches!(
                kind(t).as_str(),
                "Transformer" | "Pooling" | "Normalize" | "MLMTransformer" | "SpladePooling"
            );
            if !known && !configured {
                self.problems.push(format!(
                    "path: modules.json has a {} module, which the ONNX graph's token states do not include; \
                     set `output` (a graph output that includes it) and `pooling`",
                    kind(t)
                ));
            }
        }

        let pooling_file = pooling_module.map(|p| format!("{}/config.json", p.trim_end_matches('/')));
        let pooling_config = pooling_file.as_deref().and_then(|f| self.json(f));
        if let (Some(config), Some(file)) = (&pooling_config, &pooling_file) {
            if spec.pooling.is_none() {
                let modes = pooling_modes(config);
                let pooling = match modes.as_slice() {
                    [mode] => match mode.as_str() {
                        "cls" => Some(Pooling::Cls),
                        "mean" => Some(Pooling::Mean),
                        "max" => Some(Pooling::Max),
                        "lasttoken" => Some(Pooling::LastToken),
                        _ => None,
                    },
                    _ => None,
                };
                match pooling {
                    Some(p) => {
                        spec.pooling = Some(p);
                        self.note("pooling", format!("{p:?}").to_lowercase(), file);
                    }
                    None => self.problems.push(format!(
                        "pooling: {file} asks for {modes:?}; embedserve pools by one of cls, mean, max or \
                         lasttoken (set `pooling` to override)"
                    )),
                }
            }
            if config.get("include_prompt").and_then(Value::as_bool) == Some(false) {
                self.problems.push(format!(
                    "path: {file} pools without the prompt's tokens (include_prompt = false), which embedserve \
                     does not do"
                ));
            }
            if spec.dimensions == 0
                && let Some(d) = ["embedding_dimension", "word_embedding_dimension"]
                    .iter()
                    .find_map(|k| config.get(*k).and_then(Value::as_u64))
            {
                spec.dimensions = d as usize;
                self.note("dimensions", d, file);
            }
        }
        if spec.normalize.is_none() && !modules.is_empty() && spec.task() == Task::Embed {
            spec.normalize = Some(has_normalize);
            self.note("normalize", has_normalize, "modules.json");
        }

        let st_config = self.json("sentence_bert_config.json");
        if spec.max_tokens == 0 {
            let found = [
                ("sentence_bert_config.json", st_config.as_ref(), "max_seq_length"),
                ("tokenizer_config.json", tokenizer_config.as_ref(), "model_max_length"),
                ("config.json", model_config.as_ref(), "max_position_embeddings"),
            ]
            .into_iter()
            .find_map(|(file, json, key)| {
                // transformers writes a huge model_max_length when the model has none.
                let n = json?.get(key)?.as_u64().filter(|&n| n > 0 && n < 1_000_000)?;
                Some((file, n))
            });
            if let Some((file, n)) = found {
                spec.max_tokens = n as usize;
                self.note("max_tokens", n, file);
            }
        }
        if spec.dimensions == 0
            && spec.task() == Task::Embed
            && let Some(d) = model_config.as_ref().and_then(|c| c.get("hidden_size")).and_then(Value::as_u64)
        {
            spec.dimensions = d as usize;
            self.note("dimensions", d, "config.json");
        }
        if spec.lowercase.is_none()
            && let Some(lower) =
                st_config.as_ref().and_then(|c| c.get("do_lower_case")).and_then(Value::as_bool)
        {
            spec.lowercase = Some(lower);
            self.note("lowercase", lower, "sentence_bert_config.json");
        }
        let st_model_config = self.json("config_sentence_transformers.json");
        if spec.task() == Task::Rerank && spec.activation.is_none() {
            let saved = [
                (
                    "config_sentence_transformers.json",
                    st_model_config.as_ref().and_then(|c| c.get("activation_fn")),
                ),
                (
                    "config.json",
                    model_config.as_ref().and_then(|c| c.get("sentence_transformers")?.get("activation_fn")),
                ),
            ];
            if let Some((file, name)) = saved.into_iter().find_map(|(f, v)| Some((f, v?.as_str()?))) {
                match name.rsplit('.').next() {
                    Some("Sigmoid") => spec.activation = Some(ScoreActivation::Sigmoid),
                    Some("Identity") => spec.activation = Some(ScoreActivation::Identity),
                    _ => self.problems.push(format!(
                        "activation: {file} saves activation_fn {name:?}; embedserve applies Sigmoid or Identity \
                         (set `activation` to override)"
                    )),
                }
                if let Some(a) = spec.activation {
                    self.note("activation", format!("{a:?}").to_lowercase(), file);
                }
            }
        }
        if let Some(config) = st_model_config {
            let file = "config_sentence_transformers.json";
            if spec.prompts.is_empty()
                && let Some(prompts) = config.get("prompts").and_then(Value::as_object)
            {
                for (name, text) in prompts {
                    match text.as_str() {
                        Some(text) => {
                            spec.prompts.insert(name.clone(), text.to_owned());
                        }
                        None => self.problems.push(format!("path: {file}: prompts.{name} is not a string")),
                    }
                }
                if !spec.prompts.is_empty() {
                    self.note("prompts", format!("{:?}", spec.prompts), file);
                }
            }
            if spec.default_prompt.is_none()
                && let Some(name) = config.get("default_prompt_name").and_then(Value::as_str)
            {
                spec.default_prompt = Some(name.to_owned());
                self.note("default_prompt", name, file);
            }
        }
    }

    /// The task a CrossEncoder or SparseEncoder folder implies, and the settings that go with
    /// it: the number of labels, SPLADE pooling and the vocabulary size.
    fn task(&mut self, spec: &mut ModelSpec, config: Option<&Value>, modules: &[(String, String)]) {
        let kind = |t: &str| t.rsplit('.').next().unwrap_or(t).to_owned();
        let classifier =
            config.and_then(|c| c.get("architectures")).and_then(Value::as_array).is_some_and(|a| {
                a.iter().filter_map(Value::as_str).any(|a| a.ends_with("ForSequenceClassification"))
            });
        let splade = modules.iter().find(|(t, _)| kind(t) == "SpladePooling").map(|(_, p)| p.clone());
        if spec.task.is_none() {
            if classifier {
                spec.task = Some(Task::Rerank);
                self.note("task", "rerank", "config.json");
            } else if splade.is_some() {
                spec.task = Some(Task::Sparse);
                self.note("task", "sparse", "modules.json");
            }
        }
        match spec.task() {
            Task::Embed => {}
            Task::Rerank => {
                if spec.dimensions == 0
                    && let Some(labels) = config.and_then(|c| c.get("id2label")).and_then(Value::as_object)
                {
                    spec.dimensions = labels.len();
                    self.note("dimensions", labels.len(), "config.json");
                }
            }
            Task::Sparse => {
                let file = splade.map(|p| format!("{}/config.json", p.trim_end_matches('/')));
                let pooling_config = file.as_deref().and_then(|f| self.json(f));
                if let (Some(c), Some(file)) = (&pooling_config, &file) {
                    let strategy = c.get("pooling_strategy").and_then(Value::as_str).unwrap_or("max");
                    let activation = c.get("activation_function").and_then(Value::as_str).unwrap_or("relu");
                    if (strategy, activation) != ("max", "relu") && spec.pooling.is_none() {
                        self.problems.push(format!(
                            "pooling: {file} pools by {strategy} of {activation}; embedserve's SPLADE pooling is \
                             the max of log(1 + relu(x))"
                        ));
                    }
                    if spec.pooling.is_none() {
                        spec.pooling = Some(Pooling::Splade);
                        self.note("pooling", "splade", file);
                    }
                }
                if spec.dimensions == 0 {
                    let found = [
                        (file.as_deref().unwrap_or_default(), pooling_config.as_ref(), "embedding_dimension"),
                        ("config.json", config, "vocab_size"),
                    ]
                    .into_iter()
                    .find_map(|(f, json, key)| Some((f.to_owned(), json?.get(key)?.as_u64()?)));
                    if let Some((file, d)) = found {
                        spec.dimensions = d as usize;
                        self.note("dimensions", d, &file);
                    }
                }
            }
        }
    }
}

/// The pooling modes a sentence-transformers Pooling config asks for: `pooling_mode` (a name or a
/// list, sentence-transformers 6) or the older `pooling_mode_*` flags (none set: mean), as
/// sentence-transformers reads them.
fn pooling_modes(config: &Value) -> Vec<String> {
    match config.get("pooling_mode") {
        Some(Value::String(mode)) => return vec![mode.clone()],
        Some(Value::Array(modes)) => {
            return modes.iter().filter_map(Value::as_str).map(str::to_owned).collect();
        }
        _ => {}
    }
    let legacy = [
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_mean_tokens", "mean"),
        ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
        ("pooling_mode_weightedmean_tokens", "weightedmean"),
        ("pooling_mode_lasttoken", "lasttoken"),
    ];
    let on: Vec<String> = legacy
        .iter()
        .filter(|(key, _)| config.get(*key).and_then(Value::as_bool).unwrap_or(false))
        .map(|(_, mode)| (*mode).to_owned())
        .collect();
    if on.is_empty() { vec!["mean".to_owned()] } else { on }
}
