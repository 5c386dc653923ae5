//! Compression algorithms and their configuration: the PTQ configuration with its validation
//! rules, recipe files and per-layer policies (spec §2.3, §2.5), RTN, GPTQ and AWQ, the layer-wise
//! pipeline, deploy cells on integer kernels, and exports.

pub mod awq;
pub mod comp_algo;
pub mod deploy;
pub mod export;
pub mod gptq;
pub mod observer;
pub mod pipeline;
pub mod ptq_config;
pub mod qat;
pub mod rtn;

pub use comp_algo::CompAlgo;
pub use ptq_config::{ConfigError, LayerPolicies, PtqConfig, Recipe};

/// Errors of the algorithms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Graph(#[from] gstick_rewrite::Error),
    #[error(transparent)]
    Model(#[from] gstick_models::Error),
    #[error(transparent)]
    Nn(#[from] gstick_nn::Error),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("{path}: {message}")]
    Export { path: String, message: String },
    #[error("layer `{layer}`: {message}")]
    Layer { layer: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
