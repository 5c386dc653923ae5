//! AVX2 GEMM without VNNI: bytes are widened to int16 (`vpmovzxbw` / `vpmovsxbw`) and multiplied
//! pairwise into int32 with `vpmaddwd`, which cannot saturate (unlike `vpmaddubsw`, whose int16
//! pair sums overflow for 255 * -128 * 2). Blocks of 2 activation rows by 4 weight rows.
#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{Int8Rows, Strides};

/// # Safety
/// The CPU must support AVX2; sizes as in [`super::gemm_u8i8`].
#[target_feature(enable = "avx2")]
pub unsafe fn gemm(a: &[u8], m: usize, b: &Int8Rows, out: &mut [i32], s: Strides) {
    let (k, n) = (b.k_padded, b.rows);
    let mut i = 0;
    while i < m {
        let mr = (m - i).min(2);
        let mut j = 0;
        while j < n {
            let nr = (n - j).min(4);
            if mr == 2 && nr == 4 {
                block::<2, 4>(a, b, i, j, k, s, out);
            } else {
                for ii in 0..mr {
                    for jj in 0..nr {
                        block::<1, 1>(a, b, i + ii, j + jj, k, s, out);
                    }
                }
            }
            j += nr;
        }
        i += mr;
    }
}

#[target_feature(enable = "avx2")]
unsafe fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

#[target_feature(enable = "avx2")]
unsafe fn block<const MR: usize, const NR: usize>(
    a: &[u8],
    b: &Int8Rows,
    i: usize,
    j: usize,
    k: usize,
    s: Strides,
    out: &mut [i32],
) {
    let mut acc = [[_mm256_setzero_si256(); NR]; MR];
    let mut c = 0;
    while c < k {
        let mut bv = [_mm256_setzero_si256(); NR];
        for jj in 0..NR {
            let p = b.data.as_ptr().add((j + jj) * k + c) as *const __m128i;
            bv[jj] = _mm256_cvtepi8_epi16(_mm_loadu_si128(p));
        }
        for ii in 0..MR {
            let p = a.as_ptr().add((i + ii) * k + c) as *const __m128i;
            let av = _mm256_cvtepu8_epi16(_mm_loadu_si128(p));
            for jj in 0..NR {
                acc[ii][jj] = _mm256_add_epi32(acc[ii][jj], _mm256_madd_epi16(av, bv[jj]));
            }
        }
        c += 16;
    }
    for ii in 0..MR {
        for jj in 0..NR {
            out[(i + ii) * s.row + (j + jj) * s.col] = hsum(acc[ii][jj]);
        }
    }
}
