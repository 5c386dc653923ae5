//! Reading a compressed-tensors directory (`quant_method: "compressed-tensors"`, status
//! `compressed`, as llm-compressor and Golden Stick write it) onto the kernels: symmetric integer
//! weights per channel or group (`int-quantized` int8, `pack-quantized` 2 to 8 bits), inputs in
//! float, int8 per token at run time, or int8 per tensor with stored scale and zero point.
//! Anything else the format can say (float8 or float4 types, asymmetric weights, reordered
//! groups, output or KV-cache quantization, sparsity, transforms) is refused, naming it: loading
//! such a model as something else would hand over a different model.

use std::path::Path;

use candle_core::Tensor;
use gstick_models::hf::HfCheckpoint;
use gstick_models::llama::{LlamaConfig, WeightSource};
use gstick_quant::formats::compressed_tensors::{
    packed_cols, unpack, weight_from_parts, CtFormat, CtWeightArgs,
};
use gstick_quant::kernels::PackedWeight;
use gstick_quant::{ActivationQuant, QuantizedWeight};
use safetensors::Dtype;
use serde_json::Value;

use crate::a8w8_linear::A8W8Linear;
use crate::install::DeployWeight;
use crate::load::PackedReader;
use crate::{load_error, Result};

/// How the input of a group's Linears is quantized.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Input {
    Float,
    DynamicPerToken,
    /// Scale and zero point are tensors of each Linear; `symmetric` ones have no zero point.
    StaticPerTensor {
        symmetric: bool,
    },
}

/// One config group: which Linears, how their weights are stored, how their input is quantized.
struct Group {
    name: String,
    targets: Vec<Target>,
    format: CtFormat,
    weights: CtWeightArgs,
    input: Input,
}

/// A target or ignore entry: a module name, `re:` a regex matched at the name's start, or the
/// class `Linear`.
enum Target {
    Name(String),
    Regex(regex::Regex),
    Linear,
    /// Another class name: matches none of the Linears.
    OtherClass,
}

impl Target {
    fn parse(s: &str) -> std::result::Result<Target, String> {
        if let Some(re) = s.strip_prefix("re:") {
            return regex::Regex::new(&format!("^(?:{re})"))
                .map(Target::Regex)
                .map_err(|e| format!("target `{s}`: {e}"));
        }
        Ok(match s {
            "Linear" => Target::Linear,
            _ if s.contains('.') || s == "lm_head" => Target::Name(s.to_string()),
            _ if s.starts_with(|c: char| c.is_ascii_uppercase()) => Target::OtherClass,
            _ => Target::Name(s.to_string()),
        })
    }

    fn matches(&self, linear: &str) -> bool {
        match self {
            Target::Name(n) => n == linear,
            Target::Regex(r) => r.is_match(linear),
            Target::Linear => true,
            Target::OtherClass => false,
        }
    }
}

fn targets(v: &Value, field: &str) -> std::result::Result<Vec<Target>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .ok_or_else(|| format!("`{field}` holds {t}, strings expected"))
                    .and_then(Target::parse)
            })
            .collect(),
        other => Err(format!("`{field}` is {other}, a list expected")),
    }
}

/// `v` is absent, null, or an empty object or list.
fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn int_args(args: &Value, what: &str) -> std::result::Result<u32, String> {
    if args["type"].as_str() != Some("int") {
        return Err(format!(
            "{what} of type {} are not supported (int)",
            args["type"]
        ));
    }
    match args["num_bits"].as_u64() {
        Some(b @ 2..=8) => Ok(b as u32),
        _ => Err(format!(
            "{what} of {} bits are not supported (2 to 8)",
            args["num_bits"]
        )),
    }
}

fn weight_args(w: &Value) -> std::result::Result<CtWeightArgs, String> {
    let bits = int_args(w, "weights")?;
    if w["symmetric"].as_bool() != Some(true) {
        return Err("asymmetric weights (zero points) are not supported yet".into());
    }
    if w["dynamic"].as_bool() == Some(true) {
        return Err("dynamic weight quantization is not supported".into());
    }
    if w["actorder"].as_str() == Some("group") {
        return Err(
            "weights with actorder \"group\" (reordered groups, g_idx) are not supported yet"
                .into(),
        );
    }
    let group = match w["strategy"].as_str() {
        Some("channel") => None,
        Some("group") => match w["group_size"].as_u64() {
            Some(g) if g > 0 => Some(g as usize),
            _ => return Err(format!("group_size {} is not a size", w["group_size"])),
        },
        other => {
            return Err(format!(
                "weight strategy {other:?} is not supported (channel, group)"
            ))
        }
    };
    Ok(CtWeightArgs { bits, group })
}

