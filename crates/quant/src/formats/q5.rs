//! Q5_0 and Q5_1: blocks of 32 five-bit values. Q5_0 stores `d: f16, qh: u32, qs: [u8; 16]` with
//! x = d·(q − 16); Q5_1 stores `d: f16, m: f16, qh, qs` with x = d·q + m. The low four bits are
//! nibbles as in Q4_0 and bit j of `qh` is the fifth bit of value j.

use super::half;

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per Q5_0 block.
pub const BYTES_0: usize = 22;
/// Bytes per Q5_1 block.
pub const BYTES_1: usize = 24;

pub fn dequantize_block(b: &[u8], y: &mut [f32], with_min: bool) {
    let d = half(b, 0);
    let (m, at) = if with_min { (half(b, 2), 4) } else { (0.0, 2) };
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let offset = if with_min { 0 } else { 16 };
    for (j, &q) in b[at + 4..at + 20].iter().enumerate() {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        let x0 = ((q as u32 & 0x0F) | h0) as i32 - offset;
        let x1 = ((q as u32 >> 4) | h1) as i32 - offset;
        y[j] = d * x0 as f32 + m;
        y[j + 16] = d * x1 as f32 + m;
    }
}
