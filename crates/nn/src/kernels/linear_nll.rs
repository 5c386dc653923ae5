//! Next-token negative log-likelihood straight from the final hidden states and the LM head's
//! weight, without the logits in memory. A full window's logits (2048 x 49152 f32, 400 MB) made
//! the head's matrix product run at half the machine's GEMM speed, limited by writing them out;
//! here each task multiplies the hidden states by one block of vocabulary rows into a buffer that
//! stays in the core's cache and keeps, per position, only the block's maximum, its sum of
//! exponentials and the target's logit. The blocks are then combined in vocabulary order, so the
//! result does not depend on the thread count.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
use super::bf16_gemm::amx;
use super::bf16_gemm::{hardware_available, round_bf16};
use super::vector_math::{self, MathPath};

/// Vocabulary rows per block (576-wide rows: 2.4 MB of weight).
const VOCAB_BLOCK: usize = 1024;
/// Positions per product inside a block (a 128 x 1024 logit tile is 512 KB).
const ROW_TILE: usize = 128;

/// One block's summary of one position's logits.
#[derive(Clone, Copy, Default)]
struct Partial {
    max: f32,
    sum_exp: f32,
    /// The target's logit when the target falls in this block.
    target: Option<f32>,
}

/// NLL of `targets[r]` under softmax(hidden[r] W^T) for hidden (rows, k) and W (vocab, k), in
/// the process's arithmetic ([`super::compute`]: f32, or bf16 operands on AMX where present).
pub fn linear_nll(
    hidden: &[f32],
    weight: &[f32],
    k: usize,
    targets: &[u32],
) -> Result<Vec<f64>, String> {
    let bf16 = super::compute() == super::Compute::Bf16;
    nll_with(
        hidden,
        weight,
        k,
        targets,
        bf16,
        bf16 && hardware_available(),
    )
}

