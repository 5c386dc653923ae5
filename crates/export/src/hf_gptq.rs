//! The Hugging Face GPTQ format (`checkpoint_format: "gptq"`): every quantized Linear packed as
//! `gstick_quant::formats::gptq` describes, beside the float tensors, with one
//! `quantization_config`. The column order is the original one (act-order in this toolkit uses
//! static groups), so `g_idx` is i / group_size and `desc_act` is false.

use std::path::Path;

use gstick_models::llama::tensor_specs;
use gstick_quant::formats::gptq::{encode, GptqLayout};
use gstick_quant::QuantizedModel;
use serde_json::json;

use crate::tensors::{write_model_safetensors, OwnedTensor};
use crate::{export_error, write_config_and_tokenizer, ExportReport, Result, Source};

/// The one layout every quantized Linear of `model` must share for the GPTQ format (it has one
/// `quantization_config`), or an error that says why not.
pub fn common_layout(model: &QuantizedModel, out: &Path) -> Result<GptqLayout> {
    let mut layouts = model.linears.values().map(|l| GptqLayout::of(&l.weight));
    let Some(layout) = layouts.next() else {
        return Err(export_error(out, "no quantized weights to write"));
    };
    if layouts.any(|l| l != layout) {
        return Err(export_error(
            out,
            "the GPTQ format holds one bit width and group size for the whole model; this model mixes several (use --format gs)",
        ));
    }
    if !GptqLayout::supported_bits(layout.bits) {
        return Err(export_error(
            out,
            format!("the GPTQ format packs 2, 4 or 8 bits, not {}", layout.bits),
        ));
    }
    Ok(layout)
}

/// Writes the model in the GPTQ format.
pub fn write_gptq(model: &QuantizedModel, src: &mut Source, out: &Path) -> Result<ExportReport> {
    let layout = common_layout(model, out)?;
    let specs = tensor_specs(src.config)?;
    let (config, tokenizer) = (src.config, src.tokenizer);
    let weights = &mut *src.weights;
    crate::write_dir_atomically(out, |dir| {
        write_model_safetensors(model, weights, specs, dir, Vec::new(), |name, w| {
            let stem = name.strip_suffix(".weight").unwrap_or(name);
            let bad = |e: gstick_quant::FormatError| export_error(dir, format!("`{stem}`: {e}"));
            let shapes = layout.shapes(w.rows, w.cols).map_err(bad)?;
            let t = encode(w).map_err(bad)?;
            let words = |v: Vec<u32>| v.into_iter().map(|w| w as i32);
            Ok(vec![
                (
                    format!("{stem}.qweight"),
                    OwnedTensor::i32(shapes.qweight.to_vec(), words(t.qweight)),
                ),
                (
                    format!("{stem}.qzeros"),
                    OwnedTensor::i32(shapes.qzeros.to_vec(), words(t.qzeros)),
                ),
                (
                    format!("{stem}.scales"),
                    OwnedTensor::f16(shapes.scales.to_vec(), &t.scales),
                ),
                (
                    format!("{stem}.g_idx"),
                    OwnedTensor::i32(vec![shapes.g_idx], t.g_idx),
                ),
            ])
        })?;
        let mut cfg = config.to_hf_json()?;
        cfg["quantization_config"] = json!({
            "quant_method": "gptq",
            "bits": layout.bits,
            "group_size": layout.group.map_or(-1, |g| g as i64),
            "desc_act": false,
            "sym": layout.symmetric,
            "static_groups": false,
            "true_sequential": true,
            "checkpoint_format": "gptq",
        });
        write_config_and_tokenizer(dir, cfg, tokenizer)?;
        Ok(ExportReport {
            files: vec![
                "model.safetensors".into(),
                "config.json".into(),
                "tokenizer.json".into(),
            ],
            notes: Vec::new(),
            max_abs_deviation: 0.0,
        })
    })
}
