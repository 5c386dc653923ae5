//! Integer dot products for batch-1 decode: the activation row is quantized to int8 in blocks of
//! 32 values (one f32 scale each, as llama.cpp's Q8 dot products do), and each packed weight row
//! is multiplied with it in integer arithmetic: `vpdpbusd` on AVX-512 VNNI, `vpmaddubsw` on AVX2,
//! plain i32 sums elsewhere. A weight row then costs its packed bytes and a handful of
//! instructions per 64 values, where the f32-activation row kernel converts every integer to
//! f32 first.
//!
//! What every path computes is the dot product of the dequantized weight row with the
//! dequantized activation row: `sum_c s_b(c) d_c (u_c . q_c) + sum_b o_b sum_(c in b) d_c sum(q_c)`
//! for chunks c of 32 columns in weight blocks b. The integer sums are exact on every path;
//! only the order of the f32 epilogue differs (the tests allow 1e-5 of the magnitude).

use super::packed::{PackedData, PackedWeight, INT4_CHUNK};

/// Columns per activation block: one f32 scale per 32 int8 values.
pub const Q8_BLOCK: usize = 32;

/// How finely an activation row is quantized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Digits {
    /// One int8 per value, `x ~ d q` (llama.cpp's Q8 arithmetic): about 0.4% error per value, which
    /// cost SmolLM2 W8 about 1% perplexity in decode.
    One,
    /// Two int8 digits per value, `x ~ d (q + r / 256)`, where r rounds what q left: 16-bit
    /// precision (decode then matches the f32-activation result to ~1e-4) for one more integer
    /// product per 32 values.
    #[default]
    Two,
}

/// An activation row quantized for [`dot_rows`]: on each block c of 32 values,
/// `x ~ unit_c * (256 q + r)` with two digits, or `x ~ unit_c * q` with one.
#[derive(Clone, Debug, Default)]
pub struct Q8Row {
    pub digits: Digits,
    /// The leading int8 digits, in column order.
    pub q: Vec<i8>,
    /// The second digits (empty with one digit).
    pub r: Vec<i8>,
    /// One unit per block: d / 256 with two digits, d with one (d = max|x| / 127).
    pub unit: Vec<f32>,
    /// The dequantized sum of each block: what the weight offsets multiply.
    pub block_sum: Vec<f32>,
    /// Each block's unit repeated for the 8 i32 lanes its 32 products land in (what the
    /// AVX-512 kernel multiplies a pair of blocks by).
    lane_unit: Vec<f32>,
    /// -8 times the integer sum of each 4 consecutive values, in those same lanes: the integer
    /// share of a centered nibble's offset (u - 8), so such weights need no f32 offset pass.
    lane_shift: Vec<i32>,
}

impl Q8Row {
    /// Quantizes `x` (its length a multiple of [`Q8_BLOCK`]) in place of the previous row,
    /// reusing the buffers: q rounds x / d to the nearest integer with d = max|x| / 127 per
    /// block, and with two digits r rounds 256 (x / d - q).
    pub fn quantize(&mut self, x: &[f32], digits: Digits) {
        assert!(
            x.len().is_multiple_of(Q8_BLOCK),
            "a Q8 row needs a multiple of {Q8_BLOCK} values, got {}",
            x.len()
        );
        let blocks = x.len() / Q8_BLOCK;
        let two = digits == Digits::Two;
        self.digits = digits;
        self.q.resize(x.len(), 0);
        self.r.resize(if two { x.len() } else { 0 }, 0);
        self.unit.resize(blocks, 0.0);
        self.block_sum.resize(blocks, 0.0);
        self.lane_unit.resize(blocks * 8, 0.0);
        self.lane_shift.resize(x.len() / 4, 0);
        for (c, xs) in x.chunks_exact(Q8_BLOCK).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (i, &v) in xs.iter().enumerate() {
                let scaled = v * inv;
                let q = round_even(scaled).clamp(-127.0, 127.0);
                self.q[c * Q8_BLOCK + i] = q as i8;
                let integer = if two {
                    let r = round_even((scaled - q) * 256.0).clamp(-127.0, 127.0) as i8;
                    self.r[c * Q8_BLOCK + i] = r;
                    256 * q as i32 + r as i32
                } else {
                    q as i32
                };
                sum += integer;
            }
            let unit = if two { d / 256.0 } else { d };
            self.unit[c] = unit;
            self.block_sum[c] = unit * sum as f32;
            self.lane_unit[c * 8..c * 8 + 8].fill(unit);
        }
        for l in 0..self.lane_shift.len() {
            self.lane_shift[l] = -8 * (4 * l..4 * l + 4).map(|i| self.integer(i)).sum::<i32>();
        }
    }

    /// Value i as an integer multiple of its block's unit.
    fn integer(&self, i: usize) -> i32 {
        match self.digits {
            Digits::One => self.q[i] as i32,
            Digits::Two => 256 * self.q[i] as i32 + self.r[i] as i32,
        }
    }

    /// The values the kernels multiply by.
    pub fn dequantized(&self) -> Vec<f32> {
        (0..self.len())
            .map(|i| self.unit[i / Q8_BLOCK] * self.integer(i) as f32)
            .collect()
    }

    /// Values in the row.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

