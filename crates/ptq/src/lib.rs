//! Post-training quantization of LLMs (spec §2.3–§3.10): the configuration with the original's
//! fields, defaults and validation rules ([`config`]), recipes and layer policies ([`recipe`]),
//! the refusal of what is not implemented ([`supported`]), the layer-wise pipeline
//! ([`pipeline`]) and its steps ([`steps`]: SmoothQuant, OSL, AWQ, GPTQ, RTN) over the algorithms
//! ([`smooth`], [`osl`], [`awq`], [`gptq`]), the calibration-time quantized Linear ([`fake_quant_linear`]), RTN of a whole
//! network ([`rtn`]), PTQ as a `CompAlgo` on an in-memory network ([`ptq`]), and the pre-flight
//! memory estimate ([`memory`]). The product is the neutral `gstick_quant::QuantizedModel`.

pub mod awq;
pub mod config;
pub mod fake_quant_linear;
pub mod gptq;
pub mod kv;
pub mod memory;
pub mod observer;
pub mod osl;
pub mod pipeline;
pub mod ptq;
pub mod recipe;
pub mod records;
pub mod rtn;
pub mod smooth;
pub mod sparsegpt;
pub mod sparsity;
pub mod steps;
pub mod supported;

pub use config::{ConfigError, PtqConfig};
pub use pipeline::{quantize_layers, LayerSource, PipelineOptions, PtqResult};
pub use ptq::Ptq;
pub use recipe::{LayerPolicies, Recipe};
pub use records::{summary_table, KvRecord, LayerRecord, LinearRecord};

/// Errors of post-training quantization.
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
    #[error("layer `{layer}`: {message}")]
    Layer { layer: String, message: String },
    #[error("{0}")]
    Memory(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
