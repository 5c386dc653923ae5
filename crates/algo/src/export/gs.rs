//! Golden Stick's own format (spec §2.15): a Hugging Face directory whose quantized Linears are
//! stored under the msModelSlim names — `L.weight` (int8 `[out, in]`, or for 4 bits and fewer
//! two values per byte `[out, in/2]`, element 2j in the low nibble), `L.weight_scale` and
//! `L.weight_offset` (f32 `[out, groups]`, x = (q − offset)·scale) — beside the float tensors,
//! plus `quantization_description.json` naming every tensor's quantization type, and in
//! `config.json` the per-layer settings the deploy loader needs.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use gstick_models::hf::HfCheckpoint;
use gstick_models::llama::{build_llama, LlamaConfig, WeightSource};
use gstick_models::tokenizer::TextTokenizer;
use gstick_nn::{named_params, Network};
use gstick_quant::scheme::{pack_int4, unpack_int4};
use gstick_quant::{Granularity, QParams, QuantizedWeight, WeightScheme};
use safetensors::Dtype;
use serde_json::json;

use super::{
    export_error, keep_quantized, save_safetensors, write_config_and_tokenizer, ExportReport,
    OwnedTensor,
};
use crate::pipeline::QuantizedLm;
use crate::Result;

/// The type string of the description file (`W4A16`).
fn quant_type(q: &QuantizedWeight) -> String {
    format!("W{}A16", q.scheme.bits)
}

fn groups_of(q: &QuantizedWeight) -> usize {
    match q.scheme.granularity {
        Granularity::PerGroup(g) => q.cols / g,
        _ => 1,
    }
}

/// Writes the model: float tensors from `float` (or the pipeline's overrides), quantized
/// Linears from `q`.
pub fn write_gs(
    float: &Network,
    config: &LlamaConfig,
    tokenizer: &TextTokenizer,
    q: &QuantizedLm,
    out: &Path,
) -> Result<ExportReport> {
    super::write_dir_atomically(out, |dir| {
        let mut tensors = BTreeMap::new();
        let mut description = serde_json::Map::new();
        let mut layers = serde_json::Map::new();
        let mut types = std::collections::BTreeSet::new();
        for (name, p) in named_params(float) {
            if config.tie_embeddings && name == "lm_head.weight" {
                continue;
            }
            let stem = name.strip_suffix(".weight").unwrap_or(&name);
            if let (Some(w), true) = (q.weights.get(stem), name.ends_with(".weight")) {
                let t = quant_type(w);
                types.insert(t.clone());
                let weight = if w.scheme.bits <= 4 {
                    if w.cols % 2 != 0 {
                        return Err(export_error(
                            dir,
                            format!(
                                "`{name}`: an odd number of inputs cannot be packed two per byte"
                            ),
                        ));
                    }
                    OwnedTensor {
                        dtype: Dtype::U8,
                        shape: vec![w.rows, w.cols / 2],
                        data: pack_int4(&w.values),
                    }
                } else {
                    OwnedTensor {
                        dtype: Dtype::I8,
                        shape: vec![w.rows, w.cols],
                        data: w.values.iter().map(|&v| v as u8).collect(),
                    }
                };
                let shape = vec![w.rows, groups_of(w)];
                let scales: Vec<f32> = w.params.iter().map(|p| p.scale as f32).collect();
                let offsets: Vec<f32> = w.params.iter().map(|p| p.zero_point as f32).collect();
                tensors.insert(name.clone(), weight);
                tensors.insert(
                    format!("{stem}.weight_scale"),
                    OwnedTensor::f32(shape.clone(), &scales),
                );
                tensors.insert(
                    format!("{stem}.weight_offset"),
                    OwnedTensor::f32(shape, &offsets),
                );
                for suffix in ["weight", "weight_scale", "weight_offset"] {
                    description.insert(format!("{stem}.{suffix}"), t.clone().into());
                }
                let group = match w.scheme.granularity {
                    Granularity::PerGroup(g) => g,
                    _ => 0,
                };
                layers.insert(
                    stem.to_string(),
                    json!({"bits": w.scheme.bits, "group_size": group,
                           "symmetric": w.scheme.symmetric, "narrow_range": w.scheme.narrow}),
                );
            } else {
                let t = q.float_overrides.get(&name).unwrap_or(p.tensor());
                tensors.insert(name.clone(), OwnedTensor::from_tensor(t)?);
                description.insert(name.clone(), "FLOAT".into());
            }
        }
        let model_type = if types.len() == 1 {
            types.into_iter().next().unwrap_or_default()
        } else {
            "MIXED".into()
        };
        description.insert("model_quant_type".into(), model_type.clone().into());
        save_safetensors(&tensors, &dir.join("model.safetensors"))?;
        let text = serde_json::to_string_pretty(&description)
            .map_err(|e| export_error(dir, e.to_string()))?;
        std::fs::write(dir.join("quantization_description.json"), text)
            .map_err(|e| export_error(dir, format!("writing the description: {e}")))?;
        let mut cfg = config.to_hf_json()?;
        cfg["quantization"] = "golden-stick".into();
        cfg["quantization_config"] = json!({
            "quant_method": "golden-stick",
            "format_version": 1,
            "model_quant_type": model_type,
            "dequantize": "w = (weight - weight_offset) * weight_scale, per output row and group of input columns",
            "int4_packing": "two values per byte along the input axis, element 2j in the low nibble",
            "layers": layers,
        });
        write_config_and_tokenizer(dir, cfg, tokenizer)?;
        Ok(ExportReport {
            files: vec![
                "model.safetensors".into(),
                "quantization_description.json".into(),
                "config.json".into(),
                "tokenizer.json".into(),
            ],
            notes: Vec::new(),
            max_abs_deviation: 0.0,
        })
    })
}

