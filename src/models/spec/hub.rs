//! Models from the Hugging Face Hub, pinned to a commit: `hf = "org/name"` with a 40-hex
//! `revision`. The export folder's files are fetched when the model first loads (at start for
//! preloaded ones) into the Hugging Face cache layout under `HF_HOME` (`$HF_HOME/hub/models--org--
//! name/{blobs,snapshots/<commit>}`), where files that Python's `huggingface_hub` already fetched
//! are found and reused; then the snapshot folder is read like any export folder
//! (`models::folder`). Downloads go through the `hf-hub` crate; `HF_ENDPOINT` and `HF_TOKEN`
//! (else the cache's token file) are honoured, `HF_HUB_CACHE` too, and `HF_HUB_OFFLINE=1` reads
//! the cache only, never the network. A file listed in `sha256` is checked every time it is used, cached or not.

use std::path::{Path, PathBuf};

use hf_hub::api::tokio::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use sha2::{Digest, Sha256};

use super::ModelSpec;

/// Why a hub model's files are not there; safe to show the client (no local paths).
#[derive(Debug, thiserror::Error)]
#[error("{repo}@{short}: {file}: {reason}")]
pub struct HubError {
    pub repo: String,
    short: String,
    pub file: String,
    pub reason: String,
}

/// Files of an export folder that may be absent.
const OPTIONAL: [&str; 6] = [
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "tokenizer_config.json",
    "config.json",
    "special_tokens_map.json",
];

/// Whether `HF_HUB_OFFLINE` asks for the cache only (as `huggingface_hub` reads it).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// The hub cache folder as `huggingface_hub` finds it: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; none when there is no home
/// either (set `HF_HOME`, e.g. to `/tmp/hf` on Lambda).
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|home| home.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|cache| cache.join("huggingface/hub")))
        .or_else(|| var("HOME").map(|home| home.join(".cache/huggingface/hub")))
}

/// Fetches (or finds in the cache) the files of `spec`'s hub model and returns the snapshot
/// folder holding them.
pub async fn fetch(spec: &ModelSpec) -> Result<PathBuf, HubError> {
    let repo_id = spec.hf.clone().unwrap_or_default();
    let revision = spec.revision.clone().unwrap_or_default();
    let fetcher = Fetcher::new(&repo_id, &revision)?;
    let onnx = spec.file.as_ref().map_or("onnx/model.onnx".to_owned(), |f| f.to_string_lossy().into_owned());
    for file in OPTIONAL {
        fetcher.get(file, false).await?;
    }
    fetcher.get("tokenizer.json", true).await?;
    // The Pooling module's config, where modules.json says.
    let modules = fetcher.snapshot.join("modules.json");
    if let Ok(text) = std::fs::read_to_string(&modules)
        && let Ok(serde_json::Value::Array(list)) = serde_json::from_str(&text)
    {
        for module in list {
            let kind = module.get("type").and_then(|t| t.as_str()).unwrap_or_default();
            let path = module.get("path").and_then(|p| p.as_str()).unwrap_or_default();
            if kind.ends_with("Pooling") && !path.is_empty() && !path.contains("..") {
                fetcher.get(&format!("{}/config.json", path.trim_end_matches('/')), false).await?;
            }
        }
    }
    fetcher.get(&onnx, true).await?;
    // Weights over 2 GB live beside the graph.
    fetcher.get(&format!("{onnx}_data"), false).await?;
    // Hashing a large file takes seconds: on the blocking pool, never on the runtime.
    let (snapshot, listed) = (fetcher.snapshot.clone(), spec.sha256.clone());
    let checked = tokio::task::spawn_blocking(move || check_sha256(&snapshot, &listed))
        .await
        .map_err(|e| fetcher.error("", format!("the sha256 check failed: {e}")))?;
    if let Err((file, reason)) = checked {
        return Err(fetcher.error(&file, reason));
    }
    Ok(fetcher.snapshot)
}

