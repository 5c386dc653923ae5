//! The compressed-tensors format (`quant_method: "compressed-tensors"`), which vLLM,
//! llm-compressor and transformers load: quantized Linears in the layouts of
//! `gstick_quant::formats::compressed_tensors` beside the float tensors, and in `config.json`
//! one config group per kind of layer (weight bits and group, input quantization).
//!
//! - W8A8 (static or dynamic input): `int-quantized`; a static input has `input_scale` f32 `[1]`
//!   and `input_zero_point` int8 `[1]` (q = clamp(round(x / scale + zero_point))). Dynamic inputs
//!   are `strategy: token` and carry no tensors.
//! - Weight-only (W8A16, W4A16, ...) and A8W4: `pack-quantized`.
//!
//! The status is `compressed`: the integers are stored, and a loader computes with them (or
//! decompresses them) as it chooses. Int8 KV caches and asymmetric weights are refused: this
//! writer does not express them.

use std::collections::BTreeMap;
use std::path::Path;

use gstick_models::llama::tensor_specs;
use gstick_quant::formats::compressed_tensors::{
    pack, packed_cols, scales, CtFormat, CtWeightArgs,
};
use gstick_quant::{ActivationQuant, QuantizedModel};
use serde_json::{json, Value};

use crate::tensors::{write_model_safetensors, OwnedTensor};
use crate::{export_error, write_config_and_tokenizer, ExportReport, Result, Source};

/// How a Linear's input is quantized, as a config group sees it (static scales are tensors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum InputKind {
    Float,
    DynamicPerToken,
    StaticPerTensor,
}

impl InputKind {
    fn of(a: Option<ActivationQuant>) -> InputKind {
        match a {
            None => InputKind::Float,
            Some(ActivationQuant::DynamicPerToken) => InputKind::DynamicPerToken,
            Some(ActivationQuant::StaticPerTensor { .. }) => InputKind::StaticPerTensor,
        }
    }

    fn args(self) -> Value {
        let int8 = |strategy: &str, dynamic: bool, symmetric: bool| {
            json!({
                "num_bits": 8, "type": "int", "symmetric": symmetric, "strategy": strategy,
                "dynamic": dynamic, "group_size": null, "block_structure": null,
                "actorder": null, "observer": null, "observer_kwargs": {},
            })
        };
        match self {
            InputKind::Float => Value::Null,
            InputKind::DynamicPerToken => int8("token", true, true),
            InputKind::StaticPerTensor => int8("tensor", false, false),
        }
    }
}

/// What one config group holds: every Linear with the same storage and arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    weights: CtWeightArgs,
    input: InputKind,
}

impl GroupKey {
    /// Int8 weights of a layer whose input is quantized are stored as int8 (`int-quantized`,
    /// what W8A8 kernels read); every other layer is packed.
    fn format(&self) -> CtFormat {
        if self.weights.bits == 8 && self.input != InputKind::Float {
            CtFormat::IntQuantized
        } else {
            CtFormat::PackQuantized
        }
    }

    fn scheme(&self, targets: Vec<String>) -> Value {
        let w = self.weights;
        json!({
            "targets": targets,
            "weights": {
                "num_bits": w.bits, "type": "int", "symmetric": true,
                "strategy": if w.group.is_some() { "group" } else { "channel" },
                "group_size": w.group, "dynamic": false, "block_structure": null,
                "actorder": null, "observer": "minmax", "observer_kwargs": {},
            },
            "input_activations": self.input.args(),
            "output_activations": null,
            "format": self.format().name(),
        })
    }
}

