//! The activation layout of the channel-major convolution GEMM: an unsigned (m x k) matrix stored
//! as groups of four k-bytes, group after group, every (padded) row within a group:
//! `data[(g * m_padded + i) * 4 + b] = a[i][4g + b]`. One 64-byte load then holds group g of 16
//! consecutive rows; VNNI multiplies it by one weight row's four bytes broadcast and adds 16
//! rows' partial sums for one output channel at once, so results come out channel-major with no
//! horizontal reductions and no padding of k beyond a multiple of four.

use super::{avx512vnni, Int8Rows, IntIsa};

/// Rows are padded to a multiple of this (one AVX-512 register of int32 sums).
pub const ROW_BLOCK: usize = 16;

/// Shape of a quad-layout matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuadShape {
    /// Rows (output positions).
    pub m: usize,
    /// Columns (window values) before padding to whole groups.
    pub k: usize,
}

impl QuadShape {
    pub fn m_padded(&self) -> usize {
        self.m.div_ceil(ROW_BLOCK).max(1) * ROW_BLOCK
    }

    pub fn groups(&self) -> usize {
        self.k.div_ceil(4)
    }

    /// Bytes of the layout.
    pub fn len(&self) -> usize {
        self.groups() * self.m_padded() * 4
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where each group of `shape`'s layout starts, in rows (quads).
fn group_bases(shape: QuadShape) -> Vec<usize> {
    (0..shape.groups()).map(|g| g * shape.m_padded()).collect()
}

/// Sum of each row's values (for a weight zero-point correction), from the quad layout.
pub fn quad_row_sums(quads: &[u8], shape: QuadShape, sums: &mut [i32]) {
    quad_row_sums_with(IntIsa::detect(), quads, shape, sums)
}

/// [`quad_row_sums`] on a chosen instruction set (tests compare them).
pub fn quad_row_sums_with(isa: IntIsa, quads: &[u8], shape: QuadShape, sums: &mut [i32]) {
    quad_row_sums_at(isa, quads, &group_bases(shape), shape.m, sums)
}

/// [`quad_row_sums`] of `m` rows whose group g starts at quad `bases[g]` of `quads` (the layout
/// of [`super::im2col::InPlaceQuads`]; the plain layout has `bases[g] = g * m_padded`).
pub fn quad_row_sums_at(isa: IntIsa, quads: &[u8], bases: &[usize], m: usize, sums: &mut [i32]) {
    check_bases(quads, bases, m);
    assert!(sums.len() >= m, "quad_row_sums: operand sizes");
    #[cfg(target_arch = "x86_64")]
    if isa == IntIsa::Avx512Vnni && isa.supported() {
        // SAFETY: support was checked; every group's padded row block lies inside `quads` and
        // `sums` holds `m` values, both checked above.
        return unsafe { avx512vnni::quad_row_sums(quads, bases, m, sums) };
    }
    sums[..m].fill(0);
    for &base in bases {
        let group = &quads[base * 4..];
        for (i, s) in sums[..m].iter_mut().enumerate() {
            *s += group[i * 4..i * 4 + 4]
                .iter()
                .map(|&v| v as i32)
                .sum::<i32>();
        }
    }
}

/// Every group's padded block of rows must lie inside `a`.
fn check_bases(a: &[u8], bases: &[usize], m: usize) {
    let padded = m.div_ceil(ROW_BLOCK).max(1) * ROW_BLOCK;
    assert!(
        bases.iter().all(|&b| (b + padded) * 4 <= a.len()),
        "quad layout: a group's rows run past the activations"
    );
}

/// `out[j * m + i] = sum_k a[i][k] * b[j][k]`: every output channel's sums over the `m` rows of
/// the quad-layout `a`, stored channel-major. Needs `b.cols >= shape.k`.
pub fn gemm_quads(isa: IntIsa, a: &[u8], shape: QuadShape, b: &Int8Rows, out: &mut [i32]) {
    assert!(a.len() >= shape.len(), "gemm_quads: operand sizes");
    gemm_quads_at(isa, a, &group_bases(shape), shape.m, b, out)
}

/// [`gemm_quads`] of `m` rows whose group g starts at quad `bases[g]` of `a` (see
/// [`quad_row_sums_at`]).
pub fn gemm_quads_at(
    isa: IntIsa,
    a: &[u8],
    bases: &[usize],
    m: usize,
    b: &Int8Rows,
    out: &mut [i32],
) {
    check_bases(a, bases, m);
    assert!(
        out.len() >= b.rows * m && b.k_padded >= 4 * bases.len(),
        "gemm_quads: operand sizes"
    );
    match isa {
        // SAFETY: support was checked; every group's padded row block lies inside `a`, groups
        // of `b`'s padded rows exist and `out` holds `b.rows * m` sums, all checked above.
        #[cfg(target_arch = "x86_64")]
        IntIsa::Avx512Vnni if isa.supported() => unsafe {
            avx512vnni::gemm_quads(a, bases, m, b, out)
        },
        _ => gemm_quads_portable(a, bases, m, b, out),
    }
}

fn gemm_quads_portable(a: &[u8], bases: &[usize], m: usize, b: &Int8Rows, out: &mut [i32]) {
    for j in 0..b.rows {
        let w = &b.data[j * b.k_padded..];
        let dst = &mut out[j * m..(j + 1) * m];
        dst.fill(0);
        for (g, &base) in bases.iter().enumerate() {
            let (wg, group) = (&w[4 * g..4 * g + 4], &a[base * 4..]);
            for (i, s) in dst.iter_mut().enumerate() {
                let q = &group[i * 4..i * 4 + 4];
                *s += (0..4).map(|t| q[t] as i32 * wg[t] as i32).sum::<i32>();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_sums_agree_on_every_path() {
        for (m, k) in [(37, 27), (16, 8), (5, 3)] {
            let shape = QuadShape { m, k };
            let quads: Vec<u8> = (0..shape.len()).map(|i| (i * 37 % 251) as u8).collect();
            let mut reference = vec![0i32; m];
            quad_row_sums_with(IntIsa::Portable, &quads, shape, &mut reference);
            // Row 0's sum straight from the layout.
            let mp = shape.m_padded();
            let direct: i32 = (0..shape.groups())
                .map(|g| (0..4).map(|b| quads[g * mp * 4 + b] as i32).sum::<i32>())
                .sum();
            assert_eq!(reference[0], direct);
            for isa in [IntIsa::Avx512Vnni, IntIsa::Avx2] {
                if isa.supported() {
                    let mut sums = vec![0i32; m];
                    quad_row_sums_with(isa, &quads, shape, &mut sums);
                    assert_eq!(sums, reference, "{}", isa.name());
                }
            }
        }
    }
}
