//! GPTQ (Frantar et al., 2022): quantize a layer's weight column by column, each time spreading
//! the rounding error over the columns not yet quantized, weighted by the inverse Hessian of the
//! layer's inputs, H = 2/n · Σ x xᵀ. Names follow the paper: dampening (`damp_percent` of the mean
//! diagonal, multiplied by 10 and retried while the Cholesky factorization fails), dead columns
//! (zero diagonal), act-order (columns by decreasing Hessian diagonal), static groups, and lazy
//! block updates (`block_size` columns at a time; the later columns take each block's errors in
//! one matrix product). Factorizations and products run in f64 with faer.

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatMut, MatRef, Side};
use gstick_quant::scheme::{dequantize, int_range, qparams, quantize};
use gstick_quant::{Granularity, QParams, QuantizedWeight, WeightScheme};

use crate::config::GptqConfig;

/// The running Hessian of a layer's inputs: H = 2/n · Σ x xᵀ over the n input rows seen so far.
#[derive(Clone, Debug)]
pub struct Hessian {
    pub cols: usize,
    pub h: Vec<f64>,
    pub samples: usize,
}

impl Hessian {
    pub fn new(cols: usize) -> Self {
        Hessian {
            cols,
            h: vec![0.0; cols * cols],
            samples: 0,
        }
    }

    /// Adds `rows` input rows (row-major, `cols` features each). The product Xᵀ X of the new rows
    /// is formed in f32 by faer's matrix multiply (one call per batch of rows, bit-identical for
    /// any thread count) and accumulated into the f64 running average.
    pub fn add(&mut self, x: &[f32], rows: usize) {
        let c = self.cols;
        let n = self.samples + rows;
        if n == 0 || rows == 0 {
            return;
        }
        let mut xtx = vec![0f32; c * c];
        let xm = MatRef::from_row_major_slice(&x[..rows * c], rows, c);
        matmul(
            MatMut::from_row_major_slice_mut(&mut xtx, c, c),
            Accum::Replace,
            xm.transpose(),
            xm,
            1.0f32,
            gstick_nn::kernels::faer_par(),
        );
        // Keep H an average as rows arrive: H <- H · old/new + 2/new · Xᵀ X.
        let keep = self.samples as f64 / n as f64;
        let add = 2.0 / n as f64;
        let path = gstick_nn::kernels::vector_math::MathPath::best();
        gstick_nn::kernels::vector_math::scale_accumulate(path, &mut self.h, &xtx, keep, add);
        self.samples = n;
    }
}

