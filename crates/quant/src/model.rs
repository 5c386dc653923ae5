//! The neutral description of a quantized model: what a compression algorithm produced, in terms
//! that exporters and deploy loaders read without knowing the algorithm. Algorithms (`ptq`,
//! `qat`) produce it; `export` writes it beside the float tensors of the source model and
//! `deploy` installs it on the integer kernels.
//!
//! It holds the integers and (scale, zero point) of each quantized Linear, with its scheme and
//! how its input is quantized at run time (nothing, or int8 per token), and the float tensors an
//! algorithm changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::scheme::QuantizedWeight;

/// A float tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// How a quantized Linear's input is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationQuant {
    /// Int8 per token, symmetric, scale max|x| / 127 computed at run time, no calibration (spec
    /// §3.8, msModelSlim's `W8A8_DYNAMIC`).
    DynamicPerToken,
}

impl ActivationQuant {
    /// The name configurations and the Golden Stick format use.
    pub fn name(self) -> &'static str {
        match self {
            ActivationQuant::DynamicPerToken => "dynamic_per_token",
        }
    }

    pub fn from_name(name: &str) -> Option<ActivationQuant> {
        match name {
            "dynamic_per_token" => Some(ActivationQuant::DynamicPerToken),
            _ => None,
        }
    }
}

/// One quantized Linear.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedLinear {
    pub weight: Arc<QuantizedWeight>,
    /// How the input is quantized; `None` for weight-only layers (float activations).
    pub activation: Option<ActivationQuant>,
    /// How it was made, in the original's words (`GPTQ-W4-per_group`).
    pub label: String,
}

/// A quantized model, by Hugging Face names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantizedModel {
    /// Quantized Linears by the full name of the layer (`model.layers.0.mlp.up_proj`); the
    /// tensor they replace is that name plus `.weight`.
    pub linears: BTreeMap<String, QuantizedLinear>,
    /// Float tensors an algorithm changed (AWQ folds its scales into the norms), by parameter
    /// name (`model.layers.0.input_layernorm.weight`). Every other float tensor is the source
    /// model's.
    pub float_overrides: BTreeMap<String, FloatTensor>,
}

impl QuantizedModel {
    /// The first Linear whose input is quantized, if any (formats without activation
    /// quantization refuse such a model, naming it).
    pub fn first_activation_quantized(&self) -> Option<(&str, ActivationQuant)> {
        self.linears
            .iter()
            .find_map(|(name, l)| l.activation.map(|a| (name.as_str(), a)))
    }

    /// The quantized weight that stands for parameter `name` (`….weight`), if any.
    pub fn weight_for(&self, param: &str) -> Option<&Arc<QuantizedWeight>> {
        let stem = param.strip_suffix(".weight")?;
        self.linears.get(stem).map(|l| &l.weight)
    }

    /// Bytes the integers and parameters take in memory (i8 values, two f64 per block).
    pub fn resident_bytes(&self) -> usize {
        self.linears
            .values()
            .map(|l| l.weight.values.len() + 16 * l.weight.params.len())
            .sum::<usize>()
            + self
                .float_overrides
                .values()
                .map(|t| 4 * t.values.len())
                .sum::<usize>()
    }
}
