//! Golden Stick's own format (spec §2.15): a Hugging Face directory whose quantized Linears are
//! stored in the msModelSlim layout of `gstick_quant::formats::gs` (`L.weight`,
//! `L.weight_scale`, `L.weight_offset`) beside the float tensors, plus
//! `quantization_description.json` naming every tensor's quantization type, and in
//! `config.json` the per-layer settings the deploy loader needs. A layer with static
//! activations also has msModelSlim's `L.input_scale` and `L.input_offset` (the per-tensor
//! scale and zero point), `L.quant_bias` (int32, `-input_offset * sum_k weight[o][k]`) and
//! `L.deq_scale` (`input_scale * weight_scale[o]`).

use std::collections::BTreeSet;
use std::path::Path;

use gstick_models::llama::tensor_specs;
use gstick_quant::formats::gs::encode;
use gstick_quant::int8::a8w8::A8W8Weight;
use gstick_quant::{ActivationQuant, Granularity, KvQuant, QuantizedModel, QuantizedWeight};
use safetensors::Dtype;
use serde_json::json;

use crate::tensors::{write_model_safetensors, OwnedTensor};
use crate::{export_error, write_config_and_tokenizer, ExportReport, Result, Source};

/// The type string of the description file (`W4A16`, `W8A8_DYNAMIC`).
fn quant_type(q: &QuantizedWeight, activation: Option<ActivationQuant>) -> String {
    match activation {
        None => format!("W{}A16", q.scheme.bits),
        Some(ActivationQuant::DynamicPerToken) => format!("W{}A8_DYNAMIC", q.scheme.bits),
        Some(ActivationQuant::StaticPerTensor { .. }) => format!("W{}A8", q.scheme.bits),
    }
}

/// The static-activation tensors of Linear `stem`: input scale and offset, the int32 zero-point
/// bias and the dequantization scale per output channel.
fn static_tensors(
    stem: &str,
    w: &QuantizedWeight,
    scale: f32,
    zero_point: i32,
) -> std::result::Result<Vec<(String, OwnedTensor)>, String> {
    let int8 = A8W8Weight::from_quantized(w)?;
    let deq: Vec<f32> = int8.scales.iter().map(|&sw| scale * sw).collect();
    Ok(vec![
        (
            format!("{stem}.input_scale"),
            OwnedTensor::f32(vec![1], &[scale]),
        ),
        (
            format!("{stem}.input_offset"),
            OwnedTensor::f32(vec![1], &[zero_point as f32]),
        ),
        (
            format!("{stem}.quant_bias"),
            OwnedTensor::i32(vec![w.rows], int8.quant_bias(zero_point)),
        ),
        (
            format!("{stem}.deq_scale"),
            OwnedTensor::f32(vec![w.rows], &deq),
        ),
    ])
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
        // The int8 KV caches: their kind in config.json, static scales as msModelSlim's
        // `k_proj.kv_cache_scale` / `kv_cache_offset` (and v_proj's) beside the projections.
        let mut kv = serde_json::Map::new();
        let mut kv_tensors = Vec::new();
        for (attn, q) in &model.kv_caches {
            kv.insert(attn.clone(), q.name().into());
            if let KvQuant::StaticPerChannel {
                key_scales,
                value_scales,
            } = q
            {
                let base = attn.strip_suffix(".attention").ok_or_else(|| {
                    export_error(dir, format!("`{attn}` is not a self_attn.attention node"))
                })?;
                for (proj, scales) in [("k_proj", key_scales), ("v_proj", value_scales)] {
                    for (suffix, values) in [
                        ("kv_cache_scale", scales.clone()),
                        ("kv_cache_offset", vec![0.0; scales.len()]),
                    ] {
                        let name = format!("{base}.{proj}.{suffix}");
                        description.insert(name.clone(), "C8".into());
                        kv_tensors.push((name, OwnedTensor::f32(vec![values.len()], &values)));
                    }
                }
            }
        }
        let floats = write_model_safetensors(model, weights, specs, dir, kv_tensors, |name, w| {
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
            let mut extra = Vec::new();
            if let Some(ActivationQuant::StaticPerTensor { scale, zero_point }) = activation {
                extra = static_tensors(stem, w, scale, zero_point)
                    .map_err(|e| export_error(dir, format!("`{name}`: {e}")))?;
                for (n, _) in &extra {
                    description.insert(n.clone(), t.clone().into());
                }
            }
            let mut tensors = vec![
                (name.to_string(), weight),
                (
                    format!("{stem}.weight_scale"),
                    OwnedTensor::f32(g.param_shape.to_vec(), &g.scale),
                ),
                (
                    format!("{stem}.weight_offset"),
                    OwnedTensor::f32(g.param_shape.to_vec(), &g.offset),
                ),
            ];
            tensors.extend(extra);
            Ok(tensors)
        })?;
        for name in floats {
            description.insert(name, "FLOAT".into());
        }
        let model_type = match types.len() {
            0 => "FLOAT".to_string(), // only the KV cache is quantized
            1 => types.into_iter().next().unwrap_or_default(),
            _ => "MIXED".into(),
        };
        description.insert("model_quant_type".into(), model_type.clone().into());
        if !kv.is_empty() {
            description.insert("kv_cache_type".into(), "C8".into());
        }
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
            "activation": "a layer with activation dynamic_per_token quantizes each input row to int8 at run time: scale = max|x| / 127, q = round(x / scale), ties to even; static_per_tensor uses the calibrated input_scale and input_offset: q = clamp(round(x / input_scale + input_offset), -128, 127), ties to even, and y = deq_scale * (sum_k q * weight + quant_bias) + bias",
            "layers": layers,
        });
        if !kv.is_empty() {
            cfg["quantization_config"]["kv_caches"] = kv.into();
            cfg["quantization_config"]["kv_cache"] = "int8 keys (after RoPE) and values: dynamic_per_token rows have scale max|row| / 127 computed when stored; static_per_channel rows use <attention>.{k,v}_proj.kv_cache_scale per channel (offset 0): q = clamp(round(x / scale), -128, 127), ties to even".into();
        }
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
