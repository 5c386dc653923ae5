//! A8W8 Linear layers (spec §3.8, dynamic A8W8): activations quantized to int8 per token at run
//! time, int8 weights per output channel, int32 sums, and the scales and bias applied as each
//! sum leaves the registers: `y[t][o] = sum_k qx[t][k] qw[o][k] * (sx[t] * sw[o]) + b[o]`.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes. The weights are the unsigned side here, stored
//! as `w + 128` in panels of 16 output channels (one 64-byte load holds four input values of 16
//! channels), and a token's four signed activation bytes are broadcast against them, so one
//! register accumulates 16 channels of one token: the output comes out token-major, as the next
//! layer reads it. The `+ 128` adds `128 * sum_k qx[t][k]` to every sum of token t, which the
//! epilogue takes off again (the token sums come with the quantization). Integer sums are exact,
//! so every instruction set and thread count gives the same bits.
//!
//! Weights may have a scale per block of input channels instead of one per channel (A8W4: GPTQ's
//! int4 groups, held as bytes here): each block's int32 sum is scaled by its weight scale and
//! added in f32, block after block, and the token's scale multiplies the total.
//!
//! Static per-tensor activations (SmoothQuant's A8W8) quantize every token with one calibrated
//! scale and zero point; the zero point's share, `zp * sum_k qw[o][k]`, is taken off per channel
//! in the same epilogue (the original's int32 `quant_bias`).

use super::IntIsa;
use crate::ActivationQuant;

/// Channels per weight panel (one AVX-512 register of int32 sums).
pub const PANEL: usize = 16;
/// Activations quantize to [-QMAX, QMAX].
pub const QMAX: f32 = 127.0;

/// Rounds half to even without a library call on baseline x86-64 (exact below 2^22, which
/// quantized activations never reach).
#[inline(always)]
fn round_ties_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (x + MAGIC) - MAGIC
}

/// Quantizes one token symmetrically: `scale = max|x| / 127`, `q = round(x * (127 / max|x|))`
/// (ties to even), so the largest value maps to ±127. Returns the scale: 0 for a row of zeros
/// (all q are 0), NaN when the row holds NaN or infinity (q are then 0; the caller reports it).
/// Deploy and the fake-quantized simulation both quantize through this function.
pub fn quantize_token(x: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(x.len(), q.len(), "quantize_token: lengths");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the features were just detected. Same operations, so the same bits.
        return unsafe { quantize_token_avx512(x, q) };
    }
    quantize_token_body(x, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_token_avx512(x: &[f32], q: &mut [i8]) -> f32 {
    quantize_token_body(x, q)
}

/// Written in 16 independent lanes so that it vectorizes (a plain fold is one serial chain).
#[inline(always)]
fn quantize_token_body(x: &[f32], q: &mut [i8]) -> f32 {
    const L: usize = 16;
    let (mut max, mut bad) = ([0f32; L], [false; L]);
    let chunks = x.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            let a = c[i].abs();
            // `a > m` is false for NaN, which `bad` catches (infinity is caught by the scale).
            max[i] = if a > max[i] { a } else { max[i] };
            bad[i] |= c[i].is_nan();
        }
    }
    let mut m = max.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    let mut nan = bad.iter().any(|&b| b);
    for &v in tail {
        let a = v.abs();
        m = if a > m { a } else { m };
        nan |= v.is_nan();
    }
    if nan || !m.is_finite() {
        q.fill(0);
        return f32::NAN;
    }
    if m == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let scale = m / QMAX;
    let inv = QMAX / m;
    for (d, &v) in q.iter_mut().zip(x) {
        let r = round_ties_even(v * inv).clamp(-QMAX, QMAX);
        // SAFETY: `r` is finite and within [-127, 127].
        *d = unsafe { r.to_int_unchecked::<i32>() } as i8;
    }
    scale
}

/// Quantizes one token with a fixed scale and zero point (static per-tensor activations):
/// `q = clamp(round(x / scale + zero_point), -128, 127)`, ties to even. Returns false when the
/// row holds NaN or infinity (q are then unspecified; the caller reports it). Deploy and the
/// fake-quantized simulation both quantize through this function.
pub fn quantize_token_static(x: &[f32], q: &mut [i8], scale: f32, zero_point: i32) -> bool {
    assert_eq!(x.len(), q.len(), "quantize_token_static: lengths");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the features were just detected. Same operations, so the same bits.
        return unsafe { quantize_token_static_avx512(x, q, scale, zero_point) };
    }
    quantize_token_static_body(x, q, scale, zero_point)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_token_static_avx512(x: &[f32], q: &mut [i8], scale: f32, zp: i32) -> bool {
    quantize_token_static_body(x, q, scale, zp)
}