fn input_args(a: &Value) -> std::result::Result<Input, String> {
    if a.is_null() {
        return Ok(Input::Float);
    }
    if int_args(a, "input activations")? != 8 {
        return Err("input activations of other than 8 bits are not supported".into());
    }
    let symmetric = a["symmetric"].as_bool().unwrap_or(true);
    match (a["dynamic"].as_bool(), a["strategy"].as_str()) {
        (Some(true), Some("token")) if symmetric => Ok(Input::DynamicPerToken),
        (Some(false) | None, Some("tensor")) => Ok(Input::StaticPerTensor { symmetric }),
        (d, s) => Err(format!(
            "input activations with strategy {s:?}, dynamic {d:?}, symmetric {symmetric} are not supported (dynamic per token symmetric, static per tensor)"
        )),
    }
}

pub(crate) struct CtReader {
    ck: HfCheckpoint,
    groups: Vec<Group>,
    ignore: Vec<Target>,
}

impl CtReader {
    /// Checks the `quantization_config` and reads its config groups.
    pub(crate) fn open(ck: HfCheckpoint) -> Result<Self> {
        let dir = ck.dir().to_path_buf();
        let bad = |m: String| load_error(&dir, format!("compressed-tensors: {m}"));
        let qc = ck.config["quantization_config"].clone();
        if qc["quant_method"].as_str() != Some("compressed-tensors") {
            return Err(bad(
                "config.json has no compressed-tensors quantization_config".into(),
            ));
        }
        match qc["quantization_status"].as_str() {
            Some("compressed") => {}
            other => {
                return Err(bad(format!(
                    "quantization_status {other:?} is not supported (compressed)"
                )))
            }
        }
        for field in ["kv_cache_scheme", "sparsity_config", "transform_config"] {
            if !empty(&qc[field]) {
                return Err(bad(format!("`{field}` is not supported yet")));
            }
        }
        let global_format = qc["format"].as_str();
        let Some(config_groups) = qc["config_groups"].as_object() else {
            return Err(bad("`config_groups` is missing".into()));
        };
        let mut groups = Vec::new();
        for (name, g) in config_groups {
            let in_group = |m: String| bad(format!("config group `{name}`: {m}"));
            if !g["output_activations"].is_null() {
                return Err(in_group(
                    "output activation quantization is not supported".into(),
                ));
            }
            let format_name = g["format"].as_str().or(global_format).unwrap_or("");
            let format = CtFormat::from_name(format_name).ok_or_else(|| {
                in_group(format!(
                    "format `{format_name}` is not supported (int-quantized, pack-quantized)"
                ))
            })?;
            let weights = weight_args(&g["weights"]).map_err(in_group)?;
            if format == CtFormat::IntQuantized && weights.bits != 8 {
                return Err(in_group(format!(
                    "int-quantized weights of {} bits",
                    weights.bits
                )));
            }
            groups.push(Group {
                name: name.clone(),
                targets: targets(&g["targets"], "targets").map_err(in_group)?,
                format,
                weights,
                input: input_args(&g["input_activations"]).map_err(in_group)?,
            });
        }
        let ignore = targets(&qc["ignore"], "ignore").map_err(bad)?;
        Ok(CtReader { ck, groups, ignore })
    }

    /// The group of Linear `stem`, if it is quantized.
    fn group_of(&self, stem: &str) -> Option<&Group> {
        if self.ignore.iter().any(|t| t.matches(stem)) {
            return None;
        }
        self.groups
            .iter()
            .find(|g| g.targets.iter().any(|t| t.matches(stem)))
    }

    fn tensor(&self, name: &str) -> std::result::Result<(Dtype, Vec<usize>, Vec<u8>), String> {
        self.ck.raw(name).map_err(|e| e.to_string())
    }