/// What GPTQ did besides quantizing.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqReport {
    /// The dampening finally used, as a fraction of the mean diagonal.
    pub damp_percent: f64,
    /// Columns whose inputs were always zero (quantized as zero).
    pub dead_columns: usize,
    /// Σ (w - q)² / d² / 2 over all weights: the paper's proxy loss.
    pub loss: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GptqError {
    #[error("weight has {got} values, {rows} x {cols} expected; the Hessian is {h} x {h}")]
    Shape {
        got: usize,
        rows: usize,
        cols: usize,
        h: usize,
    },
    #[error("the Hessian stays indefinite after dampening up to {0} of its mean diagonal")]
    Indefinite(f64),
    #[error("act-order with per-group quantization needs static groups (each group's scale must not depend on the column order)")]
    ActOrderGroups,
    #[error("{0}")]
    Pattern(String),
    #[error("{0}")]
    Scheme(#[from] gstick_quant::SchemeError),
}

/// Quantizes `w` (row-major, rows = outputs, cols = inputs) with GPTQ.
pub fn gptq(
    w: &[f32],
    rows: usize,
    cols: usize,
    hessian: &Hessian,
    scheme: WeightScheme,
    settings: &GptqConfig,
) -> Result<(QuantizedWeight, GptqReport), GptqError> {
    if w.len() != rows * cols || hessian.cols != cols {
        return Err(GptqError::Shape {
            got: w.len(),
            rows,
            cols,
            h: hessian.cols,
        });
    }
    let group = match scheme.granularity {
        Granularity::PerGroup(g) => {
            if g == 0 || !cols.is_multiple_of(g) {
                return Err(gstick_quant::SchemeError::Group { group: g, cols }.into());
            }
            if settings.desc_act && !settings.static_groups {
                return Err(GptqError::ActOrderGroups);
            }
            Some(g)
        }
        Granularity::PerChannel => None,
        Granularity::PerTensor => {
            return Err(GptqError::Scheme(gstick_quant::SchemeError::Bits(0)))
        }
    };
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(gstick_quant::SchemeError::NonFinite {
            row: i / cols.max(1),
        }
        .into());
    }
    let range = int_range(scheme.bits, true, scheme.narrow)?;
    let mut w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut h = hessian.h.clone();
    // Dead columns: no input ever reached them; their weights cannot matter.
    let mut dead_columns = 0;
    for i in 0..cols {
        if h[i * cols + i] == 0.0 {
            h[i * cols + i] = 1.0;
            for r in 0..rows {
                w[r * cols + i] = 0.0;
            }
            dead_columns += 1;
        }
    }
    let block_params = |w: &[f64], r: usize, c0: usize, width: usize| -> QParams {
        let vals = &w[r * cols + c0..r * cols + c0 + width];
        let (lo, hi) = vals
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        qparams(lo, hi, range, scheme.symmetric)
    };
    // Per-channel parameters, or static groups, come from the weight before any update.
    let groups = group.map_or(1, |g| cols / g);
    let width = group.unwrap_or(cols);
    let mut params: Vec<QParams> = (0..rows)
        .flat_map(|r| (0..groups).map(move |b| (r, b)))
        .map(|(r, b)| block_params(&w, r, b * width, width))
        .collect();

    // Act-order: the columns with the largest Hessian diagonal go first.
    let mut perm: Vec<usize> = (0..cols).collect();
    if settings.desc_act {
        perm.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
    }
    // The weight with its columns in processing order; it absorbs the propagated errors.
    let mut work: Vec<f64> = (0..rows * cols)
        .map(|k| w[(k / cols) * cols + perm[k % cols]])
        .collect();
    let hp = Mat::from_fn(cols, cols, |i, j| h[perm[i] * cols + perm[j]]);

    let (u, damp_used) = upper_inverse_factor(&hp, settings.damp_percent)?;
    let mut values = vec![0i8; rows * cols];
    let mut loss = 0.0;
    let block = settings.block_size.max(1);
    let mut err_block = vec![0.0f64; rows * block];
    let mut u_row = Vec::with_capacity(block);
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        for i in i1..i2 {
            let col = perm[i];
            if let (Some(g), false) = (group, settings.static_groups) {
                // Dynamic groups: parameters from the current (updated) weights of the group.
                if col.is_multiple_of(g) {
                    for r in 0..rows {
                        // Without act-order the processing order is the column order.
                        params[r * groups + col / g] = block_params(&work, r, i, g);
                    }
                }
            }
            let d = u[(i, i)];
            // Row i of U within the block, contiguous (U is column-major), so the update below
            // is a plain vector loop.
            u_row.clear();
            u_row.extend((i + 1..i2).map(|j| u[(i, j)]));
            for r in 0..rows {
                let p = params[r * groups + group.map_or(0, |g| col / g)];
                let x = work[r * cols + i];
                let q = quantize(x, p, range);
                values[r * cols + col] = q as i8;
                let e = (x - dequantize(q, p)) / d;
                loss += e * e / 2.0;
                err_block[r * block + (i - i1)] = e;
                // Spread the error over the rest of this block now.
                let rest = &mut work[r * cols + i + 1..r * cols + i2];
                for (w, &uij) in rest.iter_mut().zip(&u_row) {
                    *w -= e * uij;
                }
            }
        }
        lazy_block_update(&mut work, rows, cols, &err_block, block, &u, i1, i2);
    }
    let q = QuantizedWeight {
        rows,
        cols,
        scheme,
        values,
        params,
    };
    Ok((
        q,
        GptqReport {
            damp_percent: damp_used,
            dead_columns,
            loss,
        },
    ))
}

/// The lazy update of the columns after block `i1..i2`, one matrix product:
/// `work[:, i2..] -= E U[i1..i2, i2..]`, with E the block's scaled errors (`err_block`, rows x
/// `block`, the first `i2 - i1` columns used) and `work` row-major (rows x cols).
#[allow(clippy::too_many_arguments)]
pub(crate) fn lazy_block_update(
    work: &mut [f64],
    rows: usize,
    cols: usize,
    err_block: &[f64],
    block: usize,
    u: &Mat<f64>,
    i1: usize,
    i2: usize,
) {
    if i2 >= cols {
        return;
    }
    let width = i2 - i1;
    let e = MatRef::from_row_major_slice(err_block, rows, block).subcols(0, width);
    let update = u.as_ref().submatrix(i1, i2, width, cols - i2);
    // Row-major with a row stride, as the transpose of a column-major view (faer 0.24's
    // strided row-major constructor swaps the strides).
    let rest =
        MatMut::from_column_major_slice_with_stride_mut(&mut work[i2..], cols - i2, rows, cols)
            .transpose_mut();
    matmul(
        rest,
        Accum::Add,
        e,
        update,
        -1.0f64,
        gstick_nn::kernels::faer_par(),
    );
}

/// The upper Cholesky factor U of H⁻¹ (H⁻¹ = Uᵀ U) after dampening H by `damp` of its mean
/// diagonal, retrying with ten times more while the factorization fails.
pub(crate) fn upper_inverse_factor(h: &Mat<f64>, damp: f64) -> Result<(Mat<f64>, f64), GptqError> {
    let n = h.nrows();
    let mean_diag = (0..n).map(|i| h[(i, i)]).sum::<f64>() / n.max(1) as f64;
    let mut damp = damp.max(1e-8);
    while damp <= 1.0 {
        let mut hd = h.clone();
        for i in 0..n {
            hd[(i, i)] += damp * mean_diag;
        }
        if let Ok(llt) = hd.llt(Side::Lower) {
            let hinv = llt.inverse();
            if let Ok(l) = hinv.llt(Side::Lower) {
                return Ok((l.L().transpose().to_owned(), damp));
            }
        }
        damp *= 10.0;
    }
    Err(GptqError::Indefinite(damp / 10.0))
}
