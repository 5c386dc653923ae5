//! The Hugging Face GPTQ format (`checkpoint_format: "gptq"`, as AutoGPTQ, GPTQModel,
//! transformers and vLLM load it). For a Linear `L` with `bits` in {2, 4, 8}:
//! - `L.qweight` int32 `[in·bits/32, out]`: unsigned values q + 2^(bits−1), packed along the input
//!   axis, input i in word i / (32/bits) at bit (i mod 32/bits)·bits;
//! - `L.qzeros` int32 `[groups, out·bits/32]`: unsigned zero points minus one (the format's
//!   historical offset), packed the same way along the output axis;
//! - `L.scales` f16 `[groups, out]`; `L.g_idx` int32 `[in]`: the group of each input column;
//! - w = scale·(q_u − zero_u).
//!
//! The column order is the original one (act-order in this toolkit uses static groups), so
//! `g_idx` is i / group_size and `desc_act` is false.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use gstick_models::hf::HfCheckpoint;
use gstick_models::llama::{build_llama, LlamaConfig, WeightSource};
use gstick_models::tokenizer::TextTokenizer;
use gstick_nn::{named_params, Network};
use gstick_quant::{Granularity, QParams, QuantizedWeight, WeightScheme};
use safetensors::Dtype;
use serde_json::json;

use super::{
    export_error, keep_quantized, save_safetensors, write_config_and_tokenizer, ExportReport,
    OwnedTensor,
};
use crate::pipeline::QuantizedLm;
use crate::Result;

/// The layout shared by every quantized Linear of a GPTQ checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Layout {
    bits: u32,
    /// Input columns per group (`in` for per-channel).
    group: Option<usize>,
    symmetric: bool,
}

fn layout_of(q: &QuantizedWeight) -> Layout {
    Layout {
        bits: q.scheme.bits,
        group: match q.scheme.granularity {
            Granularity::PerGroup(g) => Some(g),
            _ => None,
        },
        symmetric: q.scheme.symmetric,
    }
}

/// The packed tensors of one Linear.
fn pack(name: &str, q: &QuantizedWeight, dir: &Path) -> Result<[OwnedTensor; 4]> {
    let bits = q.scheme.bits;
    let per_word = (32 / bits) as usize;
    let bad = |m: String| export_error(dir, format!("`{name}`: {m}"));
    if !q.cols.is_multiple_of(per_word) || !q.rows.is_multiple_of(per_word) {
        return Err(bad(format!(
            "{}x{} does not pack {per_word} values per 32-bit word",
            q.rows, q.cols
        )));
    }
    let offset = 1i32 << (bits - 1);
    let max = (1i32 << bits) - 1;
    let group = match q.scheme.granularity {
        Granularity::PerGroup(g) => g,
        _ => q.cols,
    };
    let groups = q.cols / group;
    let mut qweight = vec![0u32; q.cols / per_word * q.rows];
    for o in 0..q.rows {
        for i in 0..q.cols {
            let u = (q.values[o * q.cols + i] as i32 + offset) as u32;
            qweight[(i / per_word) * q.rows + o] |= u << ((i % per_word) as u32 * bits);
        }
    }
    let mut qzeros = vec![0u32; groups * q.rows / per_word];
    let mut scales = vec![0f32; groups * q.rows];
    for o in 0..q.rows {
        for g in 0..groups {
            let p = q.params_at(o, g * group);
            let zero = p.zero_point as i32 + offset;
            if !(1..=max).contains(&zero) {
                return Err(bad(format!(
                    "zero point {} of row {o} falls outside what the GPTQ format stores",
                    p.zero_point
                )));
            }
            let stored = (zero - 1) as u32;
            qzeros[g * (q.rows / per_word) + o / per_word] |=
                stored << ((o % per_word) as u32 * bits);
            scales[g * q.rows + o] = p.scale as f32;
        }
    }
    let g_idx: Vec<i32> = (0..q.cols).map(|i| (i / group) as i32).collect();
    let as_i32 = |v: Vec<u32>| v.into_iter().map(|w| w as i32).collect::<Vec<_>>();
    Ok([
        OwnedTensor::i32(vec![q.cols / per_word, q.rows], &as_i32(qweight)),
        OwnedTensor::i32(vec![groups, q.rows / per_word], &as_i32(qzeros)),
        OwnedTensor::f16(vec![groups, q.rows], &scales),
        OwnedTensor::i32(vec![q.cols], &g_idx),
    ])
}

