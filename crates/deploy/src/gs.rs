//! Reading a Golden Stick directory (`formats::gs` tensors, per-layer settings in
//! `config.json`'s `quantization_config.layers`) onto the kernels: weight-only layers as
//! `PackedLinear`s, layers whose settings name an `activation` quantization as `A8W8Linear`s.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use gstick_models::hf::HfCheckpoint;
use gstick_models::llama::{LlamaConfig, WeightSource};
use gstick_quant::formats::gs::{decode, GsTensors};
use gstick_quant::int8::a8w8::A8W8Weight;
use gstick_quant::kernels::PackedWeight;
use gstick_quant::{ActivationQuant, Granularity, KvQuant, QuantizedWeight, WeightScheme};
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
/// weight-only layers) and, for static activations, its `input_scale` and `input_offset`
/// tensors, checked against the `quant_bias` and `deq_scale` stored beside them. An unknown
/// value or an inconsistent tensor is refused, naming it.
fn activation(
    ck: &HfCheckpoint,
    stem: &str,
    spec: &serde_json::Value,
    weight: &A8W8Weight,
) -> std::result::Result<Option<ActivationQuant>, String> {
    let name = match &spec["activation"] {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::String(name) => name.as_str(),
        other => return Err(format!("`activation` is {other}, a string expected")),
    };
    match name {
        "dynamic_per_token" => Ok(Some(ActivationQuant::DynamicPerToken)),
        "static_per_tensor" => {
            let tensor = |suffix: &str, want: Dtype, len: usize| {
                let (dtype, shape, data) = ck
                    .raw(&format!("{stem}.{suffix}"))
                    .map_err(|e| e.to_string())?;
                if dtype != want || shape.iter().product::<usize>() != len {
                    return Err(format!(
                        "{suffix} is {dtype:?} {shape:?}, {want:?} of {len} values expected"
                    ));
                }
                Ok(data
                    .chunks_exact(4)
                    .map(|c| [c[0], c[1], c[2], c[3]])
                    .collect::<Vec<_>>())
            };
            let f32s = |suffix: &str, len: usize| {
                tensor(suffix, Dtype::F32, len)
                    .map(|v| v.into_iter().map(f32::from_le_bytes).collect::<Vec<_>>())
            };
            let scale = f32s("input_scale", 1)?[0];
            let offset = f32s("input_offset", 1)?[0];
            if !(scale.is_normal() && scale > 0.0) {
                return Err(format!("input_scale {scale} is not a positive number"));
            }
            if offset.fract() != 0.0 || !(-128.0..=127.0).contains(&offset) {
                return Err(format!(
                    "input_offset {offset} is not an integer in [-128, 127]"
                ));
            }
            let zero_point = offset as i32;
            let bias: Vec<i32> = tensor("quant_bias", Dtype::I32, weight.rows)?
                .into_iter()
                .map(i32::from_le_bytes)
                .collect();
            if let Some(o) = (0..weight.rows).find(|&o| bias[o] != weight.quant_bias(zero_point)[o])
            {
                return Err(format!(
                    "quant_bias[{o}] = {} does not equal -input_offset * sum(weight[{o}]) = {}",
                    bias[o],
                    weight.quant_bias(zero_point)[o]
                ));
            }
            let deq = f32s("deq_scale", weight.rows)?;
            if let Some(o) = (0..weight.rows).find(|&o| deq[o] != scale * weight.scales[o]) {
                return Err(format!(
                    "deq_scale[{o}] = {} does not equal input_scale * weight_scale[{o}] = {}",
                    deq[o],
                    scale * weight.scales[o]
                ));
            }
            Ok(Some(ActivationQuant::StaticPerTensor { scale, zero_point }))
        }
        other => Err(format!(
            "activation quantization `{other}` is not supported (dynamic_per_token, static_per_tensor)"
        )),
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
        let bad = |m: String| load_error(self.ck.dir(), format!("`{stem}`: {m}"));
        if spec["activation"].is_null() {
            return Ok(Some((
                DeployWeight::Packed(PackedWeight::from_quantized(&q)),
                weight_label,
            )));
        }
        let w = A8W8Linear::weight_from(&q).map_err(bad)?;
        let act = activation(&self.ck, stem, spec, &w)
            .map_err(bad)?
            .ok_or_else(|| bad("no activation quantization".into()))?;
        Ok(Some((
            DeployWeight::A8W8(w, act),
            A8W8Linear::label(&weight_label, act),
        )))
    }

    fn float(&mut self, name: &str, shape: &[usize]) -> gstick_models::Result<Tensor> {
        self.ck.weight(name, shape)
    }

    fn path(&self) -> &Path {
        self.ck.dir()
    }

    fn kv_caches(&mut self) -> Result<BTreeMap<String, KvQuant>> {
        let mut out = BTreeMap::new();
        let Some(caches) = self.ck.config["quantization_config"]["kv_caches"].as_object() else {
            return Ok(out);
        };
        for (attn, kind) in caches {
            let bad = |m: String| load_error(self.ck.dir(), format!("`{attn}`: {m}"));
            let quant = match kind.as_str() {
                Some("dynamic_per_token") => KvQuant::DynamicPerToken,
                Some("static_per_channel") => {
                    let base = attn
                        .strip_suffix(".attention")
                        .ok_or_else(|| bad("not a self_attn.attention node".into()))?;
                    let read = |proj: &str, suffix: &str| -> Result<Vec<f32>> {
                        let name = format!("{base}.{proj}.{suffix}");
                        let (dtype, shape, data) = self.ck.raw(&name)?;
                        if dtype != Dtype::F32 || shape.len() != 1 {
                            return Err(bad(format!(
                                "{name} is {dtype:?} {shape:?}, a 1-D F32 expected"
                            )));
                        }
                        Ok(data
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect())
                    };
                    let mut scales = Vec::new();
                    for proj in ["k_proj", "v_proj"] {
                        let s = read(proj, "kv_cache_scale")?;
                        let o = read(proj, "kv_cache_offset")?;
                        if let Some(c) = s.iter().position(|v| !(v.is_normal() && *v > 0.0)) {
                            return Err(bad(format!(
                                "{proj}.kv_cache_scale[{c}] = {} is not a positive number",
                                s[c]
                            )));
                        }
                        if o.len() != s.len() || o.iter().any(|&v| v != 0.0) {
                            return Err(bad(format!(
                                "{proj}.kv_cache_offset must be {} zeros (symmetric int8)",
                                s.len()
                            )));
                        }
                        scales.push(s);
                    }
                    let value_scales = scales.pop().unwrap_or_default();
                    let key_scales = scales.pop().unwrap_or_default();
                    KvQuant::StaticPerChannel {
                        key_scales,
                        value_scales,
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "KV-cache quantization {kind} is not supported (dynamic_per_token, static_per_channel)"
                    )))
                }
            };
            out.insert(attn.clone(), quant);
        }
        Ok(out)
    }
}