/// Checks each listed file of `snapshot` against its sha256, reading it in pieces; the first
/// mismatch as (file, reason). Blocking.
fn check_sha256(
    snapshot: &Path,
    listed: &std::collections::BTreeMap<String, String>,
) -> Result<(), (String, String)> {
    for (file, want) in listed {
        let hashed = std::fs::File::open(snapshot.join(file)).and_then(|f| {
            let mut hasher = Sha256::new();
            std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, f), &mut hasher)?;
            Ok(hex::encode(hasher.finalize()))
        });
        let Ok(got) = hashed else {
            return Err((file.clone(), "listed in sha256 but not in the model".to_owned()));
        };
        if !got.eq_ignore_ascii_case(want) {
            return Err((file.clone(), format!("sha256 is {got}, expected {want}")));
        }
    }
    Ok(())
}

struct Fetcher {
    repo_id: String,
    revision: String,
    /// `snapshots/<revision>` in the cache.
    snapshot: PathBuf,
    /// `.no_exist/<revision>`: files the hub said it does not have, as `huggingface_hub` records.
    no_exist: PathBuf,
    api: Option<hf_hub::api::tokio::ApiRepo>,
}

impl Fetcher {
    fn new(repo_id: &str, revision: &str) -> Result<Self, HubError> {
        let repo = Repo::with_revision(repo_id.to_owned(), RepoType::Model, revision.to_owned());
        let Some(dir) = cache_dir() else {
            let short = revision.chars().take(12).collect();
            let reason = "no cache folder: set HF_HOME (no HOME either)".to_owned();
            return Err(HubError { repo: repo_id.to_owned(), short, file: String::new(), reason });
        };
        let cache = Cache::new(dir);
        let folder = cache.path().join(repo.folder_name());
        let mut fetcher = Fetcher {
            repo_id: repo_id.to_owned(),
            revision: revision.to_owned(),
            snapshot: folder.join("snapshots").join(revision),
            no_exist: folder.join(".no_exist").join(revision),
            api: None,
        };
        if !offline() {
            // The token: HF_TOKEN, else the token file `huggingface-cli login` leaves in HF_HOME.
            let mut builder = ApiBuilder::from_cache(cache).with_progress(false);
            if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()) {
                builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_owned());
            }
            if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
                builder = builder.with_token(Some(token));
            }
            let api =
                builder.build().map_err(|e| fetcher.error("", format!("cannot set up downloads: {e}")))?;
            fetcher.api = Some(api.repo(repo));
        }
        Ok(fetcher)
    }

    fn error(&self, file: &str, reason: impl Into<String>) -> HubError {
        HubError {
            repo: self.repo_id.clone(),
            short: self.revision.chars().take(12).collect(),
            file: file.to_owned(),
            reason: reason.into(),
        }
    }

    /// `file` in the snapshot, downloading it if it is not cached. A `required` file that
    /// cannot be had is an error; an optional one the hub does not have is skipped.
    async fn get(&self, file: &str, required: bool) -> Result<(), HubError> {
        if self.snapshot.join(file).is_file() || (!required && self.no_exist.join(file).exists()) {
            return Ok(());
        }
        let Some(api) = &self.api else {
            if required {
                return Err(self.error(file, "not in the cache, and HF_HUB_OFFLINE forbids downloading it"));
            }
            return Ok(());
        };
        match api.download(file).await {
            Ok(path) if path.starts_with(&self.snapshot) => Ok(()),
            Ok(_) => Err(self.error(file, "the hub answered with another commit than the pinned revision")),
            Err(ApiError::RequestError(e)) if e.status().is_some_and(|s| s.as_u16() == 404) && !required => {
                mark_absent(&self.no_exist.join(file));
                Ok(())
            }
            Err(ApiError::RequestError(e)) => Err(self.error(
                file,
                match e.status() {
                    Some(status) => format!("download failed: HTTP {status}"),
                    None => format!("download failed: {}", without_url(&e)),
                },
            )),
            Err(e) => Err(self.error(file, format!("download failed: {e}"))),
        }
    }
}

/// Records that the hub has no such file for this commit (an empty marker, as
/// `huggingface_hub` writes).
fn mark_absent(path: &Path) {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(path, b"");
}

/// A request error's message without its URL (which may carry a private endpoint).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "the hub");
    }
    text
}
