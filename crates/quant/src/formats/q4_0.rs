//! Q4_0: blocks of 32 values stored as `d: f16, qs: [u8; 16]`; x = d·(u − 8), where byte j holds
//! value j in its low nibble and value j + 16 in its high nibble.

use super::{f16_bytes, half};

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per block.
pub const BYTES: usize = 18;

pub fn dequantize_block(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (j, &q) in b[2..BYTES].iter().enumerate() {
        y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// Writes one block of signed values in −8..=7 on the grid of scale `d`.
pub fn encode_block(d: f32, q: &[i8], out: &mut Vec<u8>) {
    out.extend_from_slice(&f16_bytes(d));
    out.extend(super::nibbles_split(q, 8));
}

/// The block as the deploy kernels hold it: scale, offset (−8·d) and the nibbles, whose layout
/// is the kernels' chunk layout.
pub fn kernel_block(b: &[u8]) -> (f32, f32, &[u8]) {
    let d = half(b, 0);
    (d, -8.0 * d, &b[2..BYTES])
}