/// The `quantization_config` of `model`, whose 2-D Linear weights are named in `linears` (the
/// unquantized ones go to `ignore`), or an error naming the first Linear the format cannot hold.
fn quantization_config(
    model: &QuantizedModel,
    linears: &[String],
    out: &Path,
) -> Result<(Value, BTreeMap<String, GroupKey>)> {
    let mut keys = BTreeMap::new();
    for (name, l) in &model.linears {
        let weights = CtWeightArgs::of(&l.weight)
            .map_err(|e| export_error(out, format!("`{name}`: {e} (compressed-tensors format)")))?;
        keys.insert(
            name.clone(),
            GroupKey {
                weights,
                input: InputKind::of(l.activation),
            },
        );
    }
    let mut groups: BTreeMap<GroupKey, Vec<String>> = BTreeMap::new();
    for (name, key) in &keys {
        groups.entry(*key).or_default().push(name.clone());
    }
    let ignore: Vec<&String> = linears.iter().filter(|n| !keys.contains_key(*n)).collect();
    let one_group = groups.len() == 1;
    let mut config_groups = serde_json::Map::new();
    for (i, (key, names)) in groups.iter().enumerate() {
        // One kind for every quantized Linear: the class target with the rest ignored, as
        // llm-compressor writes it; several kinds: each group names its layers.
        let targets = if one_group {
            vec!["Linear".to_string()]
        } else {
            names.clone()
        };
        config_groups.insert(format!("group_{i}"), key.scheme(targets));
    }
    let formats: Vec<CtFormat> = groups.keys().map(GroupKey::format).collect();
    let format = match formats.first() {
        Some(f) if formats.iter().all(|g| g == f) => f.name(),
        _ => "mixed-precision",
    };
    let config = json!({
        "quant_method": "compressed-tensors",
        "format": format,
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": null,
        "sparsity_config": {},
        "transform_config": {},
        "global_compression_ratio": null,
        "version": "0.20.1",
    });
    Ok((config, keys))
}

/// Writes the model in the compressed-tensors format.
pub fn write_compressed_tensors(
    model: &QuantizedModel,
    src: &mut Source,
    out: &Path,
) -> Result<ExportReport> {
    if model.linears.is_empty() {
        return Err(export_error(out, "no quantized weights to write"));
    }
    let specs = tensor_specs(src.config)?;
    let linears: Vec<String> = specs
        .iter()
        .filter(|(n, s)| s.len() == 2 && (n.ends_with("_proj.weight") || n == "lm_head.weight"))
        .filter_map(|(n, _)| n.strip_suffix(".weight").map(str::to_string))
        .collect();
    let mut linears = linears;
    // A tied head is no tensor of the file but still a Linear of the model.
    if !linears.iter().any(|n| n == "lm_head") {
        linears.push("lm_head".into());
    }
    let (qconfig, keys) = quantization_config(model, &linears, out)?;
    let (config, tokenizer) = (src.config, src.tokenizer);
    let weights = &mut *src.weights;
    crate::write_dir_atomically(out, |dir| {
        write_model_safetensors(model, weights, specs, dir, Vec::new(), |name, w| {
            let stem = name.strip_suffix(".weight").unwrap_or(name);
            let key = keys[stem];
            let groups = key
                .weights
                .groups(w.cols)
                .map_err(|e| export_error(dir, format!("`{stem}`: {e}")))?;
            let mut tensors = vec![(
                format!("{stem}.weight_scale"),
                OwnedTensor::f32(vec![w.rows, groups], &scales(w)),
            )];
            match key.format() {
                CtFormat::IntQuantized => tensors.push((
                    format!("{stem}.weight"),
                    OwnedTensor::i8(vec![w.rows, w.cols], &w.values),
                )),
                CtFormat::PackQuantized => {
                    let bits = key.weights.bits;
                    tensors.push((
                        format!("{stem}.weight_packed"),
                        OwnedTensor::i32(
                            vec![w.rows, packed_cols(w.cols, bits)],
                            pack(&w.values, w.rows, w.cols, bits),
                        ),
                    ));
                    tensors.push((
                        format!("{stem}.weight_shape"),
                        OwnedTensor::i64(vec![2], [w.rows as i64, w.cols as i64]),
                    ));
                }
            }
            if let Some(ActivationQuant::StaticPerTensor { scale, zero_point }) =
                model.linears[stem].activation
            {
                let zero_point = i8::try_from(zero_point).map_err(|_| {
                    export_error(
                        dir,
                        format!("`{stem}`: input zero point {zero_point} is not an int8"),
                    )
                })?;
                tensors.push((
                    format!("{stem}.input_scale"),
                    OwnedTensor::f32(vec![1], &[scale]),
                ));
                tensors.push((
                    format!("{stem}.input_zero_point"),
                    OwnedTensor::i8(vec![1], &[zero_point]),
                ));
            }
            Ok(tensors)
        })?;
        let mut cfg = config.to_hf_json()?;
        cfg["quantization_config"] = qconfig;
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