/// [`linear_nll`] with bf16 operands or not, and on AMX or not (`use_amx` needs `bf16` and a
/// CPU with AMX).
fn nll_with(
    hidden: &[f32],
    weight: &[f32],
    k: usize,
    targets: &[u32],
    bf16: bool,
    use_amx: bool,
) -> Result<Vec<f64>, String> {
    let rows = targets.len();
    let vocab = weight.len() / k.max(1);
    if k == 0 || hidden.len() != rows * k || weight.len() != vocab * k || vocab == 0 {
        return Err(format!(
            "LM head NLL: {} hidden values for {rows} positions and {} weights do not share a width of {k}",
            hidden.len(),
            weight.len()
        ));
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(format!(
            "target token {bad} is outside the vocabulary of {vocab}"
        ));
    }
    let path = MathPath::best();
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    let amx_rows = (bf16 && use_amx).then(|| amx::RoundedRows::new(hidden, rows, k, true));
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    let amx_rows: Option<()> = {
        let _ = use_amx; // no AMX off x86-64 Linux
        None
    };
    // bf16 without AMX: the same rounding on the f32 product.
    let rounded_hidden: Vec<f32>;
    let hidden = if bf16 && amx_rows.is_none() {
        rounded_hidden = round_bf16(hidden);
        &rounded_hidden[..]
    } else {
        hidden
    };
    let blocks = vocab.div_ceil(VOCAB_BLOCK);
    let mut partials = vec![Partial::default(); blocks * rows];
    let tasks: Vec<(usize, &mut [Partial])> = partials.chunks_mut(rows).enumerate().collect();
    super::for_each_interleaved(tasks, rows * vocab, |(b, out)| {
        let v0 = b * VOCAB_BLOCK;
        let n = VOCAB_BLOCK.min(vocab - v0);
        let w_block = &weight[v0 * k..(v0 + n) * k];
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        let packed = amx_rows
            .as_ref()
            .map(|_| amx::PackedWeight::new(w_block, n, k, false));
        let rounded_block: Vec<f32>;
        let w_block = if bf16 && amx_rows.is_none() {
            rounded_block = round_bf16(w_block);
            &rounded_block[..]
        } else {
            w_block
        };
        let w = MatRef::from_row_major_slice(w_block, n, k);
        // Row stride of the logit tile: the AMX blocks write whole 32-column groups.
        let stride = n.div_ceil(32) * 32;
        let mut tile = vec![0f32; ROW_TILE * stride];
        for r0 in (0..rows).step_by(ROW_TILE) {
            let m = ROW_TILE.min(rows - r0);
            let logits = &mut tile[..m * stride];
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            if let (Some(x), Some(p)) = (amx_rows.as_ref(), packed.as_ref()) {
                for (j, block_rows) in logits.chunks_mut(32 * stride).enumerate() {
                    amx::multiply_block(x, r0 / 32 + j, p, block_rows);
                }
            }
            if amx_rows.is_none() {
                matmul(
                    // faer 0.24's row-major constructor with a stride swaps the strides.
                    MatMut::from_column_major_slice_with_stride_mut(logits, n, m, stride)
                        .transpose_mut(),
                    Accum::Replace,
                    MatRef::from_row_major_slice(&hidden[r0 * k..(r0 + m) * k], m, k),
                    w.transpose(),
                    1.0f32,
                    Par::Seq,
                );
            }
            for (i, row) in logits.chunks_exact(stride).map(|r| &r[..n]).enumerate() {
                let max = vector_math::max(path, row);
                let t = targets[r0 + i] as usize;
                out[r0 + i] = Partial {
                    max,
                    sum_exp: vector_math::sum_exp_shifted(path, row, max),
                    target: (v0..v0 + n).contains(&t).then(|| row[t - v0]),
                };
            }
        }
    });
    Ok((0..rows)
        .map(|r| {
            let column: Vec<Partial> = (0..blocks).map(|b| partials[b * rows + r]).collect();
            // A NaN logit anywhere makes its block's maximum NaN; the NLL is then NaN too.
            if column.iter().any(|p| p.max.is_nan()) {
                return f64::NAN;
            }
            let max = column.iter().fold(f32::NEG_INFINITY, |m, p| m.max(p.max));
            let sum: f64 = column
                .iter()
                .map(|p| p.sum_exp as f64 * ((p.max - max) as f64).exp())
                .sum();
            let target = column.iter().find_map(|p| p.target).unwrap_or(f32::NAN);
            sum.ln() + max as f64 - target as f64
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hidden states, head weights and targets for `rows` positions of width `k`.
    fn fixture(rows: usize, k: usize, vocab: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
        let hidden = (0..rows * k)
            .map(|i| ((i * 7919) % 113) as f32 / 40.0 - 1.4)
            .collect();
        let weight = (0..vocab * k)
            .map(|i| ((i * 104_729) % 97) as f32 / 50.0 - 0.95)
            .collect();
        let targets = (0..rows).map(|r| ((r * 7717) % vocab) as u32).collect();
        (hidden, weight, targets)
    }

    #[test]
    fn equals_log_softmax_of_the_full_logits() {
        let (rows, k, vocab) = (300, 24, 2500); // several row tiles and vocabulary blocks
        let (hidden, weight, targets) = fixture(rows, k, vocab);
        let got = linear_nll(&hidden, &weight, k, &targets).unwrap();
        for r in 0..rows {
            let logits: Vec<f64> = (0..vocab)
                .map(|v| {
                    (0..k)
                        .map(|j| hidden[r * k + j] as f64 * weight[v * k + j] as f64)
                        .sum()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
            let want = lse - logits[targets[r] as usize];
            assert!(
                (got[r] - want).abs() < 1e-4 * (1.0 + want.abs()),
                "row {r}: {} vs {want}",
                got[r]
            );
        }
        crate::kernels::set_kernel_threads(Some(1));
        let one = linear_nll(&hidden, &weight, k, &targets).unwrap();
        crate::kernels::set_kernel_threads(None);
        assert_eq!(one, got, "thread count changed the result");
    }

    #[test]
    fn bf16_on_amx_equals_bf16_emulated_and_stays_near_f32() {
        let (rows, k, vocab) = (70, 40, 1100);
        let (hidden, weight, targets) = fixture(rows, k, vocab);
        let f32_nll = nll_with(&hidden, &weight, k, &targets, false, false).unwrap();
        let emulated = nll_with(&hidden, &weight, k, &targets, true, false).unwrap();
        for (a, b) in emulated.iter().zip(&f32_nll) {
            assert!(
                (a - b).abs() < 0.05 * (1.0 + b.abs()),
                "bf16 {a} vs f32 {b}"
            );
        }
        if hardware_available() {
            let amx = nll_with(&hidden, &weight, k, &targets, true, true).unwrap();
            for (a, b) in amx.iter().zip(&emulated) {
                assert!(
                    (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "AMX {a} vs emulated {b}"
                );
            }
        }
    }

    #[test]
    fn bad_shapes_and_targets_are_refused() {
        assert!(linear_nll(&[0.0; 8], &[0.0; 12], 4, &[0, 1]).is_ok());
        let e = linear_nll(&[0.0; 8], &[0.0; 12], 4, &[0, 3]).unwrap_err();
        assert!(e.contains("outside the vocabulary of 3"), "{e}");
        assert!(linear_nll(&[0.0; 7], &[0.0; 12], 4, &[0, 1]).is_err());
    }

    #[test]
    fn a_nan_hidden_state_gives_a_nan_nll() {
        let mut hidden = vec![0.5f32; 8];
        hidden[5] = f32::NAN;
        let nll = linear_nll(&hidden, &[0.1; 12], 4, &[0, 1]).unwrap();
        assert!(nll[0].is_finite() && nll[1].is_nan(), "{nll:?}");
    }
}
