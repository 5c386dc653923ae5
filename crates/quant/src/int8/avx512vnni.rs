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
