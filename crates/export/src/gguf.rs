//! GGUF (v3) with Q8_0, Q4_0 and Q4_1 tensors, the metadata (tokenizer included) copied from the
//! source GGUF. A quantized weight goes onto the GGML block type whose grid holds it exactly
//! (`formats::ggml_exact`); anything else is re-rounded from the dequantized weight onto Q8_0
//! (more than 4 bits) or Q4_1, and the report says so. Float tensors are written as F32. The
//! header is laid out from the tensor sizes first, then each tensor is produced and written in
//! turn, so one float tensor at a time is in memory. After writing, the file is read back and
//! the largest deviation from the algorithm's weights is reported.

use std::io::Write;
use std::path::Path;

use gstick_models::gguf::{Gguf, MetaValue};
use gstick_models::llama::{gguf_name, hf_row, tensor_specs, LlamaConfig};
use gstick_quant::formats::{ggml_exact, q4_1, q8_0};
use gstick_quant::{GgmlType, QuantizedModel, QuantizedWeight};

use crate::tensors::FloatReader;
use crate::{export_error, ExportReport, Result, Source};

const BLOCK: usize = 32;

/// One tensor of the file: GGUF name, GGUF dims (fastest first), type and where its bytes come
/// from.
struct Planned<'m> {
    name: String,
    dims: Vec<usize>,
    ty: GgmlType,
    data: Data<'m>,
}

enum Data<'m> {
    /// A quantized weight, encoded exactly or re-rounded onto `ty`.
    Quantized {
        weight: &'m QuantizedWeight,
        exact: bool,
        order: Vec<usize>,
    },
    /// A float tensor of the model (by Hugging Face name), rows in `order`.
    Float {
        name: String,
        shape: Vec<usize>,
        order: Vec<usize>,
    },
    /// A tensor the model does not use (rope_freqs, ...), copied as it is.
    Copied(String),
}

/// The row order of a tensor in the file: llama.cpp's interleaved layout for permuted q/k
/// projections, otherwise as they are.
fn row_order(config: &LlamaConfig, name: &str, rows: usize, permuted: bool) -> Vec<usize> {
    match config.rope_heads(name) {
        Some(heads) if permuted => (0..rows).map(|g| hf_row(g, rows, heads)).collect(),
        _ => (0..rows).collect(),
    }
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

/// Plans every tensor of the file, with the notes on re-rounded weights.
fn plan<'m>(
    model: &'m QuantizedModel,
    source: &Gguf,
    config: &LlamaConfig,
    permuted: bool,
    out: &Path,
) -> Result<(Vec<Planned<'m>>, Vec<String>)> {
    let mut planned = Vec::new();
    let mut notes = Vec::new();
    let mut written = std::collections::BTreeSet::new();
    for (name, shape) in tensor_specs(config)? {
        let gname = gguf_name(&name)
            .ok_or_else(|| export_error(out, format!("no GGUF name for `{name}`")))?;
        let dims: Vec<usize> = shape.iter().rev().copied().collect();
        let rows = shape.first().copied().unwrap_or(1);
        let order = row_order(config, &name, rows, permuted);
        let (ty, data) = match model.weight_for(&name) {
            Some(w) => match ggml_exact::exact_type(w) {
                Some(ty) => (
                    ty,
                    Data::Quantized {
                        weight: w,
                        exact: true,
                        order,
                    },
                ),
                None => {
                    if !w.cols.is_multiple_of(BLOCK) {
                        return Err(export_error(
                            out,
                            format!("`{name}`: {} inputs are not whole 32-value blocks", w.cols),
                        ));
                    }
                    let ty = if w.scheme.bits > 4 {
                        GgmlType::Q8_0
                    } else {
                        GgmlType::Q4_1
                    };
                    notes.push(format!(
                        "{name}: {}-bit {:?}{} has no exact {ty:?} grid; re-rounded",
                        w.scheme.bits,
                        w.scheme.granularity,
                        if w.scheme.symmetric {
                            ""
                        } else {
                            " asymmetric"
                        }
                    ));
                    (
                        ty,
                        Data::Quantized {
                            weight: w,
                            exact: false,
                            order,
                        },
                    )
                }
            },
            None => (GgmlType::F32, Data::Float { name, shape, order }),
        };
        written.insert(gname.clone());
        planned.push(Planned {
            name: gname,
            dims,
            ty,
            data,
        });
    }
    for info in &source.tensors {
        if !written.contains(&info.name) {
            planned.push(Planned {
                name: info.name.clone(),
                dims: info.dims.clone(),
                ty: info.ty,
                data: Data::Copied(info.name.clone()),
            });
        }
    }
    Ok((planned, notes))
}