#[inline(always)]
fn quantize_token_static_body(x: &[f32], q: &mut [i8], scale: f32, zp: i32) -> bool {
    let zp = zp as f32;
    let mut finite = true;
    for (d, &v) in q.iter_mut().zip(x) {
        finite &= v.is_finite();
        // NaN would clamp to NaN: map it to 0 so the cast below stays defined.
        let r = round_ties_even(v / scale + zp).clamp(-128.0, 127.0);
        let r = if r.is_nan() { 0.0 } else { r };
        // SAFETY: `r` is finite and within [-128, 127].
        *d = unsafe { r.to_int_unchecked::<i32>() } as i8;
    }
    finite
}

/// Quantizes one row into its integers and returns its scale, `None` when the row is not finite.
type RowQuantizer<'a> = dyn Fn(&[f32], &mut [i8]) -> Option<f32> + Sync + 'a;

/// Tokens quantized per row: values padded with zeros to `k_padded` (a multiple of 4), each
/// row's scale and the sums of its integers per block of `block` columns (one block for
/// per-channel weights: `sums[t * blocks + b]`), and the zero point every row shares (0 for
/// symmetric per-token rows).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenRows {
    pub rows: usize,
    pub cols: usize,
    pub k_padded: usize,
    pub block: usize,
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    pub sums: Vec<i32>,
    pub zero_point: i32,
}

impl TokenRows {
    /// Quantizes `m` rows of `cols` values. The first row that is not finite is an error naming
    /// it.
    pub fn quantize(&mut self, x: &[f32], m: usize, cols: usize) -> Result<(), usize> {
        self.quantize_with(x, m, cols, 1)
    }

    /// [`TokenRows::quantize`] with the rows split over up to `threads` threads (each row is
    /// quantized alone, so the split does not change the result).
    pub fn quantize_with(
        &mut self,
        x: &[f32],
        m: usize,
        cols: usize,
        threads: usize,
    ) -> Result<(), usize> {
        self.zero_point = 0;
        self.quantize_rows(x, m, cols, cols, threads, &|row, q| {
            let s = quantize_token(row, q);
            s.is_finite().then_some(s)
        })
    }

    /// Quantizes `m` rows as `act` says, with up to `threads` threads.
    pub fn quantize_as(
        &mut self,
        act: ActivationQuant,
        x: &[f32],
        m: usize,
        cols: usize,
        threads: usize,
    ) -> Result<(), usize> {
        self.quantize_blocks(act, x, m, cols, cols, threads)
    }

    /// [`TokenRows::quantize_as`] with the integer sums kept per block of `block` columns (the
    /// weight's; it must divide `cols`).
    pub fn quantize_blocks(
        &mut self,
        act: ActivationQuant,
        x: &[f32],
        m: usize,
        cols: usize,
        block: usize,
        threads: usize,
    ) -> Result<(), usize> {
        assert!(
            block > 0 && cols.is_multiple_of(block) || block == cols,
            "TokenRows: block {block} does not divide {cols} columns"
        );
        match act {
            ActivationQuant::DynamicPerToken => {
                self.zero_point = 0;
                self.quantize_rows(x, m, cols, block, threads, &|row, q| {
                    let s = quantize_token(row, q);
                    s.is_finite().then_some(s)
                })
            }
            ActivationQuant::StaticPerTensor { scale, zero_point } => {
                self.zero_point = zero_point;
                self.quantize_rows(x, m, cols, block, threads, &|row, q| {
                    quantize_token_static(row, q, scale, zero_point).then_some(scale)
                })
            }
        }
    }

    /// Runs `one` on every row.
    fn quantize_rows(
        &mut self,
        x: &[f32],
        m: usize,
        cols: usize,
        block: usize,
        threads: usize,
        one: &RowQuantizer<'_>,
    ) -> Result<(), usize> {
        assert_eq!(x.len(), m * cols, "TokenRows::quantize: shape");
        let kp = cols.div_ceil(4) * 4;
        let block = block.max(1);
        let blocks = cols.div_ceil(block).max(1);
        self.rows = m;
        self.cols = cols;
        self.k_padded = kp;
        self.block = block;
        self.values.clear();
        self.values.resize(m * kp, 0);
        self.scales.resize(m, 0.0);
        self.sums.clear();
        self.sums.resize(m * blocks, 0);
        // Rows `first..` into the given parts; the first bad row, if any.
        let run = |first: usize, values: &mut [i8], scales: &mut [f32], sums: &mut [i32]| {
            for (i, ((q, s), sums)) in values
                .chunks_exact_mut(kp)
                .zip(scales.iter_mut())
                .zip(sums.chunks_exact_mut(blocks))
                .enumerate()
            {
                let t = first + i;
                let q = &mut q[..cols];
                *s = one(&x[t * cols..(t + 1) * cols], q).ok_or(t)?;
                for (sum, b) in sums.iter_mut().zip(q.chunks(block)) {
                    *sum = b.iter().map(|&v| v as i32).sum();
                }
            }
            Ok(())
        };
        let threads = if m * cols < 1 << 16 {
            1
        } else {
            threads.clamp(1, m.max(1))
        };
        if threads == 1 {
            return run(0, &mut self.values, &mut self.scales, &mut self.sums);
        }
        let per = m.div_ceil(threads);
        let results: Vec<Result<(), usize>> = std::thread::scope(|scope| {
            let parts = self
                .values
                .chunks_mut(per * kp)
                .zip(self.scales.chunks_mut(per))
                .zip(self.sums.chunks_mut(per * blocks))
                .enumerate();
            let handles: Vec<_> = parts
                .map(|(i, ((v, sc), su))| {
                    let run = &run;
                    scope.spawn(move || run(i * per, v, sc, su))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(usize::MAX)))
                .collect()
        });
        // The first bad row of all, whichever thread found it.
        results
            .into_iter()
            .filter_map(|r| r.err())
            .min()
            .map_or(Ok(()), Err)
    }
}

