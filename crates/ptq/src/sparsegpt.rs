//! SparseGPT (Frantar & Alistarh, 2023): prune a Linear to a sparsity pattern, column by column,
//! spreading each column's pruning (and, when asked, rounding) error over the columns not yet
//! processed, weighted by the inverse Hessian of the layer's inputs, as GPTQ does for rounding
//! alone. The mask is chosen adaptively by the OBS saliency w² / [H⁻¹]_jj² on the weights as
//! they stand after the earlier updates: for unstructured sparsity once per block of
//! `block_size` columns over all rows, for N:M once per run of M columns within each row.
//! With a weight scheme, the kept weights are quantized in the same pass (the paper's joint
//! mode), on a grid fixed from the dense weight beforehand (per channel or per static group,
//! widened to hold zero so that pruned weights stay exactly zero).

use faer::Mat;
use gstick_quant::scheme::{dequantize, int_range, qparams, quantize};
use gstick_quant::{Granularity, QParams, QuantizedWeight, WeightScheme};

use crate::gptq::{lazy_block_update, upper_inverse_factor, GptqError, Hessian};
use crate::sparsity::{check_shape, mask_by_score, SparsityPattern};

/// The solver's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparseGptSettings {
    pub pattern: SparsityPattern,
    /// Share of weights pruned (unstructured; N:M fixes its own).
    pub sparsity: f64,
    pub block_size: usize,
    pub damp_percent: f64,
}

/// What SparseGPT produced: the pruned weight, quantized when a scheme was given.
pub enum SparseGptOutput {
    Float(Vec<f32>),
    Quantized(QuantizedWeight),
}

/// What SparseGPT did besides pruning.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseGptReport {
    pub damp_percent: f64,
    pub dead_columns: usize,
    /// Σ (w - q)² / d² / 2: the OBS proxy loss of the pruning (and rounding).
    pub loss: f64,
}

