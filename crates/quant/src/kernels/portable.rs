//! The reference row kernel in plain Rust: any CPU, and the baseline the SIMD kernels are tested
//! against.

use super::packed::{PackedData, PackedWeight, INT4_CHUNK};

/// `out[i] = sum_b scale(r, b) * dot(x_b, u(r, b))` for rows `r = start + i`; the offsets are
/// added by the caller.
pub fn scaled_dots(w: &PackedWeight, x: &[f32], start: usize, out: &mut [f32]) {
    let (cols, group, blocks) = (w.cols, w.group, w.blocks());
    for (i, y) in out.iter_mut().enumerate() {
        let r = start + i;
        let mut total = 0f32;
        for b in 0..blocks {
            let first = r * cols + b * group;
            let xs = &x[b * group..(b + 1) * group];
            let dot = match &w.data {
                PackedData::Int8(v) => xs
                    .iter()
                    .zip(&v[first..first + group])
                    .fold(0f32, |acc, (&a, &q)| acc + a * q as f32),
                PackedData::Int4(v) => xs
                    .chunks_exact(INT4_CHUNK)
                    .zip(v[first / 2..(first + group) / 2].chunks_exact(INT4_CHUNK / 2))
                    .fold(0f32, |acc, (xc, bytes)| {
                        let (lo, hi) = xc.split_at(INT4_CHUNK / 2);
                        bytes
                            .iter()
                            .zip(lo)
                            .zip(hi)
                            .fold(acc, |a, ((&byte, &l), &h)| {
                                a + l * (byte & 0x0F) as f32 + h * (byte >> 4) as f32
                            })
                    }),
            };
            total += w.scales[r * blocks + b] * dot;
        }
        *y = total;
    }
}
