//! Deployment: cells that compute on the integer kernels, and the loaders that put a quantized
//! model on them. Nothing here depends on an algorithm: a model arrives as the neutral
//! [`QuantizedModel`](gstick_quant::QuantizedModel) or as a checkpoint in one of the formats
//! `gstick-export` writes (Golden Stick, Hugging Face GPTQ, compressed-tensors, GGUF).
//!
//! - [`decoder`]: batch-1 decoding of a Llama-family network without the executor, with
//!   spinning threads and int8 activations against packed weights.
//! - [`packed_linear`]: the Linear on packed int8/int4 weights (`PackedLinear`).
//! - [`a8w8_linear`]: the Linear with int8 weights and int8 per-token activations.
//! - [`int8_cells`]: the int8 CNN cells that `qat`'s convert produces.
//! - [`install`]: puts packed Linears into a network by name (all or nothing).
//! - [`load`]: reads a model path (GGUF file, float or quantized Hugging Face directory) into a
//!   runnable network, quantized Linears on the kernels; [`gs`], [`gptq`],
//!   [`compressed_tensors`] and [`gguf`] read each format's quantized tensors.

pub mod a8w8_linear;
pub mod compressed_tensors;
pub mod decoder;
pub mod gguf;
pub mod gptq;
pub mod gs;
pub mod install;
pub mod int8_cells;
pub mod load;
pub mod packed_linear;

pub use a8w8_linear::A8W8Linear;
pub use install::{install, install_linears, install_packed, DeployReport, DeployWeight};
pub use load::{load, load_gguf_on_kernels, quantized_format, Lm};
pub use packed_linear::PackedLinear;

/// Errors of deployment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Graph(#[from] gstick_rewrite::Error),
    #[error(transparent)]
    Model(#[from] gstick_models::Error),
    #[error(transparent)]
    Nn(#[from] gstick_nn::Error),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("{path}: {message}")]
    Load { path: String, message: String },
    #[error("layer `{layer}`: {message}")]
    Layer { layer: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn load_error(path: &std::path::Path, message: impl Into<String>) -> Error {
    Error::Load {
        path: path.display().to_string(),
        message: message.into(),
    }
}