/// A weight source over a Golden Stick directory: quantized weights are read as integers and
/// kept, and handed to the skeleton builder dequantized.
struct GsSource {
    ck: HfCheckpoint,
    layers: serde_json::Map<String, serde_json::Value>,
    quantized: BTreeMap<String, QuantizedWeight>,
}

impl GsSource {
    fn read(
        &self,
        stem: &str,
        spec: &serde_json::Value,
        shape: &[usize],
    ) -> Result<QuantizedWeight> {
        let dir = self.ck.dir();
        let bad = |m: String| export_error(dir, format!("`{stem}`: {m}"));
        let (&[rows, cols], Some(bits)) = (shape, spec["bits"].as_u64()) else {
            return Err(bad(
                "a quantized weight must be 2-D with `bits` in the config".into(),
            ));
        };
        let bits = bits as u32;
        let group = spec["group_size"].as_u64().unwrap_or(0) as usize;
        let granularity = if group == 0 {
            Granularity::PerChannel
        } else {
            Granularity::PerGroup(group)
        };
        if group != 0 && (cols % group != 0) {
            return Err(bad(format!("group size {group} does not divide {cols}")));
        }
        let groups = cols.checked_div(group).unwrap_or(1);
        let (dtype, wshape, data) = self.ck.raw(&format!("{stem}.weight"))?;
        let values: Vec<i8> = match (bits <= 4, dtype) {
            (true, Dtype::U8) if wshape == [rows, cols / 2] => unpack_int4(&data, rows * cols),
            (false, Dtype::I8) if wshape == [rows, cols] => data.iter().map(|&b| b as i8).collect(),
            _ => {
                return Err(bad(format!(
                    "weight is {dtype:?} {wshape:?}; {bits}-bit {rows}x{cols} needs {}",
                    if bits <= 4 {
                        "U8 [rows, cols/2]"
                    } else {
                        "I8 [rows, cols]"
                    }
                )))
            }
        };
        let floats = |suffix: &str| -> Result<Vec<f32>> {
            let (dtype, s, data) = self.ck.raw(&format!("{stem}.{suffix}"))?;
            if dtype != Dtype::F32 || s != [rows, groups] {
                return Err(bad(format!(
                    "{suffix} is {dtype:?} {s:?}, F32 [{rows}, {groups}] expected"
                )));
            }
            Ok(super::le_words(&data, f32::from_le_bytes))
        };
        let (scales, offsets) = (floats("weight_scale")?, floats("weight_offset")?);
        let range =
            gstick_quant::scheme::int_range(bits, true, false).map_err(|e| bad(e.to_string()))?;
        if let Some(v) = values
            .iter()
            .find(|&&v| (v as i32) < range.0 || (v as i32) > range.1)
        {
            return Err(bad(format!("value {v} is outside the {bits}-bit range")));
        }
        if let Some(s) = scales.iter().find(|s| !s.is_finite() || **s <= 0.0) {
            return Err(bad(format!("scale {s} is not a positive number")));
        }
        Ok(QuantizedWeight {
            rows,
            cols,
            scheme: WeightScheme {
                bits,
                granularity,
                symmetric: spec["symmetric"].as_bool().unwrap_or(true),
                narrow: spec["narrow_range"].as_bool().unwrap_or(false),
            },
            values,
            params: scales
                .iter()
                .zip(&offsets)
                .map(|(&s, &z)| QParams {
                    scale: s as f64,
                    zero_point: z as f64,
                })
                .collect(),
        })
    }
}

impl WeightSource for GsSource {
    fn weight(&mut self, name: &str, shape: &[usize]) -> gstick_models::Result<Tensor> {
        let stem = name.strip_suffix(".weight").unwrap_or(name);
        match self.layers.get(stem).cloned() {
            Some(spec) if name.ends_with(".weight") => {
                let read = self.read(stem, &spec, shape);
                keep_quantized(self.ck.dir(), &mut self.quantized, stem, shape, read)
            }
            _ => self.ck.tensor(name, shape),
        }
    }
}

/// Deploy mode: builds the model skeleton from `config.json` and loads a Golden Stick
/// directory into it, its quantized Linears as `WeightQuantLinear` cells.
pub fn load_gs(dir: &Path) -> Result<(Network, LlamaConfig)> {
    let ck = HfCheckpoint::open(dir)?;
    let config = LlamaConfig::from_hf(&ck)?;
    let qc = &ck.config["quantization_config"];
    if qc["quant_method"].as_str() != Some("golden-stick") {
        return Err(export_error(
            dir,
            "config.json has no golden-stick quantization_config (not a Golden Stick export)",
        ));
    }
    let layers = qc["layers"].as_object().cloned().unwrap_or_default();
    let mut src = GsSource {
        ck,
        layers,
        quantized: BTreeMap::new(),
    };
    let mut net = build_llama(&config, &mut src)?;
    crate::rtn::install_quantized(&mut net, src.quantized)?;
    Ok((net, config))
}