/// Prunes `w` (row-major, rows = outputs, cols = inputs) to `settings.pattern`, quantizing the
/// kept weights with `scheme` if given.
pub fn sparsegpt(
    w: &[f32],
    rows: usize,
    cols: usize,
    hessian: &Hessian,
    scheme: Option<WeightScheme>,
    settings: &SparseGptSettings,
) -> Result<(SparseGptOutput, SparseGptReport), GptqError> {
    if w.len() != rows * cols || hessian.cols != cols {
        return Err(GptqError::Shape {
            got: w.len(),
            rows,
            cols,
            h: hessian.cols,
        });
    }
    if let Err(message) = check_shape(settings.pattern, cols) {
        return Err(GptqError::Pattern(message));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(gstick_quant::SchemeError::NonFinite {
            row: i / cols.max(1),
        }
        .into());
    }
    let mut work: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut h = Mat::from_fn(cols, cols, |i, j| hessian.h[i * cols + j]);
    let mut dead_columns = 0;
    for i in 0..cols {
        if h[(i, i)] == 0.0 {
            h[(i, i)] = 1.0;
            for r in 0..rows {
                work[r * cols + i] = 0.0;
            }
            dead_columns += 1;
        }
    }
    let grid = scheme
        .map(|s| Grid::new(&work, rows, cols, s))
        .transpose()?;
    let (u, damp_used) = upper_inverse_factor(&h, settings.damp_percent)?;

    let block = settings.block_size.clamp(1, cols.max(1));
    let block = match settings.pattern {
        // A block holds whole N:M runs (cols is a multiple of m).
        SparsityPattern::NOfM { m, .. } => block.div_ceil(m) * m,
        SparsityPattern::Unstructured => block,
    };
    let mut values = grid.as_ref().map(|_| vec![0i8; rows * cols]);
    let mut loss = 0.0;
    let mut err_block = vec![0.0f64; rows * block];
    let mut u_row = Vec::with_capacity(block);
    let mut mask = vec![false; rows * block];
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        let width = i2 - i1;
        if settings.pattern == SparsityPattern::Unstructured {
            // One mask for the block, over all rows, from the saliency of the current weights.
            let score: Vec<f64> = (0..rows * width)
                .map(|k| {
                    let (r, j) = (k / width, i1 + k % width);
                    let d = u[(j, j)];
                    work[r * cols + j].powi(2) / (d * d)
                })
                .collect();
            let m = mask_by_score(
                &score,
                rows,
                width,
                settings.pattern,
                settings.sparsity,
                false,
            );
            mask[..rows * width].copy_from_slice(&m);
        }
        for i in i1..i2 {
            if let SparsityPattern::NOfM { n, m } = settings.pattern {
                if (i - i1).is_multiple_of(m) {
                    for r in 0..rows {
                        let score: Vec<f64> = (i..i + m)
                            .map(|j| {
                                let d = u[(j, j)];
                                work[r * cols + j].powi(2) / (d * d)
                            })
                            .collect();
                        let run = mask_by_score(&score, 1, m, settings.pattern, 0.0, true);
                        debug_assert_eq!(run.iter().filter(|b| **b).count(), n);
                        let at = r * width + (i - i1);
                        mask[at..at + m].copy_from_slice(&run);
                    }
                }
            }
            let d = u[(i, i)];
            u_row.clear();
            u_row.extend((i + 1..i2).map(|j| u[(i, j)]));
            for r in 0..rows {
                let x = work[r * cols + i];
                let pruned = mask[r * width + (i - i1)];
                let kept = match (&grid, &mut values) {
                    (Some(g), Some(values)) => {
                        let p = g.params_at(r, i);
                        let q = quantize(if pruned { 0.0 } else { x }, p, g.range);
                        values[r * cols + i] = q as i8;
                        dequantize(q, p)
                    }
                    _ if pruned => 0.0,
                    _ => x,
                };
                let e = (x - kept) / d;
                loss += e * e / 2.0;
                err_block[r * block + (i - i1)] = e;
                work[r * cols + i] = kept;
                let rest = &mut work[r * cols + i + 1..r * cols + i2];
                for (w, &uij) in rest.iter_mut().zip(&u_row) {
                    *w -= e * uij;
                }
            }
        }
        lazy_block_update(&mut work, rows, cols, &err_block, block, &u, i1, i2);
    }
    let report = SparseGptReport {
        damp_percent: damp_used,
        dead_columns,
        loss,
    };
    let output = match (grid, values, scheme) {
        (Some(g), Some(values), Some(scheme)) => SparseGptOutput::Quantized(QuantizedWeight {
            rows,
            cols,
            scheme,
            values,
            params: g.params,
        }),
        _ => SparseGptOutput::Float(work.iter().map(|&v| v as f32).collect()),
    };
    Ok((output, report))
}

/// The quantization grid of the joint mode: parameters per row and group, from the dense
/// weight, each range widened to include zero.
struct Grid {
    range: (i32, i32),
    groups: usize,
    width: usize,
    params: Vec<QParams>,
}