/// Writes the model in the GPTQ format. Every quantized Linear must share one bit width, group
/// size and symmetry (the format has one `quantization_config`).
pub fn write_gptq(
    float: &Network,
    config: &LlamaConfig,
    tokenizer: &TextTokenizer,
    q: &QuantizedLm,
    out: &Path,
) -> Result<ExportReport> {
    let mut layouts = q.weights.values().map(|w| layout_of(w));
    let Some(layout) = layouts.next() else {
        return Err(export_error(out, "no quantized weights to write"));
    };
    if layouts.any(|l| l != layout) {
        return Err(export_error(
            out,
            "the GPTQ format holds one bit width and group size for the whole model; this model mixes several (use --format gs)",
        ));
    }
    if ![2, 4, 8].contains(&layout.bits) {
        return Err(export_error(
            out,
            format!("the GPTQ format packs 2, 4 or 8 bits, not {}", layout.bits),
        ));
    }
    super::write_dir_atomically(out, |dir| {
        let mut tensors = BTreeMap::new();
        for (name, p) in named_params(float) {
            if config.tie_embeddings && name == "lm_head.weight" {
                continue;
            }
            let stem = name.strip_suffix(".weight").unwrap_or(&name);
            if let (Some(w), true) = (q.weights.get(stem), name.ends_with(".weight")) {
                let [qweight, qzeros, scales, g_idx] = pack(stem, w, dir)?;
                tensors.insert(format!("{stem}.qweight"), qweight);
                tensors.insert(format!("{stem}.qzeros"), qzeros);
                tensors.insert(format!("{stem}.scales"), scales);
                tensors.insert(format!("{stem}.g_idx"), g_idx);
            } else {
                let t = q.float_overrides.get(&name).unwrap_or(p.tensor());
                tensors.insert(name.clone(), OwnedTensor::from_tensor(t)?);
            }
        }
        save_safetensors(&tensors, &dir.join("model.safetensors"))?;
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

/// Reads one Linear back from the packed tensors.
fn unpack(
    ck: &HfCheckpoint,
    stem: &str,
    rows: usize,
    cols: usize,
    layout: Layout,
) -> Result<QuantizedWeight> {
    let dir = ck.dir();
    let bad = |m: String| export_error(dir, format!("`{stem}`: {m}"));
    let bits = layout.bits;
    let per_word = (32 / bits) as usize;
    let group = layout.group.unwrap_or(cols);
    if group == 0
        || !cols.is_multiple_of(group)
        || !cols.is_multiple_of(per_word)
        || !rows.is_multiple_of(per_word)
    {
        return Err(bad(format!(
            "{rows}x{cols} does not fit {bits}-bit groups of {group}"
        )));
    }
    let groups = cols / group;
    let read = |suffix: &str, dtype: Dtype, shape: [usize; 2]| -> Result<Vec<u8>> {
        let (d, s, data) = ck.raw(&format!("{stem}.{suffix}"))?;
        if d != dtype || s != shape {
            return Err(bad(format!(
                "{suffix} is {d:?} {s:?}, {dtype:?} {shape:?} expected"
            )));
        }
        Ok(data)
    };
    let qweight = super::le_words(
        &read("qweight", Dtype::I32, [cols / per_word, rows])?,
        u32::from_le_bytes,
    );
    let qzeros = super::le_words(
        &read("qzeros", Dtype::I32, [groups, rows / per_word])?,
        u32::from_le_bytes,
    );
    let scales: Vec<f64> = read("scales", Dtype::F16, [groups, rows])?
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
        .collect();
    let mask = (1u32 << bits) - 1;
    let offset = 1i32 << (bits - 1);
    let mut values = vec![0i8; rows * cols];
    for o in 0..rows {
        for i in 0..cols {
            let u = (qweight[(i / per_word) * rows + o] >> ((i % per_word) as u32 * bits)) & mask;
            values[o * cols + i] = (u as i32 - offset) as i8;
        }
    }
    let mut params = Vec::with_capacity(rows * groups);
    for o in 0..rows {
        for g in 0..groups {
            let z = ((qzeros[g * (rows / per_word) + o / per_word]
                >> ((o % per_word) as u32 * bits))
                & mask)
                + 1;
            let scale = scales[g * rows + o];
            if !scale.is_finite() || scale <= 0.0 {
                return Err(bad(format!("scale {scale} is not a positive number")));
            }
            params.push(QParams {
                scale,
                zero_point: (z as i32 - offset) as f64,
            });
        }
    }
    Ok(QuantizedWeight {
        rows,
        cols,
        scheme: WeightScheme {
            bits,
            granularity: layout
                .group
                .map_or(Granularity::PerChannel, Granularity::PerGroup),
            symmetric: layout.symmetric,
            narrow: false,
        },
        values,
        params,
    })
}

struct GptqSource {
    ck: HfCheckpoint,
    layout: Layout,
    quantized: BTreeMap<String, QuantizedWeight>,
}

impl WeightSource for GptqSource {
    fn weight(&mut self, name: &str, shape: &[usize]) -> gstick_models::Result<Tensor> {
        let stem = name.strip_suffix(".weight").unwrap_or(name);
        let packed = format!("{stem}.qweight");
        match (shape, self.ck.has(&packed)) {
            (&[rows, cols], true) => {
                let read = unpack(&self.ck, stem, rows, cols, self.layout);
                keep_quantized(self.ck.dir(), &mut self.quantized, stem, shape, read)
            }
            _ => self.ck.tensor(name, shape),
        }
    }
}

/// Loads a GPTQ-format directory (2, 4 or 8 bits, without act-order reordering) into the
/// model skeleton, its quantized Linears as `WeightQuantLinear` cells.
pub fn load_gptq(dir: &Path) -> Result<(Network, LlamaConfig)> {
    let ck = HfCheckpoint::open(dir)?;
    let config = LlamaConfig::from_hf(&ck)?;
    let qc = &ck.config["quantization_config"];
    if qc["quant_method"].as_str() != Some("gptq") {
        return Err(export_error(
            dir,
            "config.json has no GPTQ quantization_config",
        ));
    }
    let bits = qc["bits"].as_u64().unwrap_or(0) as u32;
    if ![2, 4, 8].contains(&bits) {
        return Err(export_error(
            dir,
            format!("{bits}-bit GPTQ checkpoints are not supported (2, 4, 8)"),
        ));
    }
    if qc["desc_act"].as_bool() == Some(true) {
        return Err(export_error(
            dir,
            "act-order (desc_act) checkpoints with reordered g_idx are not supported yet",
        ));
    }
    if qc["checkpoint_format"]
        .as_str()
        .is_some_and(|f| f != "gptq")
    {
        return Err(export_error(
            dir,
            "only checkpoint_format \"gptq\" is supported",
        ));
    }
    let group = qc["group_size"].as_i64().unwrap_or(-1);
    let layout = Layout {
        bits,
        group: (group > 0).then_some(group as usize),
        symmetric: qc["sym"].as_bool().unwrap_or(true),
    };
    let mut src = GptqSource {
        ck,
        layout,
        quantized: BTreeMap::new(),
    };
    let mut net = build_llama(&config, &mut src)?;
    crate::rtn::install_quantized(&mut net, src.quantized)?;
    Ok((net, config))
}
