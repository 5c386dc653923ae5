//! Quantization-aware training: the fake quantizer, the quantized training cells, and SimQAT.

pub mod calibrate;
pub mod cells;
pub mod convert;
pub mod fake_quant;
pub mod int8_cells;
pub mod simqat;

pub use calibrate::{calibrate, CalibMethod};
pub use cells::{BnFold, ConvBn, FakeQuant, QuantConv2d, QuantConvBn, QuantLinear};
pub use convert::convert_to_int8;
pub use fake_quant::{nudge, FakeQuantConfig, FakeQuantizer, Nudged};
pub use simqat::{LayerPolicy, Pair, SimQat, SimQatConfig};
