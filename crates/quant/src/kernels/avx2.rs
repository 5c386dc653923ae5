//! AVX2 + FMA row kernels: 8 lanes, four weight rows per pass (see the AVX-512 kernel).

// Row loops index several per-row arrays (accumulators, scales) in step.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::packed::{PackedData, PackedWeight, INT4_CHUNK};

/// Same contract as [`super::portable::scaled_dots`].
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn scaled_dots(w: &PackedWeight, x: &[f32], start: usize, out: &mut [f32]) {
    let mut i = 0;
    while i + 4 <= out.len() {
        rows::<4>(w, x, start + i, &mut out[i..i + 4]);
        i += 4;
    }
    while i < out.len() {
        rows::<1>(w, x, start + i, &mut out[i..i + 1]);
        i += 1;
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Eight unsigned bytes (the low half of `v`) as f32 lanes.
#[target_feature(enable = "avx2,fma")]
unsafe fn u8x8(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn rows<const R: usize>(w: &PackedWeight, x: &[f32], start: usize, out: &mut [f32]) {
    let (cols, group, blocks) = (w.cols, w.group, w.blocks());
    let mut total = [_mm256_setzero_ps(); R];
    let mut scalar = [0f32; R];
    for b in 0..blocks {
        let base = b * group;
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_hi = [_mm256_setzero_ps(); R];
        match &w.data {
            PackedData::Int8(v) => {
                let vec_end = group - group % 16;
                let mut c = 0;
                while c < vec_end {
                    let x0 = _mm256_loadu_ps(x.as_ptr().add(base + c));
                    let x1 = _mm256_loadu_ps(x.as_ptr().add(base + c + 8));
                    for r in 0..R {
                        let p = v.as_ptr().add((start + r) * cols + base + c);
                        let q = _mm_loadu_si128(p as *const __m128i);
                        let q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                        let q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
                        acc[r] = _mm256_fmadd_ps(q0, x0, acc[r]);
                        acc_hi[r] = _mm256_fmadd_ps(q1, x1, acc_hi[r]);
                    }
                    c += 16;
                }
                for (r, s) in scalar.iter_mut().enumerate() {
                    let row = (start + r) * cols + base;
                    let tail: f32 = (vec_end..group)
                        .map(|c| x[base + c] * v[row + c] as f32)
                        .sum();
                    *s += w.scales[(start + r) * blocks + b] * tail;
                }
            }
            PackedData::Int4(v) => {
                let mask = _mm_set1_epi8(0x0F);
                let mut c = 0;
                while c < group {
                    let xp = x.as_ptr().add(base + c);
                    let (x0, x1) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
                    let (x2, x3) = (_mm256_loadu_ps(xp.add(16)), _mm256_loadu_ps(xp.add(24)));
                    for r in 0..R {
                        let p = v.as_ptr().add(((start + r) * cols + base + c) / 2);
                        let bytes = _mm_loadu_si128(p as *const __m128i);
                        let lo = _mm_and_si128(bytes, mask);
                        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
                        acc[r] = _mm256_fmadd_ps(u8x8(lo), x0, acc[r]);
                        acc_hi[r] = _mm256_fmadd_ps(u8x8(_mm_srli_si128(lo, 8)), x1, acc_hi[r]);
                        acc[r] = _mm256_fmadd_ps(u8x8(hi), x2, acc[r]);
                        acc_hi[r] = _mm256_fmadd_ps(u8x8(_mm_srli_si128(hi, 8)), x3, acc_hi[r]);
                    }
                    c += INT4_CHUNK;
                }
            }
        }
        for r in 0..R {
            let s = _mm256_set1_ps(w.scales[(start + r) * blocks + b]);
            total[r] = _mm256_fmadd_ps(_mm256_add_ps(acc[r], acc_hi[r]), s, total[r]);
        }
    }
    for r in 0..R {
        out[r] = hsum(total[r]) + scalar[r];
    }
}
