//! Element-wise math over f32 slices written so the compiler vectorizes it: exp by range
//! reduction and a polynomial (libm's `expf` is a scalar call per value and took a tenth of an
//! LLM forward pass), SiLU, and row reductions with 16 independent partial sums.
//!
//! The same source is compiled for AVX-512, for AVX2 and portably, and chosen at run time. The
//! arithmetic is plain IEEE multiply and add (Rust never contracts them into FMA), so every path
//! gives bit-identical results; only the speed differs.

/// exp(x) for x in the f32 range; below -87.3 the result is the smallest normal magnitude
/// (about 1e-38) rather than a subnormal or 0, which no softmax or sigmoid can tell apart.
/// Relative error under 2 ulp (tested against f64).
#[inline(always)]
fn exp_one(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer in the mantissa
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.3 { 88.3 } else { x };
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Minimax polynomial for exp on [-ln2/2, ln2/2] (the Cephes coefficients).
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    // 2^n from the integer held in t's low mantissa bits.
    let n_bits = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

/// Which compiled copy of the loops runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathPath {
    Avx512,
    Avx2,
    Portable,
}

impl MathPath {
    /// Every path this CPU can run, the fastest first (the portable one always last).
    pub fn available() -> Vec<MathPath> {
        let mut paths = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                paths.push(MathPath::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                paths.push(MathPath::Avx2);
            }
        }
        paths.push(MathPath::Portable);
        paths
    }

    /// The fastest path of this CPU.
    pub fn best() -> MathPath {
        static BEST: std::sync::OnceLock<MathPath> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| MathPath::available()[0])
    }
}

/// Declares `pub fn $name(path, args)` plus one copy of `$body` per instruction set.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        pub fn $name(path: MathPath, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            match path {
                // SAFETY: `MathPath::available` lists a path only when the CPU has its features.
                #[cfg(target_arch = "x86_64")]
                MathPath::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                MathPath::Avx2 if std::arch::is_x86_feature_detected!("avx2") => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}

/// Lanes of the partial sums: a whole AVX-512 register, or two AVX2 ones.
const LANES: usize = 16;

multiversion! {
    /// x <- exp(x - shift), returning the sum of the results (16 partial sums, combined in a
    /// fixed order).
    fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let mut chunks = x.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (v, a) in c.iter_mut().zip(acc.iter_mut()) {
                *v = exp_one(*v - shift);
                *a += *v;
            }
        }
        for (v, a) in chunks.into_remainder().iter_mut().zip(acc.iter_mut()) {
            *v = exp_one(*v - shift);
            *a += *v;
        }
        fold_lanes(acc)
    }
}

multiversion! {
    /// Sum of exp(x - shift), x unchanged.
    fn sum_exp_shifted(x: &[f32], shift: f32) -> f32 {
        lane_sum(x, |v| exp_one(v - shift))
    }
}

multiversion! {
    /// The largest value (NaN if any value is NaN; -inf for an empty slice).
    fn max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut nan = false;
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for (v, a) in c.iter().zip(acc.iter_mut()) {
                nan |= v.is_nan();
                *a = if *v > *a { *v } else { *a };
            }
        }
        for v in chunks.remainder() {
            nan |= v.is_nan();
            acc[0] = if *v > acc[0] { *v } else { acc[0] };
        }
        if nan {
            return f32::NAN;
        }
        acc.into_iter().fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m })
    }
}

multiversion! {
    /// x <- x * s
    fn scale(x: &mut [f32], s: f32) {
        for v in x.iter_mut() {
            *v *= s;
        }
    }
}

multiversion! {
    /// y <- x / sqrt(mean(x^2) + eps) * w, one row of RMSNorm.
    fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
        let mean = lane_sum(x, |v| v * v) / x.len().max(1) as f32;
        let rms = (mean + eps).sqrt();
        for ((o, v), g) in y.iter_mut().zip(x).zip(w) {
            *o = *v / rms * *g;
        }
    }
}

multiversion! {
    /// y <- silu(x) = x / (1 + exp(-x))
    fn silu(x: &[f32], y: &mut [f32]) {
        for (o, v) in y.iter_mut().zip(x) {
            *o = *v / (1.0 + exp_one(-*v));
        }
    }
}

multiversion! {
    /// out[p] = dot(rows[p * stride..p * stride + x.len()], x) for every p < out.len(): one query
    /// head against the cached keys of its key/value head (token-major, `stride` apart).
    fn dot_strided(rows: &[f32], stride: usize, x: &[f32], out: &mut [f32]) {
        for (p, y) in out.iter_mut().enumerate() {
            *y = lane_sum_product(&rows[p * stride..p * stride + x.len()], x);
        }
    }
}

multiversion! {
    /// out <- sum_p weights[p] * rows[p * stride..p * stride + out.len()]: the probability-weighted
    /// sum of the cached values of one head.
    fn weighted_rows(rows: &[f32], stride: usize, weights: &[f32], out: &mut [f32]) {
        out.fill(0.0);
        for (p, &w) in weights.iter().enumerate() {
            let row = &rows[p * stride..p * stride + out.len()];
            for (o, v) in out.iter_mut().zip(row) {
                *o += w * *v;
            }
        }
    }
}

