//! Storage formats of quantized weights, one file per format. Each holds its block or tensor
//! layout with decoding and, where Golden Stick writes the format, encoding side by side (in the
//! style of llama.cpp's `ggml-quants.c`; a new format is a new file, not a new framework).
//!
//! - GGML block types of GGUF files: [`q4_0`], [`q4_1`], [`q5`] (Q5_0/Q5_1), [`q8_0`], [`q4_k`],
//!   [`q5_k`], [`q6_k`]; [`ggml_type`] is the type table, [`ggml_exact`] maps a quantized weight
//!   onto the block type whose grid holds it exactly.
//! - Checkpoint layouts: [`gs`] (Golden Stick / msModelSlim names), [`gptq`] (the Hugging Face
//!   GPTQ format) and [`compressed_tensors`] (vLLM / llm-compressor).

pub mod compressed_tensors;
pub mod ggml_exact;
pub mod ggml_type;
pub mod gptq;
pub mod gs;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;

pub use ggml_type::{GgmlError, GgmlType};

/// A tensor that does not hold what its format says, with what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct FormatError(pub String);

/// The little-endian f16 at byte `at`, as f32.
pub(crate) fn half(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

pub(crate) fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Nibbles of a 32-value block in the GGML order: byte j holds value j (low) and value j + 16
/// (high), each stored as `q + shift`.
pub(crate) fn nibbles_split(q: &[i8], shift: i32) -> impl Iterator<Item = u8> + '_ {
    let u = move |k: usize| (q[k] as i32 + shift) as u8 & 0x0F;
    (0..q.len() / 2).map(move |j| u(j) | (u(j + q.len() / 2) << 4))
}
