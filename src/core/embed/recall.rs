//! The embedding cache: the vectors of recent inputs, so a repeated input costs neither
//! tokenizing nor a model run. Kept as the model computed them (full width, not normalised),
//! before the output options, so `dimensions`, `normalize` and every encoding reuse them.
//!
//! - Keyed by SHA-256 over the tenant's scope, the model (its id and its whole spec, so a
//!   reloaded model with other files or pooling never serves old vectors), the prompt and the
//!   truncation settings, and the text. The scope is the tenant's id: a hit's timing would
//!   otherwise tell one tenant which texts another has sent. Tenants with
//!   `share_embedding_cache = true` share one scope among themselves.
//! - Bounded in bytes (`[cache] embeddings_max_bytes`; 0, the default, turns it off) by `moka`
//!   (TinyLFU admission, LRU eviction), each entry weighed as its vector plus its key.
//! - Dense embedding models only: a sparse model's output is vocabulary-wide.
//! - A second, shared tier (optional, [`SharedVectors`]: Redis, `[cache] embeddings_redis_url`)
//!   serves what this process has not kept, to every replica and Lambda instance: asked for the
//!   local misses in one round trip, given what was computed in one more. A tier that fails or
//!   is slow is skipped for a second; the request is computed as if there were none.
//! - Hits are not billed: a request's `usage.prompt_tokens` (and the tenant's tokens per minute
//!   and usage records) count the tokens the model ran; `usage.cached_tokens` says how many
//!   more were served from the cache. The request still counts against requests per second.

use std::sync::Arc;

use moka::notification::RemovalCause;
use moka::sync::Cache;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::models::engine::tokenize::{Direction, EncodeOptions};
use crate::models::spec::ModelSpec;

/// A cached input: its vector as the model returned it and the tokens it was.
#[derive(Clone)]
pub(crate) struct Recalled {
    pub vector: Arc<[f32]>,
    pub tokens: u32,
}

pub(crate) type Key = [u8; 32];

/// Bytes an entry costs besides its vector: the key, moka's bookkeeping, the `Arc`.
const ENTRY_OVERHEAD: u32 = 128;

/// A cache every replica shares: vectors by key, as bytes, each kept for a while.
#[async_trait::async_trait]
pub(crate) trait SharedVectors: Send + Sync {
    /// The vector of each key it holds, in order; `None` if it failed (then all are misses).
    async fn get_many(&self, keys: &[Key]) -> Option<Vec<Option<Recalled>>>;
    /// Keeps each (key, vector); failures are the tier's to count.
    async fn put_many(&self, entries: &[(Key, Recalled)]);
}

impl Recalled {
    /// The tier's bytes: the tokens (u32, little-endian), then the values (f32, little-endian).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 4 * self.vector.len());
        out.extend_from_slice(&self.tokens.to_le_bytes());
        for v in self.vector.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// [`Self::to_bytes`] read back; `None` for bytes of another shape.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (tokens, values) = bytes.split_first_chunk::<4>()?;
        if values.is_empty() || values.len() % 4 != 0 {
            return None;
        }
        let vector = values.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Some(Self { vector, tokens: u32::from_le_bytes(*tokens) })
    }
}

pub(crate) struct VectorCache {
    vectors: Option<Cache<Key, Recalled>>,
    shared: Option<Arc<dyn SharedVectors>>,
    metrics: Arc<Metrics>,
}

/// Everything but the text that decides a vector, hashed once per request.
pub(crate) struct Scope {
    prefix: Sha256,
    model: String,
}

impl VectorCache {
    /// A cache of at most `max_bytes` in this process (0: none), and the `shared` tier if any
    /// (which needs the local one).
    pub(crate) fn new(max_bytes: u64, shared: Option<Arc<dyn SharedVectors>>, metrics: Arc<Metrics>) -> Self {
        let vectors = (max_bytes > 0).then(|| {
            let evictions = metrics.embedding_cache_evictions.clone();
            Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &Key, v: &Recalled| {
                    u32::try_from(v.vector.len() * 4).unwrap_or(u32::MAX).saturating_add(ENTRY_OVERHEAD)
                })
                .eviction_listener(move |_, _, cause| {
                    if cause == RemovalCause::Size {
                        evictions.inc();
                    }
                })
                .build()
        });
        let shared = shared.filter(|_| vectors.is_some());
        Self { vectors, shared, metrics }
    }

    /// The scope of `tenant_scope`'s requests to `model_id` with `options`, or `None` when
    /// nothing is cached for them.
    pub(crate) fn scope(
        &self,
        tenant_scope: &str,
        model_id: &str,
        variant: &str,
        spec: &ModelSpec,
        options: &EncodeOptions,
    ) -> Option<Scope> {
        self.vectors.as_ref()?;
        let mut prefix = Sha256::new();
        for part in [tenant_scope, model_id, variant, &format!("{spec:?}"), &options.prompt] {
            prefix.update((part.len() as u64).to_le_bytes());
            prefix.update(part.as_bytes());
        }
        let direction = match options.direction {
            Direction::Right => 0u8,
            Direction::Left => 1,
        };
        prefix.update([u8::from(options.truncate), direction]);
        prefix.update(options.max_tokens.map_or(u64::MAX, |m| m as u64).to_le_bytes());
        Some(Scope { prefix, model: model_id.to_owned() })
    }

    /// The cached vector of each key, in order (`None` where there is none): from this
    /// process, else from the shared tier (and kept here then).
    pub(crate) async fn get(&self, scope: &Scope, keys: &[Key]) -> Vec<Option<Recalled>> {
        let Some(vectors) = &self.vectors else { return vec![None; keys.len()] };
        let mut found: Vec<Option<Recalled>> = keys.iter().map(|k| vectors.get(k)).collect();
        let local = found.iter().filter(|f| f.is_some()).count();
        let mut shared_hits = 0;
        if let Some(shared) = self.shared.as_ref().filter(|_| local < keys.len()) {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
            let asked: Vec<Key> = missing.iter().map(|&i| keys[i]).collect();
            if let Some(answers) = shared.get_many(&asked).await {
                for (i, answer) in missing.into_iter().zip(answers) {
                    if let Some(recalled) = answer {
                        vectors.insert(keys[i], recalled.clone());
                        found[i] = Some(recalled);
                        shared_hits += 1;
                    }
                }
            }
        }
        let m = &self.metrics;
        let count = |result: &str, n: usize| {
            m.embedding_cache_lookups.with_label_values(&[&scope.model, result]).inc_by(n as u64);
        };
        count("hit", local);
        count("shared_hit", shared_hits);
        count("miss", keys.len() - local - shared_hits);
        found
    }

    /// Keeps each key's vector, here and in the shared tier.
    pub(crate) async fn put(&self, keys: impl IntoIterator<Item = Key>, computed: &[Recalled]) {
        let Some(vectors) = &self.vectors else { return };
        let entries: Vec<(Key, Recalled)> = keys.into_iter().zip(computed.iter().cloned()).collect();
        for (key, recalled) in &entries {
            vectors.insert(*key, recalled.clone());
        }
        // Applies the inserts (and evictions) to the weighed size now rather than later.
        vectors.run_pending_tasks();
        self.metrics.embedding_cache_bytes.set(i64::try_from(vectors.weighted_size()).unwrap_or(i64::MAX));
        if let Some(shared) = &self.shared
            && !entries.is_empty()
        {
            shared.put_many(&entries).await;
        }
    }
}

