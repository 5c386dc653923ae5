//! AVX-512 VNNI GEMM: `vpdpbusd` multiplies 64 unsigned by 64 signed bytes and adds groups of
//! four products into 16 int32 lanes without intermediate saturation. Blocks of 4 activation rows
//! by 4 weight rows keep 16 accumulators in registers.
#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{Int8Rows, Strides};

/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512 VNNI; `a` holds `m` rows of
/// `b.k_padded` bytes and `out` `m * b.rows` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn gemm(a: &[u8], m: usize, b: &Int8Rows, out: &mut [i32], s: Strides) {
    let (k, n) = (b.k_padded, b.rows);
    let mut i = 0;
    while i < m {
        let mr = (m - i).min(4);
        let mut j = 0;
        while j < n {
            let nr = (n - j).min(4);
            if mr == 4 && nr == 4 {
                block::<4, 4>(a, b, i, j, k, s, out);
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

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block<const MR: usize, const NR: usize>(
    a: &[u8],
    b: &Int8Rows,
    i: usize,
    j: usize,
    k: usize,
    s: Strides,
    out: &mut [i32],
) {
    let mut acc = [[_mm512_setzero_si512(); NR]; MR];
    let mut c = 0;
    while c < k {
        let mut bv = [_mm512_setzero_si512(); NR];
        for jj in 0..NR {
            bv[jj] = _mm512_loadu_si512(b.data.as_ptr().add((j + jj) * k + c) as *const _);
        }
        for ii in 0..MR {
            let av = _mm512_loadu_si512(a.as_ptr().add((i + ii) * k + c) as *const _);
            for jj in 0..NR {
                acc[ii][jj] = _mm512_dpbusd_epi32(acc[ii][jj], av, bv[jj]);
            }
        }
        c += 64;
    }
    for ii in 0..MR {
        for jj in 0..NR {
            out[(i + ii) * s.row + (j + jj) * s.col] = _mm512_reduce_add_epi32(acc[ii][jj]);
        }
    }
}

/// The channel-major GEMM over the quad layout (see [`super::quads`]): tiles of 32 rows by 8
/// channels keep 16 accumulators in registers; each step loads two row vectors and broadcasts
/// eight weight quads.
///
/// Group g of row i is the quad at `bases[g] + i`.
///
/// # Safety
/// As [`gemm`], with every group's rows up to `m` rounded up to 16 inside `a`,
/// `b.k_padded >= 4 * bases.len()` and `out` holding `b.rows * m` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn gemm_quads(a: &[u8], bases: &[usize], m: usize, b: &Int8Rows, out: &mut [i32]) {
    let n = b.rows;
    let mut i = 0;
    while i < m {
        let pair = m - i > 16;
        let mut j = 0;
        while j < n {
            let nr = (n - j).min(8);
            match (pair, nr) {
                (true, 8) => quad_tile::<2, 8>(a, bases, m, b, i, j, out),
                (false, 8) => quad_tile::<1, 8>(a, bases, m, b, i, j, out),
                (true, 4..) => quad_tile::<2, 4>(a, bases, m, b, i, j, out),
                (false, 4..) => quad_tile::<1, 4>(a, bases, m, b, i, j, out),
                (true, _) => quad_tile::<2, 1>(a, bases, m, b, i, j, out),
                (false, _) => quad_tile::<1, 1>(a, bases, m, b, i, j, out),
            }
            j += match nr {
                8 => 8,
                4.. => 4,
                _ => 1,
            };
        }
        i += if pair { 32 } else { 16 };
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn quad_tile<const MV: usize, const NR: usize>(
    a: &[u8],
    bases: &[usize],
    m: usize,
    b: &Int8Rows,
    i: usize,
    j: usize,
    out: &mut [i32],
) {
    let mut acc = [[_mm512_setzero_si512(); MV]; NR];
    let (ap, bp) = (a.as_ptr(), b.data.as_ptr());
    for (g, &base) in bases.iter().enumerate() {
        let mut av = [_mm512_setzero_si512(); MV];
        for v in 0..MV {
            av[v] = _mm512_loadu_si512(ap.add((base + i + 16 * v) * 4) as *const _);
        }
        for jj in 0..NR {
            let w = (bp.add((j + jj) * b.k_padded + 4 * g) as *const i32).read_unaligned();
            let wv = _mm512_set1_epi32(w);
            for v in 0..MV {
                acc[jj][v] = _mm512_dpbusd_epi32(acc[jj][v], av[v], wv);
            }
        }
    }
    for jj in 0..NR {
        for v in 0..MV {
            let row = i + 16 * v;
            let dst = out.as_mut_ptr().add((j + jj) * m + row);
            let left = m - row;
            if left >= 16 {
                _mm512_storeu_si512(dst as *mut _, acc[jj][v]);
            } else {
                _mm512_mask_storeu_epi32(dst, ((1u32 << left) - 1) as __mmask16, acc[jj][v]);
            }
        }
    }
}

/// Each row's byte sum over the quad layout: `vpdpbusd` of 16 rows' quads with all-ones bytes.
///
/// # Safety
/// As [`gemm_quads`], with `sums` holding at least `m` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn quad_row_sums(quads: &[u8], bases: &[usize], m: usize, sums: &mut [i32]) {
    let ones = _mm512_set1_epi8(1);
    let mut i = 0;
    while i < m {
        let mut acc = _mm512_setzero_si512();
        for &base in bases {
            let v = _mm512_loadu_si512(quads.as_ptr().add((base + i) * 4) as *const _);
            acc = _mm512_dpbusd_epi32(acc, v, ones);
        }
        let left = m - i;
        let dst = sums.as_mut_ptr().add(i);
        if left >= 16 {
            _mm512_storeu_si512(dst as *mut _, acc);
        } else {
            _mm512_mask_storeu_epi32(dst, ((1u32 << left) - 1) as __mmask16, acc);
        }
        i += 16;
    }
}
