//! Quantization arithmetic and storage formats. No graph or tensor-library dependency: formats are
//! bytes in, f32 out (and, later, f32 in, bytes out).

pub mod ggml;
pub mod scheme;

pub use ggml::{GgmlError, GgmlType};
pub use scheme::{Granularity, QParams, QuantizedWeight, SchemeError, WeightScheme};