/// x rounded to the nearest integer, ties to even, for |x| < 2^22 (adding 1.5 * 2^23 leaves no
/// fraction bits; libm's `roundf` was a function call per value).
#[inline(always)]
fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Instruction sets of the integer dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotIsa {
    /// AVX-512 with VNNI (`vpdpbusd`) and byte operations (BW).
    Avx512Vnni,
    /// AVX2 `vpmaddubsw` / `vpmaddwd` (exact here: products of at most 128 x 127 summed in pairs
    /// stay within i16).
    Avx2,
    Portable,
}

impl DotIsa {
    pub fn name(self) -> &'static str {
        match self {
            DotIsa::Avx512Vnni => "avx512-vnni",
            DotIsa::Avx2 => "avx2",
            DotIsa::Portable => "portable",
        }
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            DotIsa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            DotIsa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            DotIsa::Portable => true,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every set this CPU can run, the fastest first.
    pub fn available() -> Vec<DotIsa> {
        [DotIsa::Avx512Vnni, DotIsa::Avx2, DotIsa::Portable]
            .into_iter()
            .filter(|i| i.supported())
            .collect()
    }

    /// The fastest this CPU supports, unless `GSTICK_ISA` names a lesser one it supports
    /// (`avx512` selects AVX-512 VNNI here).
    pub fn detect() -> DotIsa {
        static CHOSEN: std::sync::OnceLock<DotIsa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let wanted = std::env::var("GSTICK_ISA").ok();
            let available = DotIsa::available();
            available
                .iter()
                .copied()
                .find(|i| {
                    wanted.as_deref() == Some(i.name())
                        || (wanted.as_deref() == Some("avx512") && *i == DotIsa::Avx512Vnni)
                })
                .unwrap_or(available[0])
        })
    }
}

/// Whether [`dot_rows`] can run this weight: blocks (and so rows) of whole 32-column chunks.
pub fn supports(w: &PackedWeight) -> bool {
    w.cols > 0 && w.group.is_multiple_of(Q8_BLOCK) && w.cols.is_multiple_of(w.group)
}

/// `out[i] = dot(dequantized row start + i, dequantized x)` with the chosen instruction set.
///
/// # Panics
/// If the weight is not [`supports`]ed, `x` does not have `w.cols` values, the rows run past the
/// weight, or the CPU lacks `isa` (callers choose from [`DotIsa::available`]).
pub fn dot_rows(isa: DotIsa, w: &PackedWeight, x: &Q8Row, start: usize, out: &mut [f32]) {
    dot_rows_centered(isa, w, centered_nibbles(w), x, start, out)
}

/// Whether every offset of an int4 weight is -8 times its scale (symmetric int4, GGUF Q4_0):
/// the weight is then `scale * (u - 8)`, and the kernels subtract the 8 in integers.
pub fn centered_nibbles(w: &PackedWeight) -> bool {
    matches!(w.data, PackedData::Int4(_))
        && w.offsets.len() == w.scales.len()
        && w.offsets
            .iter()
            .zip(&w.scales)
            .all(|(&o, &s)| o == -8.0 * s)
}

/// [`dot_rows`] with [`centered_nibbles`] already known (the decoder checks it once per weight).
pub fn dot_rows_centered(
    isa: DotIsa,
    w: &PackedWeight,
    centered: bool,
    x: &Q8Row,
    start: usize,
    out: &mut [f32],
) {
    assert!(
        supports(w),
        "weight blocks of {} columns are not whole Q8 blocks",
        w.group
    );
    assert_eq!(x.len(), w.cols, "the Q8 row does not match the weight");
    assert!(start + out.len() <= w.rows, "rows past the weight");
    assert!(
        isa.supported(),
        "{} is not supported by this CPU",
        isa.name()
    );
    let centered = centered && matches!(w.data, PackedData::Int4(_));
    match isa {
        // SAFETY: support was checked above.
        #[cfg(target_arch = "x86_64")]
        DotIsa::Avx512Vnni => unsafe { vnni::dot_rows(w, centered, x, start, out) },
        #[cfg(target_arch = "x86_64")]
        DotIsa::Avx2 => unsafe { avx2::dot_rows(w, centered, x, start, out) },
        _ => portable_dot_rows(w, centered, x, start, out),
    }
    if !centered && !w.offsets.is_empty() {
        add_offsets(w, x, start, out);
    }
}

