//! Quantization arithmetic and storage formats. No graph or tensor-library dependency: formats are
//! bytes in, f32 out (and, later, f32 in, bytes out). The deploy kernels compute with the
//! quantized weights directly.

pub mod ggml;
pub mod int8;
pub mod kernels;
pub mod scheme;

pub use ggml::{GgmlError, GgmlType};
pub use scheme::{Granularity, QParams, QuantizedWeight, SchemeError, WeightScheme};
