//! How vectors leave the core: one list in one encoding (float, or base64 little-endian f32
//! bytes), or one list per output type (`embedding_types`: float, int8, uint8, binary, ubinary,
//! as Cohere and sentence-transformers define them).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    /// Little-endian f32 bytes, base64-encoded.
    Base64,
}

/// One vector as the client asked for it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
    Int8(Vec<i8>),
    Uint8(Vec<u8>),
}

/// An output type of `/v1/embed`'s `embedding_types`, as Cohere and sentence-transformers
/// define them, computed from the final vector (after `dimensions` and normalisation):
/// - `int8`: `round(127 x)`, clamped to -127..=127 (a normalised vector's values are in -1..=1);
/// - `uint8`: that plus 128 (1..=255);
/// - `ubinary`: one bit per value, 1 where the value is positive, eight to a byte, first value
///   in the highest bit;
/// - `binary`: those bytes minus 128, as int8;
/// - `base64`: the float values' little-endian f32 bytes, base64-encoded (Cohere's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingType {
    Float,
    Int8,
    Uint8,
    Binary,
    Ubinary,
    Base64,
}

impl EmbeddingType {
    pub(super) fn packs_bits(self) -> bool {
        matches!(self, EmbeddingType::Binary | EmbeddingType::Ubinary)
    }

    fn encode(self, v: &[f32]) -> Vector {
        let int8 = |x: f32| (x * 127.0).round().clamp(-127.0, 127.0) as i8;
        let signs = || -> Vec<u8> {
            v.chunks(8)
                .map(|c| {
                    c.iter().enumerate().fold(0u8, |byte, (i, &x)| byte | (u8::from(x > 0.0) << (7 - i)))
                })
                .collect()
        };
        match self {
            EmbeddingType::Float => Vector::Float(v.to_vec()),
            EmbeddingType::Base64 => Vector::encode(v.to_vec(), EncodingFormat::Base64),
            EmbeddingType::Int8 => Vector::Int8(v.iter().map(|&x| int8(x)).collect()),
            EmbeddingType::Uint8 => {
                Vector::Uint8(v.iter().map(|&x| (i16::from(int8(x)) + 128) as u8).collect())
            }
            EmbeddingType::Ubinary => Vector::Uint8(signs()),
            EmbeddingType::Binary => {
                Vector::Int8(signs().into_iter().map(|b| (i16::from(b) - 128) as i8).collect())
            }
        }
    }
}

/// How the client wants its vectors.
#[derive(Debug, Clone)]
pub enum Output {
    /// One list in one encoding (both routes).
    Format(EncodingFormat),
    /// One list per type (`/v1/embed`'s `embedding_types`).
    Types(Vec<EmbeddingType>),
}

/// A response's vectors: one list, or one per requested type (Cohere's shape), or a sparse
/// model's.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Embeddings {
    List(Vec<Vector>),
    ByType(BTreeMap<EmbeddingType, Vec<Vector>>),
    Sparse(Vec<SparseVector>),
}

/// A sparse model's vector: its non-zero weights, by ascending vocabulary index (the shape
/// Qdrant and most vector stores take).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseVector {
    /// The non-zero entries of a dense vector over the vocabulary.
    pub fn of(dense: &[f32]) -> Self {
        let (indices, values) = dense
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0.0)
            .map(|(i, v)| (u32::try_from(i).unwrap_or(u32::MAX), *v))
            .unzip();
        Self { indices, values }
    }
}

impl Embeddings {
    pub(super) fn new(vectors: Vec<Vec<f32>>, output: &Output) -> Self {
        match output {
            Output::Format(format) => {
                Embeddings::List(vectors.into_iter().map(|v| Vector::encode(v, *format)).collect())
            }
            Output::Types(types) => Embeddings::ByType(
                types.iter().map(|&t| (t, vectors.iter().map(|v| t.encode(v)).collect())).collect(),
            ),
        }
    }

    /// The one list of an [`Output::Format`] request for a dense model (`None` otherwise).
    pub fn into_list(self) -> Option<Vec<Vector>> {
        match self {
            Embeddings::List(list) => Some(list),
            Embeddings::ByType(_) | Embeddings::Sparse(_) => None,
        }
    }
}

impl Vector {
    fn encode(v: Vec<f32>, format: EncodingFormat) -> Self {
        match format {
            EncodingFormat::Float => Vector::Float(v),
            EncodingFormat::Base64 => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(STANDARD.encode(bytes))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_is_little_endian_f32() {
        let Vector::Base64(s) = Vector::encode(vec![1.0, -2.5], EncodingFormat::Base64) else { panic!() };
        let bytes = STANDARD.decode(s).unwrap();
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
    }

    #[test]
    fn output_types_are_cohere_s_and_sentence_transformers_quantizations() {
        let v = [1.0, -1.0, 0.5, 0.0, 2.0, -0.004, 0.004, -3.0];
        let encode = |t: EmbeddingType| serde_json::to_value(t.encode(&v)).unwrap();
        assert_eq!(encode(EmbeddingType::Float), json!(v));
        assert_eq!(encode(EmbeddingType::Int8), json!([127, -127, 64, 0, 127, -1, 1, -127]));
        assert_eq!(encode(EmbeddingType::Uint8), json!([255, 1, 192, 128, 255, 127, 129, 1]));
        // Positive values: the 1st, 3rd, 5th and 7th, first value in the highest bit.
        assert_eq!(encode(EmbeddingType::Ubinary), json!([0b1010_1010]));
        assert_eq!(encode(EmbeddingType::Binary), json!([0b1010_1010 - 128]));
        // Nine values: the last byte holds one bit, in its highest place.
        let nine = [1.0; 9];
        assert_eq!(serde_json::to_value(EmbeddingType::Ubinary.encode(&nine)).unwrap(), json!([255, 128]));
        let Vector::Base64(b) = EmbeddingType::Base64.encode(&v) else { panic!() };
        let floats: Vec<f32> = STANDARD
            .decode(b)
            .unwrap()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(floats, v);
    }

    #[test]
    fn several_types_answer_one_list_each() {
        let out = Embeddings::new(
            vec![vec![0.6, -0.8], vec![-0.6, 0.8]],
            &Output::Types(vec![EmbeddingType::Int8, EmbeddingType::Float]),
        );
        assert_eq!(
            serde_json::to_value(out).unwrap(),
            json!({ "float": [[0.6f32, -0.8f32], [-0.6f32, 0.8f32]], "int8": [[76, -102], [-76, 102]] })
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// int8 and uint8 round a value in -1..=1 to within half a step of 1/127.
            #[test]
            fn int8_and_uint8_are_within_half_a_step(x in -1.0f32..=1.0) {
                let Vector::Int8(i) = EmbeddingType::Int8.encode(&[x]) else { panic!() };
                let Vector::Uint8(u) = EmbeddingType::Uint8.encode(&[x]) else { panic!() };
                prop_assert!((f32::from(i[0]) / 127.0 - x).abs() <= 0.5 / 127.0 + 1e-6);
                prop_assert_eq!(i16::from(u[0]) - 128, i16::from(i[0]));
            }
        }
    }
}
