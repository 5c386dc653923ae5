//! AVX-512 row kernels: 16 lanes, four weight rows per pass so that each input vector is loaded
//! once for four rows and four independent accumulator chains hide the FMA latency.

// Row loops index several per-row arrays (accumulators, scales) in step.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::packed::{PackedData, PackedWeight, INT4_CHUNK};

/// Same contract as [`super::portable::scaled_dots`].
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
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

#[target_feature(enable = "avx512f")]
unsafe fn rows<const R: usize>(w: &PackedWeight, x: &[f32], start: usize, out: &mut [f32]) {
    let (cols, group, blocks) = (w.cols, w.group, w.blocks());
    let mut total = [_mm512_setzero_ps(); R];
    let mut scalar = [0f32; R];
    for b in 0..blocks {
        let base = b * group;
        let mut acc = [_mm512_setzero_ps(); R];
        let mut acc_hi = [_mm512_setzero_ps(); R];
        match &w.data {
            PackedData::Int8(v) => {
                let vec_end = group - group % 16;
                let mut c = 0;
                while c < vec_end {
                    let xv = _mm512_loadu_ps(x.as_ptr().add(base + c));
                    for r in 0..R {
                        let p = v.as_ptr().add((start + r) * cols + base + c);
                        let q = _mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i));
                        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), xv, acc[r]);
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
                    let x_lo = _mm512_loadu_ps(x.as_ptr().add(base + c));
                    let x_hi = _mm512_loadu_ps(x.as_ptr().add(base + c + 16));
                    for r in 0..R {
                        let p = v.as_ptr().add(((start + r) * cols + base + c) / 2);
                        let bytes = _mm_loadu_si128(p as *const __m128i);
                        let lo = _mm_and_si128(bytes, mask);
                        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
                        let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo));
                        let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi));
                        acc[r] = _mm512_fmadd_ps(lo, x_lo, acc[r]);
                        acc_hi[r] = _mm512_fmadd_ps(hi, x_hi, acc_hi[r]);
                    }
                    c += INT4_CHUNK;
                }
            }
        }
        for r in 0..R {
            let s = _mm512_set1_ps(w.scales[(start + r) * blocks + b]);
            total[r] = _mm512_fmadd_ps(_mm512_add_ps(acc[r], acc_hi[r]), s, total[r]);
        }
    }
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(total[r]) + scalar[r];
    }
}
