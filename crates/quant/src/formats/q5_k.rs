//! Q5_K: super-blocks of 256 values stored as `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32],
//! qs: [u8; 128]`: Q4_K with a fifth bit per value from `qh`.

use super::half;
use super::q4_k::scale_min_k4;

/// Values per super-block.
pub const BLOCK: usize = 256;
/// Bytes per super-block.
pub const BYTES: usize = 176;

pub fn dequantize_block(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..BYTES];
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let q = &qs[32 * chunk..32 * chunk + 32];
        let out = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d * sc1 * ((q[l] & 0x0F) + hi1) as f32 - dmin * m1;
            out[l + 32] = d * sc2 * ((q[l] >> 4) + hi2) as f32 - dmin * m2;
        }
    }
}
