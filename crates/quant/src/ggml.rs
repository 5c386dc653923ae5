//! The GGML block formats that GGUF files store, with dequantization. Each format is a block of
//! `block_len` values in `block_bytes` bytes; layouts and formulas follow llama.cpp's
//! `ggml-quants.c` (QK_K = 256 for the K formats). All readers work on byte slices and check
//! sizes first, so a malformed tensor is an error, never an out-of-bounds read.

use half::{bf16, f16};

/// A GGML tensor type, by its GGUF type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GgmlError {
    #[error("unknown GGML type id {0}")]
    UnknownType(u32),
    #[error("GGML type {0:?} cannot be dequantized yet")]
    Unsupported(GgmlType),
    #[error("{elements} values are not a whole number of {ty:?} blocks of {block}")]
    PartialBlock {
        ty: GgmlType,
        elements: usize,
        block: usize,
    },
    #[error("{ty:?} data for {elements} values needs {expected} bytes, got {got}")]
    Size {
        ty: GgmlType,
        elements: usize,
        expected: usize,
        got: usize,
    },
}

const QK_K: usize = 256;

impl GgmlType {
    /// The type with GGUF type id `id`.
    pub fn from_id(id: u32) -> Result<Self, GgmlError> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            other => return Err(GgmlError::UnknownType(other)),
        })
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::BF16 => 30,
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Bytes needed for `elements` values, or an error when they are not whole blocks.
    pub fn bytes_for(self, elements: usize) -> Result<usize, GgmlError> {
        let block = self.block_len();
        if !elements.is_multiple_of(block) {
            return Err(GgmlError::PartialBlock {
                ty: self,
                elements,
                block,
            });
        }
        Ok(elements / block * self.block_bytes())
    }

    /// Dequantizes `elements` values stored in `data`.
    pub fn dequantize(self, data: &[u8], elements: usize) -> Result<Vec<f32>, GgmlError> {
        let expected = self.bytes_for(elements)?;
        if data.len() != expected {
            return Err(GgmlError::Size {
                ty: self,
                elements,
                expected,
                got: data.len(),
            });
        }
        let mut out = vec![0f32; elements];
        let blocks = data
            .chunks_exact(self.block_bytes())
            .zip(out.chunks_exact_mut(self.block_len()));
        match self {
            Self::F32 => {
                blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            Self::F16 => blocks.for_each(|(b, y)| y[0] = half(b, 0)),
            Self::BF16 => {
                blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
            }
            Self::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
            Self::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
            Self::Q5_0 => blocks.for_each(|(b, y)| q5(b, y, false)),
            Self::Q5_1 => blocks.for_each(|(b, y)| q5(b, y, true)),
            Self::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
            Self::Q4K => blocks.for_each(|(b, y)| q4_k(b, y)),
            Self::Q5K => blocks.for_each(|(b, y)| q5_k(b, y)),
            Self::Q6K => blocks.for_each(|(b, y)| q6_k(b, y)),
            Self::Q2K | Self::Q3K => return Err(GgmlError::Unsupported(self)),
        }
        Ok(out)
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// d: f16, qs[16]: x = d * (nibble - 8); low nibbles are values 0..16, high nibbles 16..32.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// d: f16, m: f16, qs[16]: x = d * nibble + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * (q & 0x0F) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// Q5_0: d, qh (u32, the fifth bits), qs[16]; x = d * (q - 16).
/// Q5_1: d, m, qh, qs[16]; x = d * q + m.
fn q5(b: &[u8], y: &mut [f32], with_min: bool) {
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

/// d: f16, qs[32] as i8: x = d * q.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..34]) {
        *v = d * (q as i8) as f32;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed scale bytes of Q4_K/Q5_K.
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((s[j] & 63) as f32, (s[j + 4] & 63) as f32)
    } else {
        (
            ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4)) as f32,
            ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as f32,
        )
    }
}

/// d, dmin: f16; scales[12]; qs[128]. Eight sub-blocks of 32 with 6-bit scales and mins.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
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

/// d, dmin: f16; scales[12]; qh[32]; qs[128]. Like Q4_K with a fifth bit from qh.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
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

/// ql[128], qh[64], scales[16] as i8, d: f16. 6-bit values minus 32, sixteen sub-blocks of 16.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = half(b, 208);
    for half_block in 0..2 {
        let ql = &b[64 * half_block..64 * half_block + 64];
        let qh = &b[128 + 32 * half_block..128 + 32 * half_block + 32];
        let sc = &b[192 + 8 * half_block..192 + 8 * half_block + 8];
        let out = &mut y[128 * half_block..128 * half_block + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| (sc[is + k] as i8) as f32;
            out[l] = d * s(0) * q1 as f32;
            out[l + 32] = d * s(2) * q2 as f32;
            out[l + 64] = d * s(4) * q3 as f32;
            out[l + 96] = d * s(6) * q4 as f32;
        }
    }
}
