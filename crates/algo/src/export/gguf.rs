//! GGUF (v3) with Q8_0, Q4_0 and Q4_1 tensors, the metadata (tokenizer included) copied from the
//! source GGUF. A quantized weight is mapped onto a GGML block type where its grid fits exactly:
//! symmetric 8-bit → Q8_0 (x = d·q), symmetric ≤4-bit → Q4_0 (x = d·(u − 8)), asymmetric ≤4-bit
//! → Q4_1 (x = d·u + m, with m = −d·(zp + 8) rounded to f16), each when its groups are whole
//! 32-value blocks. Anything else is re-rounded from the dequantized weight onto Q8_0 (more than
//! 4 bits) or Q4_1, and the report says so. Float tensors are written as F32. After writing, the
//! file is read back and the largest deviation from the pipeline's weights is reported.

use std::io::Write;
use std::path::Path;

use gstick_models::gguf::{Gguf, MetaValue};
use gstick_models::llama::{gguf_name, LlamaConfig};
use gstick_nn::{named_params, Network};
use gstick_quant::{GgmlType, Granularity, QuantizedWeight};

use super::{export_error, ExportReport};
use crate::pipeline::QuantizedLm;
use crate::Result;

const BLOCK: usize = 32;

/// One tensor ready to be written: GGUF name, GGUF dims (fastest first), type and bytes.
struct GgufTensor {
    name: String,
    dims: Vec<usize>,
    ty: GgmlType,
    data: Vec<u8>,
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Whether every group of `q` is a whole number of 32-value blocks.
fn blocks_fit(q: &QuantizedWeight) -> bool {
    q.cols.is_multiple_of(BLOCK)
        && match q.scheme.granularity {
            Granularity::PerGroup(g) => g.is_multiple_of(BLOCK),
            Granularity::PerChannel => true,
            Granularity::PerTensor => true,
        }
}

/// Encodes the rows of `q` (in `order`) on its own grid, or `None` when it does not fit one.
fn encode_exact(q: &QuantizedWeight, order: &[usize]) -> Option<(GgmlType, Vec<u8>)> {
    if !blocks_fit(q) {
        return None;
    }
    let symmetric = q.params.iter().all(|p| p.zero_point == 0.0);
    let ty = match (q.scheme.bits, symmetric) {
        (8, true) => GgmlType::Q8_0,
        (b, true) if b <= 4 => GgmlType::Q4_0,
        (b, false) if b <= 4 => GgmlType::Q4_1,
        _ => return None,
    };
    let mut out = Vec::with_capacity(q.rows * q.cols / BLOCK * ty.block_bytes());
    for &r in order {
        for b in 0..q.cols / BLOCK {
            let p = q.params_at(r, b * BLOCK);
            let vals = &q.values[r * q.cols + b * BLOCK..r * q.cols + (b + 1) * BLOCK];
            out.extend_from_slice(&f16_bytes(p.scale as f32));
            match ty {
                GgmlType::Q8_0 => out.extend(vals.iter().map(|&v| v as u8)),
                _ => {
                    if ty == GgmlType::Q4_1 {
                        out.extend_from_slice(&f16_bytes((-p.scale * (p.zero_point + 8.0)) as f32));
                    }
                    let u = |k: usize| (vals[k] as i32 + 8) as u8 & 0x0F;
                    out.extend((0..BLOCK / 2).map(|j| u(j) | (u(j + BLOCK / 2) << 4)));
                }
            }
        }
    }
    Some((ty, out))
}

/// llama.cpp's reference quantization of float rows to Q8_0 or Q4_1.
fn encode_reround(w: &[f32], cols: usize, order: &[usize], ty: GgmlType) -> Vec<u8> {
    let mut out = Vec::new();
    for &r in order {
        for block in w[r * cols..(r + 1) * cols].chunks(BLOCK) {
            if ty == GgmlType::Q8_0 {
                let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16_bytes(d));
                out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
            } else {
                let (lo, hi) = block
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                        (a.min(v), b.max(v))
                    });
                let d = (hi - lo) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16_bytes(d));
                out.extend_from_slice(&f16_bytes(lo));
                let u = |k: usize| (((block[k] - lo) * id + 0.5) as u8).min(15);
                out.extend((0..BLOCK / 2).map(|j| u(j) | (u(j + BLOCK / 2) << 4)));
            }
        }
    }
    out
}