    /// A float tensor of any float dtype, as f32.
    fn floats(&self, name: &str, shape: &[usize]) -> std::result::Result<Vec<f32>, String> {
        let (dtype, s, data) = self.tensor(name)?;
        if s.iter().product::<usize>() != shape.iter().product::<usize>() {
            return Err(format!("`{name}` has shape {s:?}, {shape:?} expected"));
        }
        Ok(match dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => return Err(format!("`{name}` is {other:?}, a float type expected")),
        })
    }

    /// One integer of an integer tensor of one value.
    fn integer(&self, name: &str) -> std::result::Result<i64, String> {
        let (dtype, s, data) = self.tensor(name)?;
        if s.iter().product::<usize>() != 1 {
            return Err(format!("`{name}` has shape {s:?}, one value expected"));
        }
        Ok(match dtype {
            Dtype::I8 => data[0] as i8 as i64,
            Dtype::I32 => i32::from_le_bytes([data[0], data[1], data[2], data[3]]) as i64,
            Dtype::I64 => i64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8])),
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                let v = self.floats(name, &[1])?[0];
                if v.fract() != 0.0 {
                    return Err(format!("`{name}` = {v} is not an integer"));
                }
                v as i64
            }
            other => return Err(format!("`{name}` is {other:?}, an integer expected")),
        })
    }

    /// The weight of Linear `stem` from its group's tensors, every dtype and shape checked.
    fn weight(
        &self,
        stem: &str,
        g: &Group,
        rows: usize,
        cols: usize,
    ) -> std::result::Result<QuantizedWeight, String> {
        if self.ck.has(&format!("{stem}.weight_g_idx")) {
            return Err("a reordered weight (weight_g_idx) is not supported yet".into());
        }
        let bits = g.weights.bits;
        let values = match g.format {
            CtFormat::IntQuantized => {
                let (dtype, s, data) = self.tensor(&format!("{stem}.weight"))?;
                if dtype != Dtype::I8 || s != [rows, cols] {
                    return Err(format!(
                        "weight is {dtype:?} {s:?}, I8 [{rows}, {cols}] expected"
                    ));
                }
                data.into_iter().map(|b| b as i8).collect()
            }
            CtFormat::PackQuantized => {
                let shape_name = format!("{stem}.weight_shape");
                let (dtype, s, data) = self.tensor(&shape_name)?;
                let dims: Vec<i64> = match dtype {
                    Dtype::I64 => data
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect(),
                    Dtype::I32 => data
                        .chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                        .collect(),
                    other => return Err(format!("weight_shape is {other:?}, an integer expected")),
                };
                if s != [2] || dims != [rows as i64, cols as i64] {
                    return Err(format!(
                        "weight_shape is {dims:?}, the configuration needs [{rows}, {cols}]"
                    ));
                }
                let want = [rows, packed_cols(cols, bits)];
                let (dtype, s, data) = self.tensor(&format!("{stem}.weight_packed"))?;
                if dtype != Dtype::I32 || s != want {
                    return Err(format!(
                        "weight_packed is {dtype:?} {s:?}, I32 {want:?} expected"
                    ));
                }
                let words: Vec<i32> = data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                unpack(&words, rows, cols, bits).map_err(|e| e.to_string())?
            }
        };
        let groups = g.weights.groups(cols).map_err(|e| e.to_string())?;
        let scales = self.floats(&format!("{stem}.weight_scale"), &[rows, groups])?;
        weight_from_parts(rows, cols, g.weights, values, &scales).map_err(|e| e.to_string())
    }

    /// The static input parameters of Linear `stem`.
    fn static_input(
        &self,
        stem: &str,
        symmetric: bool,
    ) -> std::result::Result<ActivationQuant, String> {
        let scale = self.floats(&format!("{stem}.input_scale"), &[1])?[0];
        if !(scale.is_normal() && scale > 0.0) {
            return Err(format!("input_scale {scale} is not a positive number"));
        }
        let zero_point = if symmetric {
            0
        } else {
            self.integer(&format!("{stem}.input_zero_point"))?
        };
        if !(-128..=127).contains(&zero_point) {
            return Err(format!("input_zero_point {zero_point} is not an int8"));
        }
        Ok(ActivationQuant::StaticPerTensor {
            scale,
            zero_point: zero_point as i32,
        })
    }
}

impl PackedReader for CtReader {
    fn config(&self) -> Result<LlamaConfig> {
        Ok(LlamaConfig::from_hf(&self.ck)?)
    }

    fn packed(&mut self, name: &str, shape: &[usize]) -> Result<Option<(DeployWeight, String)>> {
        let Some(stem) = name.strip_suffix(".weight") else {
            return Ok(None);
        };
        let (&[rows, cols], true) = (shape, stem.ends_with("_proj") || stem == "lm_head") else {
            return Ok(None);
        };
        let Some(g) = self.group_of(stem) else {
            return Ok(None);
        };
        let bad = |m: String| {
            load_error(
                self.ck.dir(),
                format!("`{stem}` (config group `{}`): {m}", g.name),
            )
        };
        let q = self.weight(stem, g, rows, cols).map_err(bad)?;
        let weight_label = crate::gptq::label(&q);
        let act = match g.input {
            Input::Float => {
                return Ok(Some((
                    DeployWeight::Packed(PackedWeight::from_quantized(&q)),
                    weight_label,
                )))
            }
            Input::DynamicPerToken => ActivationQuant::DynamicPerToken,
            Input::StaticPerTensor { symmetric } => {
                self.static_input(stem, symmetric).map_err(bad)?
            }
        };
        let w = A8W8Linear::weight_from(&q).map_err(bad)?;
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
}
