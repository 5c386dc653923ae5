//! Golden Stick's own format (spec §2.15): a Hugging Face directory whose quantized Linears are
//! stored in the msModelSlim layout of `gstick_quant::formats::gs` (`L.weight`,
//! `L.weight_scale`, `L.weight_offset`) beside the float tensors, plus
//! `quantization_description.json` naming every tensor's quantization type, and in
//! `config.json` the per-layer settings the deploy loader needs.

use std::collections::BTreeSet;
use std::path::Path;

use gstick_models::llama::tensor_specs;
use gstick_quant::formats::gs::encode;
use gstick_quant::{ActivationQuant, Granularity, QuantizedModel, QuantizedWeight};
use safetensors::Dtype;
use serde_json::json;

use crate::tensors::{write_model_safetensors, OwnedTensor};
use crate::{export_error, write_config_and_tokenizer, ExportReport, Result, Source};

/// The type string of the description file (`W4A16`, `W8A8_DYNAMIC`).
fn quant_type(q: &QuantizedWeight, activation: Option<ActivationQuant>) -> String {
    match activation {
        None => format!("W{}A16", q.scheme.bits),
        Some(ActivationQuant::DynamicPerToken) => format!("W{}A8_DYNAMIC", q.scheme.bits),
    }
}

/// Writes the model: quantized Linears from `model`, every other tensor from the source (or the
/// model's float overrides).
pub fn write_gs(model: &QuantizedModel, src: &mut Source, out: &Path) -> Result<ExportReport> {
    let specs = tensor_specs(src.config)?;
    let (config, tokenizer) = (src.config, src.tokenizer);
    let weights = &mut *src.weights;
    crate::write_dir_atomically(out, |dir| {
        let mut description = serde_json::Map::new();
        let mut layers = serde_json::Map::new();
        let mut types = BTreeSet::new();
        let floats = write_model_safetensors(model, weights, specs, dir, |name, w| {
            let stem = name.strip_suffix(".weight").unwrap_or(name);
            let activation = model.linears.get(stem).and_then(|l| l.activation);
            let t = quant_type(w, activation);
            types.insert(t.clone());
            let g = encode(w).map_err(|e| export_error(dir, format!("`{name}`: {e}")))?;
            let weight = OwnedTensor {
                dtype: if g.packed { Dtype::U8 } else { Dtype::I8 },
                shape: g.weight_shape.to_vec(),
                data: g.weight,
            };
            for suffix in ["weight", "weight_scale", "weight_offset"] {
                description.insert(format!("{stem}.{suffix}"), t.clone().into());
            }
            let group = match w.scheme.granularity {
                Granularity::PerGroup(g) => g,
                _ => 0,
            };
            let mut layer = json!({"bits": w.scheme.bits, "group_size": group,
                       "symmetric": w.scheme.symmetric, "narrow_range": w.scheme.narrow});
            if let Some(a) = activation {
                layer["activation"] = a.name().into();
            }
            layers.insert(stem.to_string(), layer);
            Ok(vec![
                (name.to_string(), weight),
                (
                    format!("{stem}.weight_scale"),
                    OwnedTensor::f32(g.param_shape.to_vec(), &g.scale),
                ),
                (
                    format!("{stem}.weight_offset"),
                    OwnedTensor::f32(g.param_shape.to_vec(), &g.offset),
                ),
            ])
        })?;
        for name in floats {
            description.insert(name, "FLOAT".into());
        }
        let model_type = if types.len() == 1 {
            types.into_iter().next().unwrap_or_default()
        } else {
            "MIXED".into()
        };
        description.insert("model_quant_type".into(), model_type.clone().into());
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
            "activation": "a layer with activation dynamic_per_token quantizes each input row to int8 at run time: scale = max|x| / 127, q = round(x / scale), ties to even",
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
