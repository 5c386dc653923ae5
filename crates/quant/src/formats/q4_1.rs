//! Q4_1: blocks of 32 values stored as `d: f16, m: f16, qs: [u8; 16]`; x = d·u + m, where byte j
//! holds value j in its low nibble and value j + 16 in its high nibble.

use super::{f16_bytes, half};

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per block.
pub const BYTES: usize = 20;

pub fn dequantize_block(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (j, &q) in b[4..BYTES].iter().enumerate() {
        y[j] = d * (q & 0x0F) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// Writes one block of signed values in −8..=7 (stored as u = q + 8) with scale `d` and
/// minimum `m`.
pub fn encode_block(d: f32, m: f32, q: &[i8], out: &mut Vec<u8>) {
    out.extend_from_slice(&f16_bytes(d));
    out.extend_from_slice(&f16_bytes(m));
    out.extend(super::nibbles_split(q, 8));
}

/// llama.cpp's reference quantization of float blocks: d = (max − min) / 15, m = min,
/// u = min(15, ⌊(x − min)/d + 0.5⌋).
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks(BLOCK) {
        let (lo, hi) = block
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let d = (hi - lo) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16_bytes(d));
        out.extend_from_slice(&f16_bytes(lo));
        let u = |k: usize| (((block[k] - lo) * id + 0.5) as u8).min(15);
        out.extend((0..BLOCK / 2).map(|j| u(j) | (u(j + BLOCK / 2) << 4)));
    }
}

/// The block as the deploy kernels hold it: scale, offset (the minimum) and the nibbles.
pub fn kernel_block(b: &[u8]) -> (f32, f32, &[u8]) {
    (half(b, 0), half(b, 2), &b[4..BYTES])
}