/// An int8 weight (rows = output channels) in panels for the GEMM: panel p holds channels
/// 16p..16p+15 (padded with zero weights), group g of four input values at bytes
/// `((p * groups + g) * 16 + c) * 4 ..+4`, each byte `w + 128`. Scales are per channel, or per
/// channel and block of `block` input values.
#[derive(Clone, Debug, PartialEq)]
pub struct A8W8Weight {
    pub rows: usize,
    pub cols: usize,
    /// Input values per scale: `cols` for one scale per channel.
    pub block: usize,
    /// One block: the scale of each channel. Several: `scales[b * padded_rows + o]` (rows
    /// padded to whole panels with zeros), so a panel's 16 scales of one block are adjacent.
    pub scales: Vec<f32>,
    /// `sum_k w[o][k]` per channel, for the activation zero point's share.
    pub row_sums: Vec<i32>,
    panels: Vec<u8>,
}

impl A8W8Weight {
    /// From row-major (rows, cols) int8 values and per-channel scales.
    pub fn new(values: &[i8], rows: usize, cols: usize, scales: Vec<f32>) -> A8W8Weight {
        assert!(scales.len() == rows, "A8W8Weight: scales");
        Self::with_blocks(values, rows, cols, cols, scales)
    }

    /// From row-major (rows, cols) values in [-128, 127] and a scale per channel and block of
    /// `block` input values (`scales[o * blocks + b]`); `block` divides `cols` and is a multiple
    /// of 4, or equals `cols`.
    pub fn with_blocks(
        values: &[i8],
        rows: usize,
        cols: usize,
        block: usize,
        scales: Vec<f32>,
    ) -> A8W8Weight {
        let blocks = cols.div_ceil(block.max(1)).max(1);
        assert!(
            values.len() == rows * cols && scales.len() == rows * blocks,
            "A8W8Weight: shapes"
        );
        assert!(
            block == cols || (block.is_multiple_of(4) && cols.is_multiple_of(block)),
            "A8W8Weight: block {block} for {cols} columns"
        );
        let groups = cols.div_ceil(4);
        let panels_n = rows.div_ceil(PANEL);
        let mut panels = vec![128u8; panels_n * groups * PANEL * 4];
        // Padded to whole panels, so the vector epilogue loads them without a tail.
        let mut row_sums = vec![0i32; panels_n * PANEL];
        for (o, sum) in row_sums.iter_mut().enumerate().take(rows) {
            *sum = values[o * cols..(o + 1) * cols]
                .iter()
                .map(|&v| v as i32)
                .sum();
        }
        for o in 0..rows {
            let (p, c) = (o / PANEL, o % PANEL);
            for k in 0..cols {
                let (g, t) = (k / 4, k % 4);
                panels[((p * groups + g) * PANEL + c) * 4 + t] =
                    (values[o * cols + k] as i16 + 128) as u8;
            }
        }
        let scales = if blocks == 1 {
            scales
        } else {
            let padded = panels_n * PANEL;
            let mut laid = vec![0f32; blocks * padded];
            for o in 0..rows {
                for b in 0..blocks {
                    laid[b * padded + o] = scales[o * blocks + b];
                }
            }
            laid
        };
        A8W8Weight {
            rows,
            cols,
            block: if blocks == 1 { cols } else { block },
            scales,
            row_sums,
            panels,
        }
    }

    /// Blocks of input values per channel (1 for per-channel scales).
    pub fn blocks(&self) -> usize {
        self.cols.div_ceil(self.block.max(1)).max(1)
    }

    /// The scale of channel `o`, block `b`.
    pub fn scale(&self, o: usize, b: usize) -> f32 {
        if self.blocks() == 1 {
            self.scales[o]
        } else {
            self.scales[b * self.rows.div_ceil(PANEL) * PANEL + o]
        }
    }

