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

use super::IntIsa;

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

/// Tokens quantized per row: values padded with zeros to `k_padded` (a multiple of 4), each
/// row's scale and the sum of its integers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenRows {
    pub rows: usize,
    pub cols: usize,
    pub k_padded: usize,
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    pub sums: Vec<i32>,
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
        assert_eq!(x.len(), m * cols, "TokenRows::quantize: shape");
        let kp = cols.div_ceil(4) * 4;
        self.rows = m;
        self.cols = cols;
        self.k_padded = kp;
        self.values.clear();
        self.values.resize(m * kp, 0);
        self.scales.resize(m, 0.0);
        self.sums.resize(m, 0);
        // Rows `first..` into the given parts; the first bad row, if any.
        let run = |first: usize, values: &mut [i8], scales: &mut [f32], sums: &mut [i32]| {
            for (i, ((q, s), sum)) in values
                .chunks_exact_mut(kp)
                .zip(scales.iter_mut())
                .zip(sums.iter_mut())
                .enumerate()
            {
                let t = first + i;
                let q = &mut q[..cols];
                *s = quantize_token(&x[t * cols..(t + 1) * cols], q);
                if !s.is_finite() {
                    return Err(t);
                }
                *sum = q.iter().map(|&v| v as i32).sum();
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
                .zip(self.sums.chunks_mut(per))
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
        results.into_iter().collect()
    }
}

/// An int8 weight (rows = output channels) with one scale per channel, in panels for the GEMM:
/// panel p holds channels 16p..16p+15 (padded with zero weights), group g of four input values
/// at bytes `((p * groups + g) * 16 + c) * 4 ..+4`, each byte `w + 128`.
#[derive(Clone, Debug, PartialEq)]
pub struct A8W8Weight {
    pub rows: usize,
    pub cols: usize,
    pub scales: Vec<f32>,
    panels: Vec<u8>,
}

impl A8W8Weight {
    /// From row-major (rows, cols) int8 values and per-channel scales.
    pub fn new(values: &[i8], rows: usize, cols: usize, scales: Vec<f32>) -> A8W8Weight {
        assert!(
            values.len() == rows * cols && scales.len() == rows,
            "A8W8Weight: shapes"
        );
        let groups = cols.div_ceil(4);
        let panels_n = rows.div_ceil(PANEL);
        let mut panels = vec![128u8; panels_n * groups * PANEL * 4];
        for o in 0..rows {
            let (p, c) = (o / PANEL, o % PANEL);
            for k in 0..cols {
                let (g, t) = (k / 4, k % 4);
                panels[((p * groups + g) * PANEL + c) * 4 + t] =
                    (values[o * cols + k] as i16 + 128) as u8;
            }
        }
        A8W8Weight {
            rows,
            cols,
            scales,
            panels,
        }
    }

    /// From a quantized weight, which must be 8 bits, per channel and symmetric.
    pub fn from_quantized(q: &crate::QuantizedWeight) -> Result<A8W8Weight, String> {
        let s = &q.scheme;
        if s.bits != 8 || s.granularity != crate::Granularity::PerChannel {
            return Err(format!(
                "int8 activations need int8 per-channel weights (got {} bits, {:?})",
                s.bits, s.granularity
            ));
        }
        if q.params.iter().any(|p| p.zero_point != 0.0) {
            return Err("int8 activations need symmetric weights (a zero point is not 0)".into());
        }
        let scales = q.params.iter().map(|p| p.scale as f32).collect();
        Ok(A8W8Weight::new(&q.values, q.rows, q.cols, scales))
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
        self.panels.len() + 4 * self.scales.len()
    }
}

/// `out = x W^T + bias` for f32 rows: each row quantized per token (into `tokens`, reused
/// between calls), then [`linear`] on the best instruction set. The deploy cell and the
/// fake-quantized calibration cell both compute through this, so they give the same bits.
/// Fails with the index of the first row holding NaN or infinity.
pub fn linear_f32(
    x: &[f32],
    m: usize,
    w: &A8W8Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    threads: usize,
    tokens: &mut TokenRows,
) -> Result<(), usize> {
    tokens.quantize_with(x, m, w.cols, threads)?;
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
        x.cols == w.cols && x.k_padded == w.groups() * 4,
        "a8w8::linear: input has {} features, the weight {}",
        x.cols,
        w.cols
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
        _ => portable_tiles(x, w, bias, out.0, tokens, panels),
    }
}

/// The epilogue every path shares, so they give the same bits.
#[inline(always)]
fn finish(sum: i32, sx: f32, sw: f32, bias: f32) -> f32 {
    sum as f32 * (sx * sw) + bias
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
    for t in tokens {
        let q = &x.values[t * kp..(t + 1) * kp];
        for o in panels.start * PANEL..(panels.end * PANEL).min(n) {
            let (p, c) = (o / PANEL, o % PANEL);
            let mut sum = 0i32;
            for g in 0..groups {
                let at = ((p * groups + g) * PANEL + c) * 4;
                for b in 0..4 {
                    sum += q[4 * g + b] as i32 * (w.panels[at + b] as i32 - 128);
                }
            }
            let b = bias.map_or(0.0, |b| b[o]);
            *out.add(t * n + o) = finish(sum, x.scales[t], w.scales[o], b);
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
        let kp = x.k_padded;
        let mut acc = [[_mm512_setzero_si512(); MP]; NT];
        let wp = w.panels.as_ptr();
        let xp = x.values.as_ptr();
        for g in 0..groups {
            let mut wv = [_mm512_setzero_si512(); MP];
            for v in 0..MP {
                wv[v] = _mm512_loadu_si512(wp.add(((p0 + v) * groups + g) * PANEL * 4) as *const _);
            }
            for j in 0..NT {
                let q = (xp.add((t0 + j) * kp + 4 * g) as *const i32).read_unaligned();
                let qv = _mm512_set1_epi32(q);
                for v in 0..MP {
                    acc[j][v] = _mm512_dpbusd_epi32(acc[j][v], wv[v], qv);
                }
            }
        }
        let n = w.rows;
        for v in 0..MP {
            let o = (p0 + v) * PANEL;
            let live = (n - o).min(PANEL);
            let mask = ((1u32 << live) - 1) as __mmask16;
            let sw = _mm512_maskz_loadu_ps(mask, w.scales.as_ptr().add(o));
            let b = match bias {
                Some(b) => _mm512_maskz_loadu_ps(mask, b.as_ptr().add(o)),
                None => _mm512_setzero_ps(),
            };
            for j in 0..NT {
                let t = t0 + j;
                // Take off the 128 * token sum that the unsigned weights added.
                let fix = _mm512_set1_epi32(128 * x.sums[t]);
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
            let mut want = vec![0f32; m * n];
            for t in 0..m {
                for o in 0..n {
                    let sum: i32 = (0..k)
                        .map(|c| rows.values[t * rows.k_padded + c] as i32 * wq[o * k + c] as i32)
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
                    assert_eq!(out, want, "{} {threads} threads, {m}x{n}x{k}", isa.name());
                }
            }
        }
    }
}