/// Row order of a q/k projection in llama.cpp's interleaved-RoPE layout: GGUF row
/// (head, i, t) holds our row (head, t, i).
fn permuted_rows(rows: usize, heads: usize) -> Vec<usize> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    (0..rows)
        .map(|g| {
            let (h, rest) = (g / head_dim, g % head_dim);
            let (i, t) = (rest / 2, rest % 2);
            h * head_dim + t * half + i
        })
        .collect()
}

fn write_string(w: &mut Vec<u8>, s: &str) {
    w.extend_from_slice(&(s.len() as u64).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

fn meta_type(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn write_value(w: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => w.push(*x),
        MetaValue::I8(x) => w.push(*x as u8),
        MetaValue::U16(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => w.push(*x as u8),
        MetaValue::String(s) => write_string(w, s),
        MetaValue::Array(items) => {
            let ty = items.first().map_or(0, meta_type);
            w.extend_from_slice(&ty.to_le_bytes());
            w.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                write_value(w, it);
            }
        }
        MetaValue::U64(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => w.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => w.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Writes `model.gguf` in directory `out`.
pub fn write_gguf(
    source: &Gguf,
    float: &Network,
    config: &LlamaConfig,
    q: &QuantizedLm,
    out: &Path,
) -> Result<ExportReport> {
    let permuted = source.get("general.architecture").and_then(|v| v.as_str()) == Some("llama");
    let mut report = ExportReport {
        files: vec!["model.gguf".into()],
        ..ExportReport::default()
    };
    let mut tensors = Vec::new();
    let mut counts = std::collections::BTreeMap::<&'static str, usize>::new();
    let mut written = std::collections::BTreeSet::new();
    for (name, p) in named_params(float) {
        if config.tie_embeddings && name == "lm_head.weight" {
            continue;
        }
        let gname = gguf_name(&name)
            .ok_or_else(|| export_error(out, format!("no GGUF name for `{name}`")))?;
        let heads = if name.contains("q_proj") {
            Some(config.heads)
        } else if name.contains("k_proj") {
            Some(config.kv_heads)
        } else {
            None
        };
        let stem = name.strip_suffix(".weight").unwrap_or(&name);
        let t = q.float_overrides.get(&name).unwrap_or(p.tensor());
        let dims: Vec<usize> = t.dims().iter().rev().copied().collect();
        let rows = t.dims().first().copied().unwrap_or(1);
        let order: Vec<usize> = match heads {
            Some(h) if permuted => permuted_rows(rows, h),
            _ => (0..rows).collect(),
        };
        let (ty, data) = match (q.weights.get(stem), name.ends_with(".weight")) {
            (Some(w), true) => match encode_exact(w, &order) {
                Some((ty, data)) => (ty, data),
                None => {
                    let ty = if w.scheme.bits > 4 {
                        GgmlType::Q8_0
                    } else {
                        GgmlType::Q4_1
                    };
                    if !w.cols.is_multiple_of(BLOCK) {
                        return Err(export_error(
                            out,
                            format!("`{name}`: {} inputs are not whole 32-value blocks", w.cols),
                        ));
                    }
                    report.notes.push(format!(
                        "{name}: {}-bit {:?}{} has no exact {ty:?} grid; re-rounded",
                        w.scheme.bits,
                        w.scheme.granularity,
                        if w.scheme.symmetric {
                            ""
                        } else {
                            " asymmetric"
                        }
                    ));
                    (ty, encode_reround(&w.dequantize(), w.cols, &order, ty))
                }
            },
            _ => {
                let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
                let cols = values.len() / rows.max(1);
                let data = order
                    .iter()
                    .flat_map(|&r| values[r * cols..(r + 1) * cols].iter())
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                (GgmlType::F32, data)
            }
        };
        *counts.entry(ggml_name(ty)).or_default() += 1;
        written.insert(gname.clone());
        tensors.push(GgufTensor {
            name: gname,
            dims,
            ty,
            data,
        });
    }
    // Tensors the model does not use (rope_freqs, ...) are copied as they are.
    for info in &source.tensors {
        if !written.contains(&info.name) {
            tensors.push(GgufTensor {
                name: info.name.clone(),
                dims: info.dims.clone(),
                ty: info.ty,
                data: source.tensor_bytes(&info.name)?.to_vec(),
            });
        }
    }

    let mut metadata = source.metadata.clone();
    let file_type = match (counts.get("Q8_0"), counts.get("Q4_0"), counts.get("Q4_1")) {
        (_, Some(_), None) => 2,
        (_, None, Some(_)) => 3,
        (Some(_), None, None) => 7,
        _ => 0,
    };
    metadata.insert("general.file_type".into(), MetaValue::U32(file_type));
    metadata.insert(
        "general.quantized_by".into(),
        MetaValue::String("Golden Stick".into()),
    );
    let alignment = metadata
        .get("general.alignment")
        .and_then(|v| v.as_u64())
        .unwrap_or(32) as usize;

    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in &metadata {
        write_string(&mut head, k);
        head.extend_from_slice(&meta_type(v).to_le_bytes());
        write_value(&mut head, v);
    }
    let mut offset = 0usize;
    for t in &tensors {
        write_string(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        head.extend_from_slice(&t.ty.id().to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + t.data.len()).div_ceil(alignment) * alignment;
    }
    head.resize(head.len().div_ceil(alignment) * alignment, 0);

    let report = super::write_dir_atomically(out, |dir| {
        let path = dir.join("model.gguf");
        let file = std::fs::File::create(&path)
            .map_err(|e| export_error(&path, format!("cannot create: {e}")))?;
        let mut w = std::io::BufWriter::new(file);
        let io = |e: std::io::Error| export_error(&path, e.to_string());
        w.write_all(&head).map_err(io)?;
        for t in &tensors {
            w.write_all(&t.data).map_err(io)?;
            let pad = t.data.len().div_ceil(alignment) * alignment - t.data.len();
            w.write_all(&vec![0u8; pad]).map_err(io)?;
        }
        w.flush().map_err(io)?;
        report.max_abs_deviation = check_back(&path, q, config, permuted)?;
        Ok(report)
    })?;
    Ok(report)
}

fn ggml_name(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::Q8_0 => "Q8_0",
        GgmlType::Q4_0 => "Q4_0",
        GgmlType::Q4_1 => "Q4_1",
        _ => "other",
    }
}

/// Reads the written file and returns the largest |w_file − w_ours| over the quantized weights.
fn check_back(path: &Path, q: &QuantizedLm, config: &LlamaConfig, permuted: bool) -> Result<f64> {
    let g = Gguf::open(path)?;
    let mut worst = 0f64;
    for (stem, w) in &q.weights {
        let name = format!("{stem}.weight");
        let gname = gguf_name(&name)
            .ok_or_else(|| export_error(path, format!("no GGUF name for `{name}`")))?;
        let file: Vec<f32> = g.dequantize(&gname)?.flatten_all()?.to_vec1()?;
        let ours = w.dequantize();
        let heads = if name.contains("q_proj") {
            Some(config.heads)
        } else if name.contains("k_proj") {
            Some(config.kv_heads)
        } else {
            None
        };
        let order: Vec<usize> = match heads {
            Some(h) if permuted => permuted_rows(w.rows, h),
            _ => (0..w.rows).collect(),
        };
        for (gr, &r) in order.iter().enumerate() {
            for c in 0..w.cols {
                let d = (file[gr * w.cols + c] as f64 - ours[r * w.cols + c] as f64).abs();
                worst = worst.max(d);
            }
        }
    }
    Ok(worst)
}