multiversion! {
    /// gate <- silu(gate) * up, the SwiGLU product of one decode step.
    fn silu_mul(gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + exp_one(-*g)) * *u;
        }
    }
}

multiversion! {
    /// out <- x rounded to bfloat16 (nearest even; NaN stays NaN), as raw bits.
    fn to_bf16(x: &[f32], out: &mut [u16]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = super::bf16_gemm::to_bf16(*v);
        }
    }
}

multiversion! {
    /// Whether no value is NaN or infinite (checked in blocks without early exit, so it
    /// vectorizes; a block with a bad value ends the scan).
    fn all_finite(x: &[f32]) -> bool {
        x.chunks(256).all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()))
    }
}

multiversion! {
    /// h <- h * keep + add * v, the running average of a Hessian (f64) fed f32 products.
    fn scale_accumulate(h: &mut [f64], v: &[f32], keep: f64, add: f64) {
        for (h, &v) in h.iter_mut().zip(v) {
            *h = *h * keep + add * v as f64;
        }
    }
}

multiversion! {
    /// sums <- sums + |x|, element-wise (f64 sums of f32 values).
    fn add_abs(sums: &mut [f64], x: &[f32]) {
        for (s, &v) in sums.iter_mut().zip(x) {
            *s += v.abs() as f64;
        }
    }
}

multiversion! {
    /// out[r] = dot(row r of w, x) for a row-major w of out.len() rows of x.len() columns: the
    /// f32 matrix-vector product of batch-1 decode. Four rows share each load of x; each dot is
    /// summed like [`lane_sum`], so the result does not depend on how rows are grouped.
    fn dot_rows(w: &[f32], x: &[f32], out: &mut [f32]) {
        let cols = x.len();
        let mut ys = out.chunks_exact_mut(4);
        let mut rows = w.chunks_exact(4 * cols);
        for (y, four) in (&mut ys).zip(&mut rows) {
            let (w0, rest) = four.split_at(cols);
            let (w1, rest) = rest.split_at(cols);
            let (w2, w3) = rest.split_at(cols);
            let mut acc = [[0f32; LANES]; 4];
            let lanes = x
                .chunks_exact(LANES)
                .zip(w0.chunks_exact(LANES))
                .zip(w1.chunks_exact(LANES))
                .zip(w2.chunks_exact(LANES))
                .zip(w3.chunks_exact(LANES));
            for ((((xs, c0), c1), c2), c3) in lanes {
                for l in 0..LANES {
                    acc[0][l] += c0[l] * xs[l];
                    acc[1][l] += c1[l] * xs[l];
                    acc[2][l] += c2[l] * xs[l];
                    acc[3][l] += c3[l] * xs[l];
                }
            }
            let whole = cols - cols % LANES;
            for (i, row) in [w0, w1, w2, w3].into_iter().enumerate() {
                for (l, c) in (whole..cols).enumerate() {
                    acc[i][l] += row[c] * x[c];
                }
                y[i] = fold_lanes(acc[i]);
            }
        }
        for (y, row) in ys.into_remainder().iter_mut().zip(rows.remainder().chunks_exact(cols)) {
            *y = lane_sum_product(row, x);
        }
    }
}

/// Sum of a[i] * b[i] in 16 partial sums, the order [`dot_rows`] uses for every row.
#[inline(always)]
fn lane_sum_product(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let whole = a.len() - a.len() % LANES;
    for (ca, cb) in a[..whole].chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += ca[l] * cb[l];
        }
    }
    for (l, c) in (whole..a.len()).enumerate() {
        acc[l] += a[c] * b[c];
    }
    fold_lanes(acc)
}

/// Sum of f(x) in 16 partial sums (value i into lane i mod 16), combined in a fixed order.
/// Inlined into each instruction set's copy of its caller.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (v, a) in c.iter().zip(acc.iter_mut()) {
            *a += f(*v);
        }
    }
    for (v, a) in chunks.remainder().iter().zip(acc.iter_mut()) {
        *a += f(*v);
    }
    fold_lanes(acc)
}