/// The weight offsets' share, `sum_b o_b * sum_(c in b) d_c sum(q_c)`, added to each row.
fn add_offsets(w: &PackedWeight, x: &Q8Row, start: usize, out: &mut [f32]) {
    let (blocks, per_block) = (w.blocks(), w.group / Q8_BLOCK);
    for (i, y) in out.iter_mut().enumerate() {
        let offs = &w.offsets[(start + i) * blocks..(start + i + 1) * blocks];
        let mut extra = 0f32;
        for (o, sums) in offs.iter().zip(x.block_sum.chunks_exact(per_block)) {
            extra += o * sums.iter().sum::<f32>();
        }
        *y += extra;
    }
}

/// The reference: exact i32 sums per 32-column chunk (less 8 times the activation sum for
/// centered nibbles), then `s_b * d_c * sum` in column order.
fn portable_dot_rows(w: &PackedWeight, centered: bool, x: &Q8Row, start: usize, out: &mut [f32]) {
    let (cols, blocks, per_block) = (w.cols, w.blocks(), w.group / Q8_BLOCK);
    for (i, y) in out.iter_mut().enumerate() {
        let r = start + i;
        let mut total = 0f32;
        for c in 0..cols / Q8_BLOCK {
            let sum = chunk_sum(w, centered, x, r, c);
            total += w.scales[r * blocks + c / per_block] * x.unit[c] * sum as f32;
        }
        *y = total;
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    //! Two 32-column chunks per 512-bit `vpdpbusd`: i32 lanes 0-7 hold chunk 2p's products, lanes
    //! 8-15 chunk 2p+1's, so one f32 multiply by the lane units and one FMA by the weight scales
    //! finish a pair. With two digits, the leading digit's sums are shifted left by 8 bits and
    //! the second digit's products added on.
    use std::arch::x86_64::*;

    use super::{Digits, PackedData, PackedWeight, Q8Row, Q8_BLOCK};

    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and VNNI; the caller checked the shapes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_rows(
        w: &PackedWeight,
        centered: bool,
        x: &Q8Row,
        start: usize,
        out: &mut [f32],
    ) {
        match x.digits {
            Digits::One => rows::<false>(w, centered, x, start, out),
            Digits::Two => rows::<true>(w, centered, x, start, out),
        }
    }

    /// The integer products of 64 weight bytes (as unsigned `u`, or signed `wv` for int8) with
    /// the activation digits at column `col`, added to `init`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn products<const TWO: bool>(
        init: __m512i,
        u: __m512i,
        signs: Option<__mmask64>,
        x: &Q8Row,
        col: usize,
    ) -> __m512i {
        let digit = |v: &[i8]| {
            let xv = _mm512_loadu_si512(v.as_ptr().add(col).cast());
            match signs {
                Some(negative) => _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv),
                None => xv,
            }
        };
        if TWO {
            let high = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, digit(&x.q));
            _mm512_dpbusd_epi32(
                _mm512_add_epi32(_mm512_slli_epi32(high, 8), init),
                u,
                digit(&x.r),
            )
        } else {
            _mm512_dpbusd_epi32(init, u, digit(&x.q))
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn rows<const TWO: bool>(
        w: &PackedWeight,
        centered: bool,
        x: &Q8Row,
        start: usize,
        out: &mut [f32],
    ) {
        let chunks = w.cols / Q8_BLOCK;
        let (blocks, per_block) = (w.blocks(), w.group / Q8_BLOCK);
        for (i, y) in out.iter_mut().enumerate() {
            let r = start + i;
            let scales = &w.scales[r * blocks..(r + 1) * blocks];
            let mut total = _mm512_setzero_ps();
            let mut c = 0;
            while c + 2 <= chunks {
                let col = c * Q8_BLOCK;
                let sums = match &w.data {
                    PackedData::Int8(v) => {
                        // |w| as unsigned bytes against x carrying w's sign.
                        let wv = _mm512_loadu_si512(v.as_ptr().add(r * w.cols + col).cast());
                        let negative = _mm512_movepi8_mask(wv);
                        products::<TWO>(
                            _mm512_setzero_si512(),
                            _mm512_abs_epi8(wv),
                            Some(negative),
                            x,
                            col,
                        )
                    }
                    PackedData::Int4(v) => {
                        let bytes =
                            _mm256_loadu_si256(v.as_ptr().add((r * w.cols + col) / 2).cast());
                        let mask = _mm256_set1_epi8(0x0F);
                        let lo = _mm256_and_si256(bytes, mask);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
                        // [lo0 lo1 hi0 hi1] (128-bit lanes) -> [lo0 hi0 lo1 hi1]: column order.
                        let both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                        let u = _mm512_shuffle_i64x2(both, both, 0b11_01_10_00);
                        let init = if centered {
                            _mm512_loadu_si512(x.lane_shift.as_ptr().add(c * 8).cast())
                        } else {
                            _mm512_setzero_si512()
                        };
                        products::<TWO>(init, u, None, x, col)
                    }
                };
                let unit = _mm512_loadu_ps(x.lane_unit.as_ptr().add(c * 8));
                // Both chunks share a scale unless blocks are single chunks.
                let s = if per_block > 1 {
                    _mm512_set1_ps(scales[c / per_block])
                } else {
                    _mm512_mask_blend_ps(
                        0xFF00,
                        _mm512_set1_ps(scales[c]),
                        _mm512_set1_ps(scales[c + 1]),
                    )
                };
                total = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sums), unit), s, total);
                c += 2;
            }
            let mut sum = _mm512_reduce_add_ps(total);
            if c < chunks {
                sum += scales[c / per_block]
                    * x.unit[c]
                    * super::chunk_sum(w, centered, x, r, c) as f32;
            }
            *y = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! One 32-column chunk per 256-bit `vpmaddubsw` + `vpmaddwd` (per digit).
    use std::arch::x86_64::*;

    use super::{Digits, PackedData, PackedWeight, Q8Row, Q8_BLOCK};

    /// # Safety
    /// The CPU must support AVX2 and FMA; the caller checked the shapes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows(
        w: &PackedWeight,
        centered: bool,
        x: &Q8Row,
        start: usize,
        out: &mut [f32],
    ) {
        match x.digits {
            Digits::One => rows::<false>(w, centered, x, start, out),
            Digits::Two => rows::<true>(w, centered, x, start, out),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const TWO: bool>(
        w: &PackedWeight,
        centered: bool,
        x: &Q8Row,
        start: usize,
        out: &mut [f32],
    ) {
        let chunks = w.cols / Q8_BLOCK;
        let (blocks, per_block) = (w.blocks(), w.group / Q8_BLOCK);
        let ones = _mm256_set1_epi16(1);
        for (i, y) in out.iter_mut().enumerate() {
            let r = start + i;
            let scales = &w.scales[r * blocks..(r + 1) * blocks];
            let mut total = _mm256_setzero_ps();
            for c in 0..chunks {
                let col = c * Q8_BLOCK;
                // Unsigned weight bytes and a sign source for the activations (int8 weights).
                let (u, signs) = match &w.data {
                    PackedData::Int8(v) => {
                        let wv = _mm256_loadu_si256(v.as_ptr().add(r * w.cols + col).cast());
                        (_mm256_abs_epi8(wv), Some(wv))
                    }
                    PackedData::Int4(v) => {
                        let bytes = _mm_loadu_si128(v.as_ptr().add((r * w.cols + col) / 2).cast());
                        let mask = _mm_set1_epi8(0x0F);
                        let lo = _mm_and_si128(bytes, mask);
                        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
                        (_mm256_set_m128i(hi, lo), None)
                    }
                };
                let digit = |v: &[i8]| {
                    let xv = _mm256_loadu_si256(v.as_ptr().add(col).cast());
                    let xv = match signs {
                        Some(wv) => _mm256_sign_epi8(xv, wv),
                        None => xv,
                    };
                    _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), ones)
                };
                let mut sums = digit(&x.q);
                if TWO {
                    sums = _mm256_add_epi32(_mm256_slli_epi32(sums, 8), digit(&x.r));
                }
                if centered {
                    let shift = _mm256_loadu_si256(x.lane_shift.as_ptr().add(c * 8).cast());
                    sums = _mm256_add_epi32(sums, shift);
                }
                let scale = _mm256_set1_ps(scales[c / per_block] * x.unit[c]);
                total = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, total);
            }
            let s = _mm_add_ps(
                _mm256_castps256_ps128(total),
                _mm256_extractf128_ps(total, 1),
            );
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            *y = _mm_cvtss_f32(s);
        }
    }
}

