//! The neutral description of a quantized model: what a compression algorithm produced, in terms
//! that exporters and deploy loaders read without knowing the algorithm. Algorithms (`ptq`,
//! `qat`) produce it; `export` writes it beside the float tensors of the source model and
//! `deploy` installs it on the integer kernels.
//!
//! It holds the integers and (scale, zero point) of each quantized Linear, with its scheme and
//! how its input is quantized (nothing, int8 per token at run time, or int8 per tensor with
//! calibrated parameters), how each attention's KV cache is quantized, and the float tensors an
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
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActivationQuant {
    /// Int8 per token, symmetric, scale max|x| / 127 computed at run time, no calibration (spec
    /// §3.8, msModelSlim's `W8A8_DYNAMIC`).
    DynamicPerToken,
    /// Int8 per tensor, asymmetric, from the calibration range (spec §3.3, msModelSlim's
    /// `W8A8`): `q = clamp(round(x / scale + zero_point), -128, 127)`, ties to even. The
    /// zero point's share of the product, `-zero_point * sum_k qw[o][k]`, is an int32 bias per
    /// output channel (`quant_bias`).
    StaticPerTensor { scale: f32, zero_point: i32 },
}

impl ActivationQuant {
    /// The name configurations and the Golden Stick format use.
    pub fn name(self) -> &'static str {
        match self {
            ActivationQuant::DynamicPerToken => "dynamic_per_token",
            ActivationQuant::StaticPerTensor { .. } => "static_per_tensor",
        }
    }

    /// Static parameters from the calibrated range of a Linear's input. The range is widened to
    /// hold 0 first, so that a zero input is exact; then spec §3.0's asymmetric int8 arithmetic:
    /// `scale = (max - min) / 255`, `zero_point = round(-128 - min / scale)`. A range of one
    /// point gives scale 1 and zero point 0, as the original.
    pub fn static_from_range(min: f32, max: f32) -> Result<ActivationQuant, String> {
        if !(min.is_finite() && max.is_finite()) || min > max {
            return Err(format!(
                "the calibrated input range [{min}, {max}] is not a finite interval"
            ));
        }
        let p =
            crate::scheme::qparams(min.min(0.0) as f64, max.max(0.0) as f64, (-128, 127), false);
        let scale = p.scale as f32;
        if !(scale.is_normal() && scale > 0.0) {
            return Err(format!(
                "the calibrated input range [{min}, {max}] gives the unusable scale {scale}"
            ));
        }
        Ok(ActivationQuant::StaticPerTensor {
            scale,
            zero_point: p.zero_point as i32,
        })
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
    /// Attentions whose KV cache is int8, by the attention node's full name
    /// (`model.layers.0.self_attn.attention`).
    pub kv_caches: BTreeMap<String, crate::KvQuant>,
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

    /// The first attention with an int8 KV cache, if any (formats that cannot say so refuse
    /// such a model, naming it).
    pub fn first_kv_quantized(&self) -> Option<(&str, &crate::KvQuant)> {
        self.kv_caches.iter().next().map(|(n, q)| (n.as_str(), q))
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