/// The 16 partial sums added pairwise in a fixed order.
#[inline(always)]
fn fold_lanes(acc: [f32; LANES]) -> f32 {
    let mut a = acc;
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            a[i] += a[i + width];
        }
        width /= 2;
    }
    a[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    fn samples() -> Vec<f32> {
        let mut v: Vec<f32> = (-8700..=8830).map(|i| i as f32 * 0.01).collect();
        v.extend((0..1000).map(|i| i as f32 * 1e-4 - 0.05));
        v
    }

    #[test]
    fn exp_is_within_two_ulps_of_f64() {
        let xs = samples();
        let mut y = xs.clone();
        exp_shifted_sum(MathPath::Portable, &mut y, 0.0);
        for (x, e) in xs.iter().zip(&y) {
            let want = (*x as f64).exp() as f32;
            assert!(ulps(*e, want) <= 2, "exp({x}) = {e}, want {want}");
        }
        // Far below the range: tiny and positive, never NaN or negative.
        let mut low = vec![-1000.0f32, f32::NEG_INFINITY];
        exp_shifted_sum(MathPath::Portable, &mut low, 0.0);
        assert!(low.iter().all(|v| *v >= 0.0 && *v < 1e-37), "{low:?}");
        let mut nan = vec![f32::NAN];
        exp_shifted_sum(MathPath::Portable, &mut nan, 0.0);
        assert!(nan[0].is_nan());
    }

    #[test]
    fn every_path_equals_the_portable_one_bit_for_bit() {
        let xs: Vec<f32> = samples().iter().map(|v| v * 0.37 - 3.0).collect();
        let w: Vec<f32> = (0..xs.len()).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
        let run = |p: MathPath| {
            let mut e = xs.clone();
            let s1 = exp_shifted_sum(p, &mut e, 1.5);
            let s2 = sum_exp_shifted(p, &xs, 1.5);
            let m = max(p, &xs);
            let mut r = vec![0f32; xs.len()];
            rms_norm_row(p, &xs, &w, 1e-5, &mut r);
            let mut s = vec![0f32; xs.len()];
            silu(p, &xs, &mut s);
            let mut sc = xs.clone();
            scale(p, &mut sc, 0.125);
            let mut acc: Vec<f64> = xs.iter().map(|&v| v as f64 * 0.5).collect();
            scale_accumulate(p, &mut acc, &xs, 0.75, 1.0 / 3.0);
            let finite = [all_finite(p, &xs), all_finite(p, &[1.0, f32::INFINITY])];
            add_abs(p, &mut acc, &xs);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (
                [s1.to_bits(), s2.to_bits(), m.to_bits()],
                [bits(&e), bits(&r), bits(&s), bits(&sc)],
                acc.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                finite,
            )
        };
        let reference = run(MathPath::Portable);
        for p in MathPath::available() {
            assert_eq!(run(p), reference, "path {p:?}");
        }
    }

    #[test]
    fn dot_rows_matches_a_plain_dot_on_every_path() {
        let (rows, cols) = (7, 37);
        let w: Vec<f32> = samples().into_iter().cycle().take(rows * cols).collect();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut reference = vec![0f32; rows];
        dot_rows(MathPath::Portable, &w, &x, &mut reference);
        for r in 0..rows {
            let exact: f64 = (0..cols)
                .map(|c| w[r * cols + c] as f64 * x[c] as f64)
                .sum();
            let mag: f64 = (0..cols)
                .map(|c| (w[r * cols + c] as f64 * x[c] as f64).abs())
                .sum();
            assert!((reference[r] as f64 - exact).abs() <= 1e-6 * mag, "row {r}");
            // One row alone gives the same bits as within a group of four.
            let mut single = [0f32];
            dot_rows(
                MathPath::Portable,
                &w[r * cols..(r + 1) * cols],
                &x,
                &mut single,
            );
            assert_eq!(single[0].to_bits(), reference[r].to_bits());
        }
        for path in MathPath::available() {
            let mut out = vec![0f32; rows];
            dot_rows(path, &w, &x, &mut out);
            assert_eq!(out, reference, "{path:?}");
        }
    }

    #[test]
    fn reductions_match_plain_sums() {
        let xs: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5)
            .collect();
        let p = MathPath::best();
        assert_eq!(max(p, &xs), 0.5);
        assert!(all_finite(p, &xs));
        let mut bad = xs.clone();
        bad[700] = f32::NAN;
        assert!(!all_finite(p, &bad));
        bad[700] = f32::NEG_INFINITY;
        assert!(!all_finite(p, &bad));
        assert_eq!(max(p, &[]), f32::NEG_INFINITY);
        assert!(max(p, &[1.0, f32::NAN, 2.0]).is_nan());
        // RMSNorm's sum of squares, through its output with unit weights.
        let sq: f64 = xs.iter().map(|v| (*v as f64).powi(2)).sum();
        let rms = (sq / xs.len() as f64 + 1e-5).sqrt();
        let mut y = vec![0f32; xs.len()];
        rms_norm_row(p, &xs, &vec![1.0; xs.len()], 1e-5, &mut y);
        for (o, v) in y.iter().zip(&xs) {
            assert!(
                (*o as f64 - *v as f64 / rms).abs() < 1e-5,
                "{o} vs {}",
                *v as f64 / rms
            );
        }
        let se: f64 = xs.iter().map(|v| (*v as f64 - 0.2).exp()).sum();
        assert!((sum_exp_shifted(p, &xs, 0.2) as f64 - se).abs() < 1e-5 * se);
        let mut y = vec![0f32; 3];
        silu(p, &[0.0, 10.0, -10.0], &mut y);
        let want = [
            0.0,
            10.0 / (1.0 + (-10f64).exp()),
            -10.0 / (1.0 + 10f64.exp()),
        ];
        for (a, b) in y.iter().zip(want) {
            assert!(
                (*a as f64 - b).abs() <= 1e-6 * b.abs().max(1e-6),
                "{a} vs {b}"
            );
        }
    }
}