    /// From a quantized weight, which must be symmetric: int8 per channel (A8W8), or 8 bits
    /// or fewer per group of input channels (A8W4).
    pub fn from_quantized(q: &crate::QuantizedWeight) -> Result<A8W8Weight, String> {
        let s = &q.scheme;
        if q.params.iter().any(|p| p.zero_point != 0.0) {
            return Err("int8 activations need symmetric weights (a zero point is not 0)".into());
        }
        let scales = q.params.iter().map(|p| p.scale as f32).collect();
        match s.granularity {
            crate::Granularity::PerChannel if s.bits == 8 => {
                Ok(A8W8Weight::new(&q.values, q.rows, q.cols, scales))
            }
            crate::Granularity::PerGroup(g) if s.bits <= 8 && g % 4 == 0 => Ok(
                A8W8Weight::with_blocks(&q.values, q.rows, q.cols, g, scales),
            ),
            other => Err(format!(
                "int8 activations need int8 per-channel or grouped weights (got {} bits, {other:?})",
                s.bits
            )),
        }
    }

    fn groups(&self) -> usize {
        self.cols.div_ceil(4)
    }

    /// Weight value (o, k) back from the panels.
    pub fn value(&self, o: usize, k: usize) -> i8 {
        let (p, c, g, t) = (o / PANEL, o % PANEL, k / 4, k % 4);
        (self.panels[((p * self.groups() + g) * PANEL + c) * 4 + t] as i16 - 128) as i8
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.panels.len() + 4 * (self.scales.len() + self.row_sums.len())
    }

    /// The int32 bias that takes an activation zero point's share off each channel's sum
    /// (the original's `quant_bias`): `-zero_point * sum_k w[o][k]`.
    pub fn quant_bias(&self, zero_point: i32) -> Vec<i32> {
        self.row_sums[..self.rows]
            .iter()
            .map(|&s| -zero_point * s)
            .collect()
    }
}

/// `out = x W^T + bias` for f32 rows: each row quantized as `act` says (into `tokens`, reused
/// between calls), then [`linear`] on the best instruction set. The deploy cell and the
/// fake-quantized calibration cell both compute through this, so they give the same bits.
/// Fails with the index of the first row holding NaN or infinity.
#[allow(clippy::too_many_arguments)]
pub fn linear_f32(
    x: &[f32],
    m: usize,
    w: &A8W8Weight,
    act: ActivationQuant,
    bias: Option<&[f32]>,
    out: &mut [f32],
    threads: usize,
    tokens: &mut TokenRows,
) -> Result<(), usize> {
    tokens.quantize_blocks(act, x, m, w.cols, w.block, threads)?;
    linear(IntIsa::detect(), tokens, w, bias, out, threads);
    Ok(())
}

/// `out (m, rows) = x W^T` scaled, plus `bias`, on `isa` with up to `threads` threads. Tokens are
/// split across threads when there are enough of them, channels otherwise; each output is
/// computed by one thread in a fixed order.
pub fn linear(
    isa: IntIsa,
    x: &TokenRows,
    w: &A8W8Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    threads: usize,
) {
    assert!(
        x.cols == w.cols && x.k_padded == w.groups() * 4 && x.block == w.block,
        "a8w8::linear: input has {} features in blocks of {}, the weight {} in blocks of {}",
        x.cols,
        x.block,
        w.cols,
        w.block
    );
    assert!(
        w.blocks() == 1 || x.zero_point == 0,
        "a8w8::linear: static activations need per-channel weights"
    );
    assert!(out.len() == x.rows * w.rows, "a8w8::linear: output size");
    assert!(
        bias.is_none_or(|b| b.len() == w.rows),
        "a8w8::linear: bias size"
    );
    assert!(isa.supported(), "a8w8: {} not supported", isa.name());
    let (m, n) = (x.rows, w.rows);
    let panels = n.div_ceil(PANEL);
    // Small products are not worth a second thread.
    let threads = if m * n * w.cols < 1 << 18 {
        1
    } else {
        threads.max(1)
    };
    let out_ptr = SharedOut(out.as_mut_ptr());
    let run = |tokens: std::ops::Range<usize>, chans: std::ops::Range<usize>| {
        // SAFETY: callers give each thread disjoint (token, panel) ranges, so no output value
        // is written by two threads, and every range lies inside `out` (m x n).
        unsafe { tile_range(isa, x, w, bias, out_ptr, tokens, chans) }
    };
    if threads == 1 {
        return run(0..m, 0..panels);
    }
    let split_tokens = m >= 8 * threads;
    let units = if split_tokens { m.div_ceil(8) } else { panels };
    let per = units.div_ceil(threads);
    std::thread::scope(|scope| {
        for i in 1..threads.min(units.div_ceil(per)) {
            let run = &run;
            scope.spawn(move || {
                let (a, b) = (i * per, ((i + 1) * per).min(units));
                if split_tokens {
                    run(a * 8..(b * 8).min(m), 0..panels)
                } else {
                    run(0..m, a..b)
                }
            });
        }
        if split_tokens {
            run(0..(per * 8).min(m), 0..panels)
        } else {
            run(0..m, 0..per.min(panels))
        }
    });
}