impl Grid {
    fn new(w: &[f64], rows: usize, cols: usize, scheme: WeightScheme) -> Result<Grid, GptqError> {
        let width = match scheme.granularity {
            Granularity::PerGroup(g) if g > 0 && cols.is_multiple_of(g) => g,
            Granularity::PerGroup(g) => {
                return Err(gstick_quant::SchemeError::Group { group: g, cols }.into())
            }
            Granularity::PerChannel => cols,
            Granularity::PerTensor => {
                return Err(GptqError::Scheme(gstick_quant::SchemeError::Bits(0)))
            }
        };
        let range = int_range(scheme.bits, true, scheme.narrow)?;
        let groups = cols / width;
        let params = (0..rows * groups)
            .map(|k| {
                let (r, b) = (k / groups, k % groups);
                let vals = &w[r * cols + b * width..r * cols + (b + 1) * width];
                let (lo, hi) = vals
                    .iter()
                    .fold((0f64, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
                qparams(lo, hi, range, scheme.symmetric)
            })
            .collect();
        Ok(Grid {
            range,
            groups,
            width,
            params,
        })
    }

    fn params_at(&self, row: usize, col: usize) -> QParams {
        self.params[row * self.groups + col / self.width]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparsity::{magnitude_mask, satisfies};

    fn data(rows: usize, cols: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
        };
        let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        // Correlated inputs: each row mixes a few shared factors, so the Hessian is far from
        // diagonal and error compensation matters.
        let f: Vec<f32> = (0..n * 4).map(|_| next()).collect();
        let x: Vec<f32> = (0..n * cols)
            .map(|k| {
                let (t, j) = (k / cols, k % cols);
                f[t * 4 + j % 4] * (1.0 + j as f32 / cols as f32) + 0.1 * next()
            })
            .collect();
        (w, x)
    }

    fn output_error(w: &[f32], wq: &[f32], x: &[f32], rows: usize, cols: usize) -> f64 {
        let n = x.len() / cols;
        let mut e = 0.0;
        for t in 0..n {
            for r in 0..rows {
                let dot = |m: &[f32]| -> f64 {
                    (0..cols)
                        .map(|j| m[r * cols + j] as f64 * x[t * cols + j] as f64)
                        .sum()
                };
                e += (dot(w) - dot(wq)).powi(2);
            }
        }
        e
    }

    fn settings(pattern: SparsityPattern) -> SparseGptSettings {
        SparseGptSettings {
            pattern,
            sparsity: 0.5,
            block_size: 8,
            damp_percent: 0.01,
        }
    }

    #[test]
    fn sparsegpt_keeps_the_pattern_and_beats_magnitude_pruning() {
        let (rows, cols, n) = (12, 32, 256);
        let (w, x) = data(rows, cols, n, 7);
        let mut h = Hessian::new(cols);
        h.add(&x, n);
        for pattern in [
            SparsityPattern::Unstructured,
            SparsityPattern::NOfM { n: 2, m: 4 },
        ] {
            let (out, report) = sparsegpt(&w, rows, cols, &h, None, &settings(pattern)).unwrap();
            let SparseGptOutput::Float(pruned) = out else {
                panic!("float expected")
            };
            assert!(satisfies(&pruned, cols, pattern, 0.5), "{pattern}");
            assert_eq!(report.dead_columns, 0);
            let mask = magnitude_mask(&w, rows, cols, pattern, 0.5);
            let magnitude: Vec<f32> = w
                .iter()
                .zip(&mask)
                .map(|(&v, &m)| if m { 0.0 } else { v })
                .collect();
            let (ours, theirs) = (
                output_error(&w, &pruned, &x, rows, cols),
                output_error(&w, &magnitude, &x, rows, cols),
            );
            assert!(ours < 0.5 * theirs, "{pattern}: {ours} vs {theirs}");
        }
    }

    #[test]
    fn joint_quantization_keeps_zeros_exact_and_values_on_the_grid() {
        let (rows, cols, n) = (8, 64, 128);
        let (w, x) = data(rows, cols, n, 3);
        let mut h = Hessian::new(cols);
        h.add(&x, n);
        for symmetric in [true, false] {
            let scheme = WeightScheme {
                bits: 4,
                granularity: Granularity::PerGroup(32),
                symmetric,
                narrow: false,
            };
            let pattern = SparsityPattern::NOfM { n: 2, m: 4 };
            let (out, _) = sparsegpt(&w, rows, cols, &h, Some(scheme), &settings(pattern)).unwrap();
            let SparseGptOutput::Quantized(q) = out else {
                panic!("quantized expected")
            };
            let deq = q.dequantize();
            assert!(satisfies(&deq, cols, pattern, 0.5), "symmetric {symmetric}");
        }
    }

    #[test]
    fn a_width_that_does_not_fit_the_runs_is_refused() {
        let h = Hessian::new(6);
        let e = sparsegpt(
            &[0.0; 12],
            2,
            6,
            &h,
            None,
            &settings(SparsityPattern::NOfM { n: 2, m: 4 }),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("multiple of 4"), "{e}");
    }
}
