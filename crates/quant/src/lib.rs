//! Quantization arithmetic, storage formats and the neutral description of a quantized model. No
//! graph or tensor-library dependency: formats are bytes in, values out (and back), and the
//! deploy kernels compute with the quantized weights directly.

pub mod formats;
pub mod int8;
pub mod kernels;
pub mod kv;
pub mod model;
pub mod scheme;

pub use formats::{FormatError, GgmlError, GgmlType};
pub use kv::KvQuant;
pub use model::{ActivationQuant, FloatTensor, QuantizedLinear, QuantizedModel};
pub use scheme::{Granularity, QParams, QuantDtype, QuantizedWeight, SchemeError, WeightScheme};