#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: threads write disjoint parts of the output (see `linear`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Outputs of tokens `tokens` and panels `panels`.
///
/// # Safety
/// `out` points at `x.rows * w.rows` values; no other thread writes these outputs.
unsafe fn tile_range(
    isa: IntIsa,
    x: &TokenRows,
    w: &A8W8Weight,
    bias: Option<&[f32]>,
    out: SharedOut,
    tokens: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        IntIsa::Avx512Vnni => vnni::tiles(x, w, bias, out.0, tokens, panels),
        #[cfg(target_arch = "x86_64")]
        IntIsa::Avx2 => avx2::tiles(x, w, bias, out.0, tokens, panels),
        _ => portable_tiles(x, w, bias, out.0, tokens, panels),
    }
}

/// The epilogue every path shares, so they give the same bits: `sum` is `sum_k qx qw` less the
/// zero point's share.
#[inline(always)]
fn finish(sum: i32, sx: f32, sw: f32, bias: f32) -> f32 {
    sum as f32 * (sx * sw) + bias
}

/// The epilogue of blocked weights: `acc` is `sum_b sum_of_block_b * sw[o][b]`, added block
/// after block in f32 (multiply, then add, as the vector paths do).
#[inline(always)]
fn finish_blocks(acc: f32, sx: f32, bias: f32) -> f32 {
    acc * sx + bias
}

