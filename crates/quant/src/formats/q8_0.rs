//! Q8_0: blocks of 32 values stored as `d: f16, qs: [i8; 32]`; x = d·q.

use super::{f16_bytes, half};

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per block.
pub const BYTES: usize = 34;

pub fn dequantize_block(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..BYTES]) {
        *v = d * (q as i8) as f32;
    }
}

/// Writes one block whose integers are already on the grid of scale `d`.
pub fn encode_block(d: f32, q: &[i8], out: &mut Vec<u8>) {
    out.extend_from_slice(&f16_bytes(d));
    out.extend(q.iter().map(|&v| v as u8));
}

/// llama.cpp's reference quantization of float blocks: d = absmax / 127, q = round(x / d).
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks(BLOCK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16_bytes(d));
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
}

/// The block as the deploy kernels hold it: scale, and the integers (no offset).
pub fn kernel_block(b: &[u8]) -> (f32, &[u8]) {
    (half(b, 0), &b[2..BYTES])
}
