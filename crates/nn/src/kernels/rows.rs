//! Row-wise inference kernels of transformer layers, on f32 tensors: RMSNorm, SiLU and the
//! rotary position embedding. Each is one pass over memory on the vectorized math of
//! [`super::vector_math`], spread over the cores in whole rows; the training path keeps
//! candle's ops and their autodiff.

use candle_core::Tensor;

use super::vector_math::{self, MathPath};
use super::{for_each_chunk, with_f32};

/// Rows per parallel piece.
const ROWS_PER_PIECE: usize = 16;

/// x / sqrt(mean(x^2) + eps) * w over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let n = x.dims().last().copied().unwrap_or(0);
    if w.elem_count() != n || n == 0 {
        return Err(candle_core::Error::Msg(format!(
            "RMSNorm of width {n} with {} weights",
            w.elem_count()
        )));
    }
    let path = MathPath::best();
    let mut out = vec![0f32; x.elem_count()];
    with_f32(x, |x| {
        with_f32(w, |w| {
            for_each_chunk(&mut out, ROWS_PER_PIECE * n, |piece, y| {
                let x = &x[piece * ROWS_PER_PIECE * n..];
                for (row, y) in y.chunks_exact_mut(n).enumerate() {
                    vector_math::rms_norm_row(path, &x[row * n..(row + 1) * n], w, eps as f32, y);
                }
            })
        })
    })??;
    Tensor::from_vec(out, x.shape(), x.device())
}

/// x / (1 + exp(-x)), element-wise.
pub fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    let path = MathPath::best();
    let mut out = vec![0f32; x.elem_count()];
    with_f32(x, |x| {
        for_each_chunk(&mut out, ROWS_PER_PIECE * 1024, |piece, y| {
            let start = piece * ROWS_PER_PIECE * 1024;
            vector_math::silu(path, &x[start..start + y.len()], y);
        })
    })?;
    Tensor::from_vec(out, x.shape(), x.device())
}

/// Rotates the heads of token-major rows `x` (rows, heads * head_dim) by the rotate-half
/// convention, x * cos + rotate_half(x) * sin, and multiplies by `scale`; row r uses row r of the
/// (rows, head_dim / 2) `cos` and `sin` tables. Writes `out`, same shape as `x`.
pub fn rotate_heads(
    x: &[f32],
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let half = head_dim / 2;
    let rows = cos.len() / half.max(1);
    let width = x.len() / rows.max(1);
    assert!(
        half > 0
            && x.len() == rows * width
            && width.is_multiple_of(head_dim)
            && out.len() == x.len()
            && sin.len() == cos.len(),
        "rotary tables ({rows} rows of {half}) do not fit {} values of head dim {head_dim}",
        x.len()
    );
    for_each_chunk(out, ROWS_PER_PIECE * width, |piece, y| {
        for (i, y_row) in y.chunks_exact_mut(width).enumerate() {
            let r = piece * ROWS_PER_PIECE + i;
            let (c, s) = (
                &cos[r * half..(r + 1) * half],
                &sin[r * half..(r + 1) * half],
            );
            let x_row = &x[r * width..(r + 1) * width];
            for (xh, yh) in x_row
                .chunks_exact(head_dim)
                .zip(y_row.chunks_exact_mut(head_dim))
            {
                let (x1, x2) = xh.split_at(half);
                let (y1, y2) = yh.split_at_mut(half);
                for j in 0..half {
                    y1[j] = (x1[j] * c[j] - x2[j] * s[j]) * scale;
                    y2[j] = (x2[j] * c[j] + x1[j] * s[j]) * scale;
                }
            }
        }
    });
}

/// Negative log-likelihood of `targets[r]` under softmax(row r of `logits`), for (rows, vocab)
/// logits: log(sum(exp(x - max))) + max - x[target], the sum in f32 over 16 lanes and the rest
/// in f64. A target outside the vocabulary is an error.
pub fn nll_rows(logits: &[f32], vocab: usize, targets: &[u32]) -> candle_core::Result<Vec<f64>> {
    if vocab == 0 || logits.len() != targets.len() * vocab {
        return Err(candle_core::Error::Msg(format!(
            "{} logits do not hold {} rows of {vocab}",
            logits.len(),
            targets.len()
        )));
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(candle_core::Error::Msg(format!(
            "target token {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let path = MathPath::best();
    let mut out = vec![0f64; targets.len()];
    let rows: Vec<(usize, &mut f64)> = out.iter_mut().enumerate().collect();
    super::for_each_interleaved(rows, logits.len(), |(r, nll)| {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let m = vector_math::max(path, row);
        let sum = vector_math::sum_exp_shifted(path, row, m);
        *nll = (sum as f64).ln() + m as f64 - row[targets[r] as usize] as f64;
    });
    Ok(out)
}
