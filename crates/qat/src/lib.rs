//! Quantization-aware training and int8 deployment of CNNs: the fake quantizer, SimQAT, LSQ and
//! SLB, static PTQ calibration, and convert to the real int8 cells of `gstick-deploy`.

pub mod calibrate;
pub mod cells;
pub mod convert;
pub mod fake_quant;
pub mod lsq;
pub mod simqat;
pub mod slb;

pub use calibrate::{calibrate, CalibMethod};
pub use cells::{BnFold, ConvBn, FakeQuant, QuantConv2d, QuantConvBn, QuantLinear};
pub use convert::convert_to_int8;
pub use fake_quant::{nudge, FakeQuantConfig, FakeQuantizer, Nudged};
pub use simqat::{LayerPolicy, Pair, SimQat, SimQatConfig};
pub use slb::{Slb, SlbBits, SlbConfig};

pub use gstick_nn::ConfigError;

/// Errors of the QAT algorithms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Graph(#[from] gstick_rewrite::Error),
    #[error(transparent)]
    Nn(#[from] gstick_nn::Error),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("layer `{layer}`: {message}")]
    Layer { layer: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
