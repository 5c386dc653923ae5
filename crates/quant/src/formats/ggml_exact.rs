//! Which GGML block type holds a quantized weight exactly, and its bytes in that type: symmetric
//! 8-bit → Q8_0 (x = d·q), symmetric ≤4-bit → Q4_0 (x = d·(u − 8)), asymmetric ≤4-bit → Q4_1
//! (x = d·u + m with m = −d·(zp + 8), rounded to f16), each when its groups are whole 32-value
//! blocks.

use super::{q4_0, q4_1, q8_0, GgmlType};
use crate::scheme::{Granularity, QuantizedWeight};

const BLOCK: usize = 32;

/// Whether every group of `q` is a whole number of 32-value blocks.
pub fn blocks_fit(q: &QuantizedWeight) -> bool {
    q.cols.is_multiple_of(BLOCK)
        && match q.scheme.granularity {
            Granularity::PerGroup(g) => g.is_multiple_of(BLOCK),
            Granularity::PerChannel | Granularity::PerTensor => true,
        }
}

/// The GGML type whose grid holds `q` exactly, if any.
pub fn exact_type(q: &QuantizedWeight) -> Option<GgmlType> {
    if !blocks_fit(q) {
        return None;
    }
    let symmetric = q.params.iter().all(|p| p.zero_point == 0.0);
    match (q.scheme.bits, symmetric) {
        (8, true) => Some(GgmlType::Q8_0),
        (b, true) if b <= 4 => Some(GgmlType::Q4_0),
        (b, false) if b <= 4 => Some(GgmlType::Q4_1),
        _ => None,
    }
}

/// The rows of `q` (in `order`) on its own grid, or `None` when no GGML type holds it.
pub fn encode(q: &QuantizedWeight, order: &[usize]) -> Option<(GgmlType, Vec<u8>)> {
    let ty = exact_type(q)?;
    let mut out = Vec::with_capacity(q.rows * q.cols / BLOCK * ty.block_bytes());
    for &r in order {
        for b in 0..q.cols / BLOCK {
            let p = q.params_at(r, b * BLOCK);
            let vals = &q.values[r * q.cols + b * BLOCK..r * q.cols + (b + 1) * BLOCK];
            let d = p.scale as f32;
            match ty {
                GgmlType::Q8_0 => q8_0::encode_block(d, vals, &mut out),
                GgmlType::Q4_0 => q4_0::encode_block(d, vals, &mut out),
                _ => {
                    let m = (-p.scale * (p.zero_point + 8.0)) as f32;
                    q4_1::encode_block(d, m, vals, &mut out)
                }
            }
        }
    }
    Some((ty, out))
}
