//! Q4_K: super-blocks of 256 values stored as `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`:
//! eight sub-blocks of 32 with 6-bit scales and minimums; x = d·sc·u − dmin·m.

use super::half;

/// Values per super-block.
pub const BLOCK: usize = 256;
/// Bytes per super-block.
pub const BYTES: usize = 144;

/// The 6-bit scale and minimum of sub-block `j` (0..8) from the 12 packed scale bytes (shared
/// with Q5_K).
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((s[j] & 63) as f32, (s[j + 4] & 63) as f32)
    } else {
        (
            ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4)) as f32,
            ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as f32,
        )
    }
}

pub fn dequantize_block(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..BYTES];
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let q = &qs[32 * chunk..32 * chunk + 32];
        let out = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            out[l] = d * sc1 * (q[l] & 0x0F) as f32 - dmin * m1;
            out[l + 32] = d * sc2 * (q[l] >> 4) as f32 - dmin * m2;
        }
    }
}
