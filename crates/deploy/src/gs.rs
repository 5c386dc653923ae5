//! Reading a Golden Stick directory (`formats::gs` tensors, per-layer settings in
//! `config.json`'s `quantization_config.layers`) onto the kernels: weight-only layers as
//! `PackedLinear`s, layers whose settings name an `activation` quantization as `A8W8Linear`s.

use std::path::Path;

use candle_core::Tensor;
use gstick_models::hf::HfCheckpoint;
use gstick_models::llama::{LlamaConfig, WeightSource};
use gstick_quant::formats::gs::{decode, GsTensors};
use gstick_quant::kernels::PackedWeight;
use gstick_quant::{ActivationQuant, Granularity, QuantizedWeight, WeightScheme};
use safetensors::Dtype;

use crate::a8w8_linear::A8W8Linear;
use crate::install::DeployWeight;
use crate::load::PackedReader;
use crate::{load_error, Result};

pub(crate) struct GsReader {
    ck: HfCheckpoint,
    layers: serde_json::Map<String, serde_json::Value>,
}

impl GsReader {
    pub(crate) fn open(ck: HfCheckpoint) -> Result<Self> {
        let qc = &ck.config["quantization_config"];
        if qc["quant_method"].as_str() != Some("golden-stick") {
            return Err(load_error(
                ck.dir(),
                "config.json has no golden-stick quantization_config (not a Golden Stick export)",
            ));
        }
        let layers = qc["layers"].as_object().cloned().unwrap_or_default();
        Ok(GsReader { ck, layers })
    }
}

/// The quantized weight of Linear `stem` ((rows, cols)) as `spec` describes it.
pub fn read_weight(
    ck: &HfCheckpoint,
    stem: &str,
    spec: &serde_json::Value,
    rows: usize,
    cols: usize,
) -> Result<QuantizedWeight> {
    let bad = |m: String| load_error(ck.dir(), format!("`{stem}`: {m}"));
    let bits = spec["bits"]
        .as_u64()
        .ok_or_else(|| bad("no `bits` in the config".into()))? as u32;
    let group = spec["group_size"].as_u64().unwrap_or(0) as usize;
    let scheme = WeightScheme {
        bits,
        granularity: if group == 0 {
            Granularity::PerChannel
        } else {
            Granularity::PerGroup(group)
        },
        symmetric: spec["symmetric"].as_bool().unwrap_or(true),
        narrow: spec["narrow_range"].as_bool().unwrap_or(false),
    };
    let (dtype, wshape, weight) = ck.raw(&format!("{stem}.weight"))?;
    let packed = match dtype {
        Dtype::U8 => true,
        Dtype::I8 => false,
        other => {
            return Err(bad(format!(
                "weight is {other:?}, I8 or packed U8 expected"
            )))
        }
    };
    let floats = |suffix: &str| -> Result<(Vec<f32>, Vec<usize>)> {
        let (dtype, shape, data) = ck.raw(&format!("{stem}.{suffix}"))?;
        if dtype != Dtype::F32 || shape.len() != 2 {
            return Err(bad(format!(
                "{suffix} is {dtype:?} {shape:?}, a 2-D F32 expected"
            )));
        }
        Ok((
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            shape,
        ))
    };
    let (scale, scale_shape) = floats("weight_scale")?;
    let (offset, offset_shape) = floats("weight_offset")?;
    if scale_shape != offset_shape || wshape.len() != 2 {
        return Err(bad(format!(
            "weight {wshape:?}, weight_scale {scale_shape:?} and weight_offset {offset_shape:?} do not agree"
        )));
    }
    let tensors = GsTensors {
        weight,
        packed,
        weight_shape: [wshape[0], wshape[1]],
        scale,
        offset,
        param_shape: [scale_shape[0], scale_shape[1]],
    };
    decode(rows, cols, scheme, &tensors).map_err(|e| bad(e.to_string()))
}

/// The layer's activation quantization from its settings (`"activation"`, absent for
/// weight-only layers); an unknown value is refused, naming it.
fn activation(spec: &serde_json::Value) -> std::result::Result<Option<ActivationQuant>, String> {
    match &spec["activation"] {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(name) => {
            ActivationQuant::from_name(name).map(Some).ok_or_else(|| {
                format!("activation quantization `{name}` is not supported (dynamic_per_token is)")
            })
        }
        other => Err(format!("`activation` is {other}, a string expected")),
    }
}

impl PackedReader for GsReader {
    fn config(&self) -> Result<LlamaConfig> {
        Ok(LlamaConfig::from_hf(&self.ck)?)
    }

    fn packed(&mut self, name: &str, shape: &[usize]) -> Result<Option<(DeployWeight, String)>> {
        let stem = name.strip_suffix(".weight").unwrap_or(name);
        let (Some(spec), true, &[rows, cols]) =
            (self.layers.get(stem), name.ends_with(".weight"), shape)
        else {
            return Ok(None);
        };
        let q = read_weight(&self.ck, stem, spec, rows, cols)?;
        let weight_label = crate::gptq::label(&q);
        match activation(spec).map_err(|m| load_error(self.ck.dir(), format!("`{stem}`: {m}")))? {
            None => Ok(Some((
                DeployWeight::Packed(PackedWeight::from_quantized(&q)),
                weight_label,
            ))),
            Some(ActivationQuant::DynamicPerToken) => {
                let w = A8W8Linear::weight_from(&q)
                    .map_err(|m| load_error(self.ck.dir(), format!("`{stem}`: {m}")))?;
                Ok(Some((
                    DeployWeight::A8W8(w),
                    format!("{weight_label}-A8-per_token"),
                )))
            }
        }
    }

    fn float(&mut self, name: &str, shape: &[usize]) -> gstick_models::Result<Tensor> {
        self.ck.weight(name, shape)
    }

    fn path(&self) -> &Path {
        self.ck.dir()
    }
}