/// Writes the bytes of one planned tensor to `w`; returns how many.
fn write_tensor(
    t: &Planned,
    floats: &mut FloatReader,
    source: &Gguf,
    w: &mut impl Write,
    path: &Path,
) -> Result<usize> {
    let io = |e: std::io::Error| export_error(path, e.to_string());
    let bytes = match &t.data {
        Data::Quantized {
            weight,
            exact: true,
            order,
        } => {
            ggml_exact::encode(weight, order)
                .ok_or_else(|| export_error(path, "exact grid vanished"))?
                .1
        }
        Data::Quantized {
            weight,
            exact: false,
            order,
        } => {
            let values = weight.dequantize();
            let mut out = Vec::new();
            for &r in order {
                let row = &values[r * weight.cols..(r + 1) * weight.cols];
                match t.ty {
                    GgmlType::Q8_0 => q8_0::quantize(row, &mut out),
                    _ => q4_1::quantize(row, &mut out),
                }
            }
            out
        }
        Data::Float { name, shape, order } => {
            // Row by row: the largest float tensor (the embedding) is never copied to bytes.
            let values = floats.read(name, shape)?;
            let cols = values.len() / order.len().max(1);
            let mut row = Vec::with_capacity(4 * cols);
            for &r in order {
                row.clear();
                row.extend(
                    values[r * cols..(r + 1) * cols]
                        .iter()
                        .flat_map(|v| v.to_le_bytes()),
                );
                w.write_all(&row).map_err(io)?;
            }
            return Ok(4 * values.len());
        }
        Data::Copied(name) => source.tensor_bytes(name)?.to_vec(),
    };
    w.write_all(&bytes).map_err(io)?;
    Ok(bytes.len())
}

/// Writes `model.gguf` in directory `out`. The source must be a GGUF file (its metadata and
/// tokenizer are copied).
pub fn write_gguf(model: &QuantizedModel, src: &mut Source, out: &Path) -> Result<ExportReport> {
    let source = src.gguf.ok_or_else(|| {
        export_error(
            out,
            "a GGUF export copies the tokenizer metadata from a GGUF source; this source is a Hugging Face directory",
        )
    })?;
    let config = src.config;
    let permuted = gstick_models::llama::permutes_qk(source)?;
    let (planned, notes) = plan(model, source, config, permuted, out)?;
    let mut counts = std::collections::BTreeMap::<&'static str, usize>::new();
    for t in &planned {
        if !matches!(t.data, Data::Copied(_)) {
            *counts.entry(t.ty.name()).or_default() += 1;
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
    head.extend_from_slice(&(planned.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in &metadata {
        write_string(&mut head, k);
        head.extend_from_slice(&meta_type(v).to_le_bytes());
        write_value(&mut head, v);
    }
    let mut sizes = Vec::with_capacity(planned.len());
    let mut offset = 0usize;
    for t in &planned {
        let size =
            t.ty.bytes_for(t.dims.iter().product())
                .map_err(|e| export_error(out, format!("`{}`: {e}", t.name)))?;
        sizes.push(size);
        write_string(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        head.extend_from_slice(&t.ty.id().to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + size).div_ceil(alignment) * alignment;
    }
    head.resize(head.len().div_ceil(alignment) * alignment, 0);

    let mut floats = FloatReader {
        model,
        weights: &mut *src.weights,
        error: None,
    };
    crate::write_dir_atomically(out, |dir| {
        let path = dir.join("model.gguf");
        let file = std::fs::File::create(&path)
            .map_err(|e| export_error(&path, format!("cannot create: {e}")))?;
        let mut w = std::io::BufWriter::new(file);
        let io = |e: std::io::Error| export_error(&path, e.to_string());
        w.write_all(&head).map_err(io)?;
        for (t, &size) in planned.iter().zip(&sizes) {
            let written = write_tensor(t, &mut floats, source, &mut w, &path)?;
            if written != size {
                return Err(export_error(
                    &path,
                    format!("`{}`: {written} bytes written, {size} planned", t.name),
                ));
            }
            let pad = size.div_ceil(alignment) * alignment - size;
            w.write_all(&vec![0u8; pad]).map_err(io)?;
        }
        w.flush().map_err(io)?;
        Ok(ExportReport {
            files: vec!["model.gguf".into()],
            notes,
            max_abs_deviation: check_back(&path, model, config, permuted)?,
        })
    })
}

/// Reads the written file and returns the largest |w_file − w_ours| over the quantized weights.
fn check_back(
    path: &Path,
    model: &QuantizedModel,
    config: &LlamaConfig,
    permuted: bool,
) -> Result<f64> {
    let g = Gguf::open(path)?;
    let mut worst = 0f64;
    for (stem, l) in &model.linears {
        let w = &l.weight;
        let name = format!("{stem}.weight");
        let gname = gguf_name(&name)
            .ok_or_else(|| export_error(path, format!("no GGUF name for `{name}`")))?;
        let file: Vec<f32> = g.dequantize(&gname)?.flatten_all()?.to_vec1()?;
        let ours = w.dequantize();
        for (gr, r) in row_order(config, &name, w.rows, permuted)
            .into_iter()
            .enumerate()
        {
            for c in 0..w.cols {
                let d = (file[gr * w.cols + c] as f64 - ours[r * w.cols + c] as f64).abs();
                worst = worst.max(d);
            }
        }
    }
    Ok(worst)
}
