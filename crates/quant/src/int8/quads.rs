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

/// Sum of each row's values (for a weight zero-point correction), from the quad layout.
pub fn quad_row_sums(quads: &[u8], shape: QuadShape, sums: &mut [i32]) {
    quad_row_sums_with(IntIsa::detect(), quads, shape, sums)
}

/// [`quad_row_sums`] on a chosen instruction set (tests compare them).
pub fn quad_row_sums_with(isa: IntIsa, quads: &[u8], shape: QuadShape, sums: &mut [i32]) {
    assert!(
        quads.len() >= shape.len() && sums.len() >= shape.m,
        "quad_row_sums: operand sizes"
    );
    #[cfg(target_arch = "x86_64")]
    if isa == IntIsa::Avx512Vnni && isa.supported() {
        // SAFETY: support was checked; the kernel reads `shape.len()` bytes and writes `m` sums.
        return unsafe { avx512vnni::quad_row_sums(quads, shape, sums) };
    }
    let mp = shape.m_padded();
    sums[..shape.m].fill(0);
    for g in 0..shape.groups() {
        let group = &quads[g * mp * 4..];
        for (i, s) in sums[..shape.m].iter_mut().enumerate() {
            *s += group[i * 4..i * 4 + 4]
                .iter()
                .map(|&v| v as i32)
                .sum::<i32>();
        }
    }
}

/// `out[j * m + i] = sum_k a[i][k] * b[j][k]`: every output channel's sums over the `m` rows of
/// the quad-layout `a`, stored channel-major. Needs `b.cols >= shape.k`.
pub fn gemm_quads(isa: IntIsa, a: &[u8], shape: QuadShape, b: &Int8Rows, out: &mut [i32]) {
    assert!(
        a.len() >= shape.len() && out.len() >= b.rows * shape.m && b.k_padded >= 4 * shape.groups(),
        "gemm_quads: operand sizes"
    );
    match isa {
        // SAFETY: support was checked; the kernel reads `shape.len()` bytes of `a`, groups of
        // `b`'s padded rows and writes `b.rows * m` sums, all checked above.
        #[cfg(target_arch = "x86_64")]
        IntIsa::Avx512Vnni if isa.supported() => unsafe {
            avx512vnni::gemm_quads(a, shape, b, out)
        },
        _ => gemm_quads_portable(a, shape, b, out),
    }
}

fn gemm_quads_portable(a: &[u8], shape: QuadShape, b: &Int8Rows, out: &mut [i32]) {
    let (m, mp) = (shape.m, shape.m_padded());
    for j in 0..b.rows {
        let w = &b.data[j * b.k_padded..];
        let dst = &mut out[j * m..(j + 1) * m];
        dst.fill(0);
        for g in 0..shape.groups() {
            let (wg, group) = (&w[4 * g..4 * g + 4], &a[g * mp * 4..]);
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
