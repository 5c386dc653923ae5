//! The table of GGML tensor types that GGUF files store: ids, block sizes, and dequantization
//! dispatched to each format's file. All readers work on byte slices and check sizes first, so a
//! malformed tensor is an error, never an out-of-bounds read.

use half::bf16;

use super::{half, q4_0, q4_1, q4_k, q5, q5_k, q6_k, q8_0};

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

    /// The name llama.cpp prints (`Q4_0`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 => q4_0::BLOCK,
            Self::Q4_1 => q4_1::BLOCK,
            Self::Q5_0 | Self::Q5_1 => q5::BLOCK,
            Self::Q8_0 => q8_0::BLOCK,
            Self::Q4K => q4_k::BLOCK,
            Self::Q5K => q5_k::BLOCK,
            Self::Q6K => q6_k::BLOCK,
            Self::Q2K | Self::Q3K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => q4_0::BYTES,
            Self::Q4_1 => q4_1::BYTES,
            Self::Q5_0 => q5::BYTES_0,
            Self::Q5_1 => q5::BYTES_1,
            Self::Q8_0 => q8_0::BYTES,
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => q4_k::BYTES,
            Self::Q5K => q5_k::BYTES,
            Self::Q6K => q6_k::BYTES,
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
            Self::Q4_0 => blocks.for_each(|(b, y)| q4_0::dequantize_block(b, y)),
            Self::Q4_1 => blocks.for_each(|(b, y)| q4_1::dequantize_block(b, y)),
            Self::Q5_0 => blocks.for_each(|(b, y)| q5::dequantize_block(b, y, false)),
            Self::Q5_1 => blocks.for_each(|(b, y)| q5::dequantize_block(b, y, true)),
            Self::Q8_0 => blocks.for_each(|(b, y)| q8_0::dequantize_block(b, y)),
            Self::Q4K => blocks.for_each(|(b, y)| q4_k::dequantize_block(b, y)),
            Self::Q5K => blocks.for_each(|(b, y)| q5_k::dequantize_block(b, y)),
            Self::Q6K => blocks.for_each(|(b, y)| q6_k::dequantize_block(b, y)),
            Self::Q2K | Self::Q3K => return Err(GgmlError::Unsupported(self)),
        }
        Ok(out)
    }
}