impl Scope {
    /// The key of `text` in this scope.
    pub(crate) fn key(&self, text: &str) -> Key {
        let mut hasher = self.prefix.clone();
        hasher.update(text.as_bytes());
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        use figment::providers::{Format, Toml};
        let text =
            "onnx = \"m.onnx\"\ntokenizer = \"t.json\"\npooling = \"mean\"\ndimensions = 4\nmax_tokens = 8\n";
        figment::Figment::from(Toml::string(text)).extract().unwrap()
    }

    fn recalled(x: f32) -> Recalled {
        Recalled { vector: Arc::from(vec![x; 4]), tokens: 3 }
    }

    #[test]
    fn a_vector_survives_its_bytes_and_other_shapes_are_refused() {
        let r = Recalled { vector: Arc::from(vec![0.5, -1.25, f32::MIN_POSITIVE]), tokens: 7 };
        let back = Recalled::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!((back.vector.to_vec(), back.tokens), (r.vector.to_vec(), 7));
        for bad in [&[][..], &[1, 2, 3][..], &[0, 0, 0, 0][..], &[0, 0, 0, 0, 1][..]] {
            assert!(Recalled::from_bytes(bad).is_none());
        }
    }

    #[tokio::test]
    async fn a_vector_is_found_only_in_its_own_scope_model_and_options() {
        let cache = VectorCache::new(1 << 20, None, Arc::new(Metrics::new()));
        let options = EncodeOptions::truncating();
        let acme = cache.scope("acme", "m", "", &spec(), &options).unwrap();
        cache.put([acme.key("a cat")], &[recalled(1.0)]).await;
        let found = cache.get(&acme, &[acme.key("a cat"), acme.key("a dog")]).await;
        assert_eq!(found[0].as_ref().map(|r| r.vector[0]), Some(1.0));
        assert!(found[1].is_none());
        let others = [
            cache.scope("globex", "m", "", &spec(), &options).unwrap(),
            cache.scope("acme", "n", "", &spec(), &options).unwrap(),
            cache.scope("acme", "m", "", &ModelSpec { dimensions: 8, ..spec() }, &options).unwrap(),
            cache.scope("acme", "m", "fp32", &spec(), &options).unwrap(),
            cache
                .scope(
                    "acme",
                    "m",
                    "",
                    &spec(),
                    &EncodeOptions { prompt: "query: ".into(), ..options.clone() },
                )
                .unwrap(),
            cache
                .scope("acme", "m", "", &spec(), &EncodeOptions { max_tokens: Some(8), ..options.clone() })
                .unwrap(),
            cache
                .scope("acme", "m", "", &spec(), &EncodeOptions { truncate: false, ..options.clone() })
                .unwrap(),
        ];
        for scope in &others {
            assert!(cache.get(scope, &[scope.key("a cat")]).await[0].is_none());
        }
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_bytes_and_off_means_nothing_kept() {
        let cache = VectorCache::new(64 * 1024, None, Arc::new(Metrics::new()));
        let scope = cache.scope("t", "m", "", &spec(), &EncodeOptions::truncating()).unwrap();
        let keys: Vec<Key> = (0..10_000).map(|i| scope.key(&format!("text {i}"))).collect();
        let vectors: Vec<Recalled> = (0..10_000).map(|i| recalled(i as f32)).collect();
        cache.put(keys, &vectors).await;
        let kept = cache.vectors.as_ref().unwrap();
        kept.run_pending_tasks();
        assert!(kept.weighted_size() <= 64 * 1024, "{} bytes", kept.weighted_size());
        let off = VectorCache::new(0, None, Arc::new(Metrics::new()));
        assert!(off.scope("t", "m", "", &spec(), &EncodeOptions::truncating()).is_none());
    }
}