unsafe fn portable_tiles(
    x: &TokenRows,
    w: &A8W8Weight,
    bias: Option<&[f32]>,
    out: *mut f32,
    tokens: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
) {
    let n = w.rows;
    let kp = x.k_padded;
    let groups = w.groups();
    let blocks = w.blocks();
    let per_block = if blocks == 1 { groups } else { w.block / 4 };
    for t in tokens {
        let q = &x.values[t * kp..(t + 1) * kp];
        for o in panels.start * PANEL..(panels.end * PANEL).min(n) {
            let (p, c) = (o / PANEL, o % PANEL);
            let mut acc = 0f32;
            let mut last = 0i32;
            for blk in 0..blocks {
                let mut sum = 0i32;
                for g in blk * per_block..((blk + 1) * per_block).min(groups) {
                    let at = ((p * groups + g) * PANEL + c) * 4;
                    for b in 0..4 {
                        sum += q[4 * g + b] as i32 * (w.panels[at + b] as i32 - 128);
                    }
                }
                if blocks > 1 {
                    acc += sum as f32 * w.scale(o, blk);
                }
                last = sum;
            }
            let b = bias.map_or(0.0, |b| b[o]);
            *out.add(t * n + o) = if blocks == 1 {
                let sum = last - x.zero_point * w.row_sums[o];
                finish(sum, x.scales[t], w.scales[o], b)
            } else {
                finish_blocks(acc, x.scales[t], b)
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    #![allow(clippy::needless_range_loop)]
    use std::arch::x86_64::*;

    use super::{A8W8Weight, TokenRows, PANEL};

    /// Tiles of up to 8 tokens by 2 panels (16 accumulators), panels outer so a pair of panels
    /// (32 channels x k bytes) stays in L2 while the tokens stream past it.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tiles(
        x: &TokenRows,
        w: &A8W8Weight,
        bias: Option<&[f32]>,
        out: *mut f32,
        tokens: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
    ) {
        let mut p = panels.start;
        while p < panels.end {
            let pair = panels.end - p >= 2;
            let mut t = tokens.start;
            while t < tokens.end {
                let left = tokens.end - t;
                let step = match (pair, left) {
                    (true, 8..) => tile::<2, 8>(x, w, bias, out, t, p),
                    (false, 8..) => tile::<1, 8>(x, w, bias, out, t, p),
                    (true, 4..) => tile::<2, 4>(x, w, bias, out, t, p),
                    (false, 4..) => tile::<1, 4>(x, w, bias, out, t, p),
                    (true, _) => tile::<2, 1>(x, w, bias, out, t, p),
                    (false, _) => tile::<1, 1>(x, w, bias, out, t, p),
                };
                t += step;
            }
            p += if pair { 2 } else { 1 };
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const MP: usize, const NT: usize>(
        x: &TokenRows,
        w: &A8W8Weight,
        bias: Option<&[f32]>,
        out: *mut f32,
        t0: usize,
        p0: usize,
    ) -> usize {
        let groups = w.groups();
        let blocks = w.blocks();
        let per_block = if blocks == 1 { groups } else { w.block / 4 };
        let padded = w.rows.div_ceil(PANEL) * PANEL;
        let kp = x.k_padded;
        let mut acc = [[_mm512_setzero_si512(); MP]; NT];
        // Blocked weights: the f32 sum of the scaled block sums.
        let mut accf = [[_mm512_setzero_ps(); MP]; NT];
        let wp = w.panels.as_ptr();
        let xp = x.values.as_ptr();
        for blk in 0..blocks {
            if blocks > 1 {
                acc = [[_mm512_setzero_si512(); MP]; NT];
            }
            for g in blk * per_block..((blk + 1) * per_block).min(groups) {
                let mut wv = [_mm512_setzero_si512(); MP];
                for v in 0..MP {
                    wv[v] =
                        _mm512_loadu_si512(wp.add(((p0 + v) * groups + g) * PANEL * 4) as *const _);
                }
                for j in 0..NT {
                    let q = (xp.add((t0 + j) * kp + 4 * g) as *const i32).read_unaligned();
                    let qv = _mm512_set1_epi32(q);
                    for v in 0..MP {
                        acc[j][v] = _mm512_dpbusd_epi32(acc[j][v], wv[v], qv);
                    }
                }
            }
            if blocks > 1 {
                for v in 0..MP {
                    let o = (p0 + v) * PANEL;
                    // Padded to whole panels: no mask needed.
                    let sw = _mm512_loadu_ps(w.scales.as_ptr().add(blk * padded + o));
                    for j in 0..NT {
                        let fix = _mm512_set1_epi32(128 * x.sums[(t0 + j) * blocks + blk]);
                        let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[j][v], fix));
                        accf[j][v] = _mm512_add_ps(accf[j][v], _mm512_mul_ps(sum, sw));
                    }
                }
            }
        }
        let n = w.rows;
        for v in 0..MP {
            let o = (p0 + v) * PANEL;
            let live = (n - o).min(PANEL);
            let mask = ((1u32 << live) - 1) as __mmask16;
            let b = match bias {
                Some(b) => _mm512_maskz_loadu_ps(mask, b.as_ptr().add(o)),
                None => _mm512_setzero_ps(),
            };
            if blocks > 1 {
                for j in 0..NT {
                    let t = t0 + j;
                    let y =
                        _mm512_add_ps(_mm512_mul_ps(accf[j][v], _mm512_set1_ps(x.scales[t])), b);
                    _mm512_mask_storeu_ps(out.add(t * n + o), mask, y);
                }
                continue;
            }
            let sw = _mm512_maskz_loadu_ps(mask, w.scales.as_ptr().add(o));
            // The activation zero point's share of each channel (0 for per-token rows).
            let zfix = _mm512_mullo_epi32(
                _mm512_loadu_si512(w.row_sums.as_ptr().add(o) as *const _),
                _mm512_set1_epi32(x.zero_point),
            );
            for j in 0..NT {
                let t = t0 + j;
                // Take off the 128 * token sum that the unsigned weights added.
                let fix = _mm512_add_epi32(_mm512_set1_epi32(128 * x.sums[t]), zfix);
                let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[j][v], fix));
                let scale = _mm512_mul_ps(_mm512_set1_ps(x.scales[t]), sw);
                // Multiply, then add: the same two roundings as the portable epilogue.
                let y = _mm512_add_ps(_mm512_mul_ps(sum, scale), b);
                _mm512_mask_storeu_ps(out.add(t * n + o), mask, y);
            }
        }
        NT
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Without VNNI: the weight bytes are widened to int16 and multiplied pairwise into int32
    //! with `vpmaddwd`, which is exact (`vpmaddubsw` would saturate its int16 pair sums at
    //! 255 * 127 * 2). One panel of 16 channels by 2 tokens per tile; the pair sums are added
    //! and finished by the scalar epilogue, so the bits equal the portable path's.
    #![allow(clippy::needless_range_loop)]
    use std::arch::x86_64::*;

    use super::{finish, finish_blocks, A8W8Weight, TokenRows, PANEL};

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tiles(
        x: &TokenRows,
        w: &A8W8Weight,
        bias: Option<&[f32]>,
        out: *mut f32,
        tokens: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
    ) {
        for p in panels {
            let mut t = tokens.start;
            while t < tokens.end {
                t += if tokens.end - t >= 2 {
                    tile::<2>(x, w, bias, out, t, p)
                } else {
                    tile::<1>(x, w, bias, out, t, p)
                };
            }
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn tile<const NT: usize>(
        x: &TokenRows,
        w: &A8W8Weight,
        bias: Option<&[f32]>,
        out: *mut f32,
        t0: usize,
        p: usize,
    ) -> usize {
        let groups = w.groups();
        let blocks = w.blocks();
        let per_block = if blocks == 1 { groups } else { w.block / 4 };
        let kp = x.k_padded;
        let wp = w.panels.as_ptr();
        let xp = x.values.as_ptr();
        let n = w.rows;
        let o0 = p * PANEL;
        let live = PANEL.min(n - o0);
        // The f32 sums of the scaled block sums (blocked weights), and the last block's sums.
        let mut accf = [[0f32; PANEL]; NT];
        let mut sums = [[0i32; PANEL]; NT];
        for blk in 0..blocks {
            // acc[j][r]: channels 4r..4r+3 of token j, two pair sums each.
            let mut acc = [[_mm256_setzero_si256(); 4]; NT];
            for g in blk * per_block..((blk + 1) * per_block).min(groups) {
                let at = wp.add((p * groups + g) * PANEL * 4);
                let mut wv = [_mm256_setzero_si256(); 4];
                for r in 0..4 {
                    wv[r] = _mm256_cvtepu8_epi16(_mm_loadu_si128(at.add(16 * r) as *const __m128i));
                }
                for j in 0..NT {
                    let q = (xp.add((t0 + j) * kp + 4 * g) as *const i32).read_unaligned();
                    let qv = _mm256_cvtepi8_epi16(_mm_set1_epi32(q));
                    for r in 0..4 {
                        acc[j][r] = _mm256_add_epi32(acc[j][r], _mm256_madd_epi16(wv[r], qv));
                    }
                }
            }
            for j in 0..NT {
                let mut pairs = [0i32; 32];
                for r in 0..4 {
                    _mm256_storeu_si256(pairs.as_mut_ptr().add(8 * r) as *mut __m256i, acc[j][r]);
                }
                // Take off the 128 * token sum that the unsigned weights added.
                let fix = 128 * x.sums[(t0 + j) * blocks + blk];
                for c in 0..live {
                    sums[j][c] = pairs[2 * c] + pairs[2 * c + 1] - fix;
                    if blocks > 1 {
                        accf[j][c] += sums[j][c] as f32 * w.scale(o0 + c, blk);
                    }
                }
            }
        }
        for j in 0..NT {
            let t = t0 + j;
            for c in 0..live {
                let o = o0 + c;
                let b = bias.map_or(0.0, |b| b[o]);
                *out.add(t * n + o) = if blocks == 1 {
                    // The activation zero point's share.
                    let sum = sums[j][c] - x.zero_point * w.row_sums[o];
                    finish(sum, x.scales[t], w.scales[o], b)
                } else {
                    finish_blocks(accf[j][c], x.scales[t], b)
                };
            }
        }
        NT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(seed: u64, rows: usize, cols: usize) -> Vec<i8> {
        let mut s = seed;
        (0..rows * cols)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as u8 as i8
            })
            .collect()
    }

    fn floats(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn tokens_quantize_to_the_symmetric_grid() {
        let x = [0.5f32, -2.54, 1.27, 0.0, 0.01];
        let mut q = [0i8; 5];
        let s = quantize_token(&x, &mut q);
        assert_eq!(s, 2.54 / 127.0);
        assert_eq!(q, [25, -127, 64, 0, 0]);
        // Every value within half a step of its integer, on a row long enough for the vector
        // lanes, with NaN and infinity caught wherever they sit.
        let long: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut ql = vec![0i8; 100];
        let sl = quantize_token(&long, &mut ql);
        for (v, &qv) in long.iter().zip(&ql) {
            assert!((v / sl - qv as f32).abs() <= 0.5 + 1e-4, "{v} -> {qv}");
        }
        assert_eq!(ql.iter().map(|v| v.unsigned_abs()).max(), Some(127));
        for at in [3, 50, 99] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut row = long.clone();
                row[at] = bad;
                assert!(quantize_token(&row, &mut ql).is_nan(), "{bad} at {at}");
            }
        }
        assert_eq!(quantize_token(&[0.0; 3], &mut q[..3]), 0.0);
        assert!(quantize_token(&[1.0, f32::NAN], &mut q[..2]).is_nan());
        let mut rows = TokenRows::default();
        assert_eq!(rows.quantize(&[1.0, 2.0, f32::INFINITY, 0.0], 2, 2), Err(1));
    }

    #[test]
    fn every_path_and_thread_count_equals_the_plain_sum() {
        // Channel counts around the panel width, token counts around every tile height, input
        // widths that are and are not multiples of 4; the last two are large enough for threads
        // (split by tokens, then by channels).
        for (m, n, k) in [
            (1, 5, 7),
            (3, 16, 64),
            (9, 33, 30),
            (17, 48, 128),
            (40, 70, 96),
            (3, 200, 512),
            (1024, 1536, 576),
        ] {
            let wq = weights(m as u64 * 31 + n as u64, n, k);
            let scales: Vec<f32> = (0..n).map(|o| 0.01 + o as f32 * 1e-3).collect();
            let w = A8W8Weight::new(&wq, n, k, scales.clone());
            for o in 0..n {
                for c in 0..k {
                    assert_eq!(w.value(o, c), wq[o * k + c]);
                }
            }
            let x = floats(k as u64, m * k);
            let mut rows = TokenRows::default();
            rows.quantize(&x, m, k).unwrap();
            let mut split = TokenRows::default();
            split.quantize_with(&x, m, k, 3).unwrap();
            assert_eq!(split, rows);
            let bias: Vec<f32> = (0..n).map(|o| o as f32 * 0.5 - 3.0).collect();
            // Per-token rows, then static rows with a zero point (their range clips some values).
            let statics = ActivationQuant::StaticPerTensor {
                scale: 0.012,
                zero_point: -9,
            };
            for act in [ActivationQuant::DynamicPerToken, statics] {
                let mut rows = TokenRows::default();
                rows.quantize_as(act, &x, m, k, 1).unwrap();
                let mut split = TokenRows::default();
                split.quantize_as(act, &x, m, k, 3).unwrap();
                assert_eq!(split, rows);
                let zp = rows.zero_point;
                let mut want = vec![0f32; m * n];
                for t in 0..m {
                    for o in 0..n {
                        let sum: i32 = (0..k)
                            .map(|c| {
                                (rows.values[t * rows.k_padded + c] as i32 - zp)
                                    * wq[o * k + c] as i32
                            })
                            .sum();
                        want[t * n + o] = finish(sum, rows.scales[t], scales[o], bias[o]);
                    }
                }
                for isa in [IntIsa::Avx512Vnni, IntIsa::Avx2, IntIsa::Portable] {
                    if !isa.supported() {
                        continue;
                    }
                    for threads in [1, 2, 3] {
                        let mut out = vec![f32::NAN; m * n];
                        linear(isa, &rows, &w, Some(&bias), &mut out, threads);
                        assert_eq!(
                            out,
                            want,
                            "{} {threads} threads, {m}x{n}x{k}, {act:?}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn blocked_weights_equal_the_scaled_block_sums_on_every_path() {
        // A8W4: int4-range weights with a scale per block of input values.
        for (m, n, k, block) in [
            (1, 5, 64, 32),
            (9, 33, 128, 64),
            (17, 48, 256, 64),
            (40, 70, 576, 64),
            (1024, 96, 1536, 128),
        ] {
            let blocks = k / block;
            let wq: Vec<i8> = weights(n as u64 + 7, n, k)
                .into_iter()
                .map(|v| v >> 4) // [-8, 7]
                .collect();
            let scales: Vec<f32> = (0..n * blocks)
                .map(|i| 0.01 + (i % 13) as f32 * 1e-3)
                .collect();
            let w = A8W8Weight::with_blocks(&wq, n, k, block, scales.clone());
            for o in 0..n {
                for b in 0..blocks {
                    assert_eq!(w.scale(o, b), scales[o * blocks + b]);
                }
            }
            let x = floats(k as u64 + 1, m * k);
            let mut rows = TokenRows::default();
            rows.quantize_blocks(ActivationQuant::DynamicPerToken, &x, m, k, block, 1)
                .unwrap();
            let bias: Vec<f32> = (0..n).map(|o| o as f32 * 0.25 - 1.0).collect();
            let mut want = vec![0f32; m * n];
            for t in 0..m {
                for o in 0..n {
                    let mut acc = 0f32;
                    for b in 0..blocks {
                        let sum: i32 = (b * block..(b + 1) * block)
                            .map(|c| {
                                rows.values[t * rows.k_padded + c] as i32 * wq[o * k + c] as i32
                            })
                            .sum();
                        acc += sum as f32 * scales[o * blocks + b];
                    }
                    want[t * n + o] = finish_blocks(acc, rows.scales[t], bias[o]);
                }
            }
            for isa in [IntIsa::Avx512Vnni, IntIsa::Avx2, IntIsa::Portable] {
                if !isa.supported() {
                    continue;
                }
                for threads in [1, 2, 3] {
                    let mut out = vec![f32::NAN; m * n];
                    linear(isa, &rows, &w, Some(&bias), &mut out, threads);
                    assert_eq!(
                        out,
                        want,
                        "{} {threads} threads, {m}x{n}x{k}/{block}",
                        isa.name()
                    );
                }
            }
        }
    }

    #[test]
    fn static_tokens_follow_the_formula_and_clip() {
        let (scale, zp) = (0.05f32, 10);
        let x = [0.0f32, 0.025, 0.075, -1.0, 100.0, -100.0, 0.3];
        let mut q = [0i8; 7];
        assert!(quantize_token_static(&x, &mut q, scale, zp));
        // 0.025 / 0.05 = 0.5 -> ties to even: 0 + 10; 0.075 / 0.05 = 1.5 -> 2 + 10 = 12 (ties
        // are decided after the zero point is added: 1.5 + 10 = 11.5 -> 12).
        assert_eq!(q, [10, 10, 12, -10, 127, -128, 16]);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut row = x;
            row[2] = bad;
            assert!(!quantize_token_static(&row, &mut q, scale, zp), "{bad}");
        }
        let mut rows = TokenRows::default();
        let act = ActivationQuant::StaticPerTensor {
            scale,
            zero_point: zp,
        };
        assert_eq!(
            rows.quantize_as(act, &[1.0, 2.0, f32::NAN, 0.0], 2, 2, 1),
            Err(1)
        );
        // The range holds 0 and maps its ends onto -128 and 127.
        let ActivationQuant::StaticPerTensor { scale, zero_point } =
            ActivationQuant::static_from_range(-1.0, 3.0).unwrap()
        else {
            unreachable!()
        };
        assert_eq!(scale, 4.0 / 255.0);
        assert_eq!(zero_point, -64); // round(-128 + 63.75)
        assert!(ActivationQuant::static_from_range(0.5, f32::INFINITY).is_err());
    }
}
