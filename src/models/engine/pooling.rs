//! From graph output to the vectors a client receives: pooling over tokens, then the
//! per-request shaping (keep the first N dimensions, L2-normalise).

use ndarray::{ArrayView2, ArrayView3, Axis};

use crate::models::spec::Pooling;

/// Pools `[batch, seq, dim]` token states into one vector per input. `lengths[i]` is the
/// number of real (unpadded) tokens of input `i`; padding is on the right.
pub fn pool_tokens(states: ArrayView3<'_, f32>, lengths: &[usize], pooling: Pooling) -> Vec<Vec<f32>> {
    states
        .outer_iter()
        .zip(lengths)
        .map(|(tokens, &len)| {
            let len = len.clamp(1, tokens.len_of(Axis(0)));
            match pooling {
                Pooling::Cls => tokens.row(0).to_vec(),
                Pooling::LastToken => tokens.row(len - 1).to_vec(),
                Pooling::Max => tokens
                    .slice(ndarray::s![..len, ..])
                    .fold_axis(Axis(0), f32::NEG_INFINITY, |m, &x| m.max(x))
                    .to_vec(),
                Pooling::Splade => tokens
                    .slice(ndarray::s![..len, ..])
                    .fold_axis(Axis(0), 0.0f32, |m, &x| m.max(x.max(0.0).ln_1p()))
                    .to_vec(),
                Pooling::Mean | Pooling::None => {
                    let sum = tokens.slice(ndarray::s![..len, ..]).sum_axis(Axis(0));
                    (sum / len as f32).to_vec()
                }
            }
        })
        .collect()
}

/// Rows of an already pooled `[batch, dim]` output.
pub fn rows(pooled: ArrayView2<'_, f32>) -> Vec<Vec<f32>> {
    pooled.outer_iter().map(|row| row.to_vec()).collect()
}

/// Keeps the first `dimensions` values, then L2-normalises if asked. A zero vector stays zero.
pub fn shape_vector(mut v: Vec<f32>, dimensions: usize, normalize: bool) -> Vec<f32> {
    v.truncate(dimensions);
    if normalize {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn states() -> Array3<f32> {
        // two inputs, three token slots, two dims; the second input has one padded slot
        Array3::from_shape_vec((2, 3, 2), vec![1., 2., 3., 4., 5., 6., 10., 20., 30., 40., 99., 99.]).unwrap()
    }

    #[test]
    fn mean_pooling_ignores_padding() {
        let out = pool_tokens(states().view(), &[3, 2], Pooling::Mean);
        assert_eq!(out, vec![vec![3., 4.], vec![20., 30.]]);
    }

    #[test]
    fn cls_pooling_takes_the_first_token_and_last_token_the_last_real_one() {
        assert_eq!(pool_tokens(states().view(), &[3, 2], Pooling::Cls)[1], vec![10., 20.]);
        assert_eq!(pool_tokens(states().view(), &[3, 2], Pooling::LastToken)[1], vec![30., 40.]);
    }

    #[test]
    fn shaping_truncates_before_normalising() {
        let v = shape_vector(vec![3., 4., 100.], 2, true);
        assert_eq!(v, vec![0.6, 0.8]);
        assert_eq!(shape_vector(vec![0., 0.], 2, true), vec![0., 0.]);
        assert_eq!(shape_vector(vec![3., 4.], 2, false), vec![3., 4.]);
    }
}