/// The exact integer dot product of chunk c of row r with the activation chunk, in units of
/// the chunk (less 8 times the activation sum when `centered`).
fn chunk_sum(w: &PackedWeight, centered: bool, x: &Q8Row, r: usize, c: usize) -> i32 {
    let first = r * w.cols + c * Q8_BLOCK;
    let weight = |i: usize| -> i32 {
        match &w.data {
            PackedData::Int8(v) => v[first + i] as i32,
            PackedData::Int4(v) => {
                let byte = v[first / 2 + i % (INT4_CHUNK / 2)];
                let byte = if i < INT4_CHUNK / 2 {
                    byte & 0x0F
                } else {
                    byte >> 4
                };
                byte as i32
            }
        }
    };
    let sum: i32 = (0..Q8_BLOCK)
        .map(|i| weight(i) * x.integer(c * Q8_BLOCK + i))
        .sum();
    if centered {
        sum + x.lane_shift[c * 8..c * 8 + 8].iter().sum::<i32>()
    } else {
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::{Granularity, WeightScheme};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed * 7919)
                    >> 9;
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn packed(
        rows: usize,
        cols: usize,
        bits: u32,
        group: Option<usize>,
        symmetric: bool,
    ) -> PackedWeight {
        let w = values(rows * cols, bits + 3);
        let scheme = WeightScheme {
            bits,
            symmetric,
            granularity: match group {
                Some(g) => Granularity::PerGroup(g),
                None => Granularity::PerChannel,
            },
            narrow: false,
        };
        let q = scheme.quantize_weight(&w, rows, cols).unwrap();
        PackedWeight::from_quantized(&q)
    }

    /// dot(dequantized row, dequantized x) in f64, and the sum of the products' magnitudes.
    fn exact(w: &PackedWeight, x: &Q8Row, r: usize) -> (f64, f64) {
        let mut row = vec![0f32; w.cols];
        w.dequantize_rows(r, &mut row);
        let xs = x.dequantized();
        let dot = row
            .iter()
            .zip(&xs)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum();
        let mag = row
            .iter()
            .zip(&xs)
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum();
        (dot, mag)
    }

    #[test]
    fn every_path_computes_the_dequantized_dot_product() {
        let cases = [
            packed(13, 576, 4, Some(64), true),
            packed(9, 320, 4, Some(32), false),
            packed(6, 96, 4, Some(32), true),
            packed(11, 576, 8, None, true),
            packed(7, 96, 8, Some(32), true),
        ];
        let mut x = Q8Row::default();
        for digits in [Digits::One, Digits::Two] {
            for w in &cases {
                x.quantize(&values(w.cols, w.rows as u32), digits);
                let mut reference = vec![0f32; w.rows];
                dot_rows(DotIsa::Portable, w, &x, 0, &mut reference);
                for (r, &y) in reference.iter().enumerate() {
                    let (dot, mag) = exact(w, &x, r);
                    assert!(
                        (y as f64 - dot).abs() <= 1e-5 * mag,
                        "row {r}: {y} vs {dot}"
                    );
                }
                for isa in DotIsa::available() {
                    // A middle range of rows exercises the start offset.
                    let mut out = vec![0f32; w.rows - 2];
                    dot_rows(isa, w, &x, 1, &mut out);
                    for (i, y) in out.iter().enumerate() {
                        let (_, mag) = exact(w, &x, i + 1);
                        assert!(
                            (y - reference[i + 1]).abs() as f64 <= 1e-5 * mag,
                            "{} {digits:?}: row {}: {y} vs {}",
                            isa.name(),
                            i + 1,
                            reference[i + 1]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn quantization_error_is_half_a_unit() {
        let xs = values(64, 5);
        let mut x = Q8Row::default();
        for (digits, bound) in [
            (Digits::One, 0.5 / 127.0),
            (Digits::Two, 0.5 / 127.0 / 256.0),
        ] {
            x.quantize(&xs, digits);
            for (i, (v, q)) in xs.iter().zip(x.dequantized()).enumerate() {
                let amax = xs[i / 32 * 32..i / 32 * 32 + 32]
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    (q - v).abs() <= bound * amax * 1.001 + 1e-9,
                    "{digits:?} value {i}: {q} vs {v}"
                );
            }
        }
        // A block of zeros has unit 0 and zero values, not NaN.
        x.quantize(&[0.0; 32], Digits::Two);
        assert!(x.dequantized().iter().all(|&v| v == 0.0) && x.unit[0] == 0.0);
    }
}
