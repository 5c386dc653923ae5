//! Golden Stick: one library to quantize, convert and deploy neural networks. This crate is the
//! facade the `gstick` command line, the tests and the benchmarks all call; the layers below it
//! are re-exported under their own names.
//!
//! Quantizing an LLM takes four calls: open the source model, cut calibration windows from a
//! text, run a recipe, save the result in a format other tools load. The source stays memory
//! mapped and one decoder layer is resident at a time.
//!
//! ```no_run
//! use gstick::ptq::config::{PtqConfig, WeightAlgo};
//! use gstick::{Calibration, Format, Quantizer, Source};
//!
//! # fn main() -> Result<(), gstick::Error> {
//! let source = Source::open("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! let calib = Calibration::from_text(&source, &std::fs::read_to_string("calib.txt")?, 16, 512, 0)?;
//! let quantized = Quantizer::new(PtqConfig::weight_only(WeightAlgo::Gptq, 4, 64)?)?
//!     .calibrate(&source, &calib)
//!     .run()?;
//! quantized.save(Format::Gguf, "out/model-w4".as_ref())?;
//! let lm = gstick::load("out/model-w4/model.gguf".as_ref())?;
//! # Ok(()) }
//! ```
//!
//! A runnable version on a small synthetic model is in [`quantizer`].

pub mod memory;
pub mod quantizer;
pub mod source;

pub use gstick_deploy as deploy;
pub use gstick_eval as eval;
pub use gstick_export as export;
pub use gstick_models as models;
pub use gstick_nn as nn;
pub use gstick_prune as prune;
pub use gstick_ptq as ptq;
pub use gstick_qat as qat;
pub use gstick_quant as quant;
pub use gstick_rewrite as rewrite;

pub use gstick_deploy::{load, load_gguf_on_kernels, Lm};
pub use gstick_export::{ExportReport, Format};
pub use gstick_quant::QuantizedModel;
pub use memory::MemoryPlan;
pub use quantizer::{Calibrated, Quantized, Quantizer};
pub use source::{Calibration, Source};

/// Errors of the library facade: those of each layer, and files it could not read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] gstick_nn::ConfigError),
    #[error(transparent)]
    Ptq(#[from] gstick_ptq::Error),
    #[error(transparent)]
    Export(#[from] gstick_export::Error),
    #[error(transparent)]
    Deploy(#[from] gstick_deploy::Error),
    #[error(transparent)]
    Model(#[from] gstick_models::Error),
    #[error(transparent)]
    Nn(#[from] gstick_nn::Error),
    #[error("{path}: {message}")]
    Input { path: String, message: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
