//! Quantization-aware training and int8 deployment of CNNs: the fake quantizer, SimQAT, LSQ and
//! SLB, static PTQ calibration, and convert to real int8 cells.

pub mod calibrate;
pub mod cells;
pub mod convert;
pub mod fake_quant;
pub mod int8_cells;
pub mod lsq;
pub mod simqat;
pub mod slb;

pub use calibrate::{calibrate, CalibMethod};
pub use cells::{BnFold, ConvBn, FakeQuant, QuantConv2d, QuantConvBn, QuantLinear};
pub use convert::convert_to_int8;
pub use fake_quant::{nudge, FakeQuantConfig, FakeQuantizer, Nudged};
pub use simqat::{LayerPolicy, Pair, SimQat, SimQatConfig};
pub use slb::{Slb, SlbBits, SlbConfig};
