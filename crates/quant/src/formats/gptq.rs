//! The Hugging Face GPTQ format (`checkpoint_format: "gptq"`, as AutoGPTQ, GPTQModel,
//! transformers and vLLM load it). For a Linear with `bits` in {2, 4, 8}:
//! - `qweight` int32 `[in·bits/32, out]`: unsigned values q + 2^(bits−1), packed along the input
//!   axis, input i in word i / (32/bits) at bit (i mod 32/bits)·bits;
//! - `qzeros` int32 `[groups, out·bits/32]`: unsigned zero points minus one (the format's
//!   historical offset), packed the same way along the output axis;
//! - `scales` f16 `[groups, out]`; `g_idx` int32 `[in]`: the group of each input column;
//! - w = scale·(q_u − zero_u).
//!
//! Columns are in their original order (act-order in this toolkit uses static groups), so
//! `g_idx` is i / group_size.

use super::FormatError;
use crate::scheme::{Granularity, QParams, QuantizedWeight, WeightScheme};

/// What the format's `quantization_config` says for every quantized Linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptqLayout {
    pub bits: u32,
    /// Input columns per group (`None`: per-channel).
    pub group: Option<usize>,
    pub symmetric: bool,
}

impl GptqLayout {
    pub fn of(q: &QuantizedWeight) -> GptqLayout {
        GptqLayout {
            bits: q.scheme.bits,
            group: match q.scheme.granularity {
                Granularity::PerGroup(g) => Some(g),
                _ => None,
            },
            symmetric: q.scheme.symmetric,
        }
    }

    /// The bit widths the format packs.
    pub fn supported_bits(bits: u32) -> bool {
        [2, 4, 8].contains(&bits)
    }

    fn per_word(&self) -> usize {
        (32 / self.bits) as usize
    }

    /// The shapes of `qweight`, `qzeros`, `scales` and `g_idx` for a `rows` x `cols` weight,
    /// or an error when the weight does not pack.
    pub fn shapes(&self, rows: usize, cols: usize) -> Result<GptqShapes, FormatError> {
        if !Self::supported_bits(self.bits) {
            return Err(FormatError(format!(
                "the GPTQ format packs 2, 4 or 8 bits, not {}",
                self.bits
            )));
        }
        let per_word = self.per_word();
        let group = self.group.unwrap_or(cols);
        if group == 0
            || !cols.is_multiple_of(group)
            || !cols.is_multiple_of(per_word)
            || !rows.is_multiple_of(per_word)
        {
            return Err(FormatError(format!(
                "{rows}x{cols} does not fit {}-bit words with groups of {group}",
                self.bits
            )));
        }
        let groups = cols / group;
        Ok(GptqShapes {
            qweight: [cols / per_word, rows],
            qzeros: [groups, rows / per_word],
            scales: [groups, rows],
            g_idx: cols,
        })
    }
}

/// Tensor shapes of one Linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptqShapes {
    pub qweight: [usize; 2],
    pub qzeros: [usize; 2],
    pub scales: [usize; 2],
    pub g_idx: usize,
}

/// The tensors of one Linear (scales as f32; the file stores them as f16).
#[derive(Clone, Debug, PartialEq)]
pub struct GptqTensors {
    pub qweight: Vec<u32>,
    pub qzeros: Vec<u32>,
    pub scales: Vec<f32>,
    pub g_idx: Vec<i32>,
}

/// Packs `q`.
pub fn encode(q: &QuantizedWeight) -> Result<GptqTensors, FormatError> {
    let layout = GptqLayout::of(q);
    let shapes = layout.shapes(q.rows, q.cols)?;
    let (bits, per_word) = (layout.bits, layout.per_word());
    let offset = 1i32 << (bits - 1);
    let max = (1i32 << bits) - 1;
    let group = layout.group.unwrap_or(q.cols);
    let groups = shapes.scales[0];
    let mut qweight = vec![0u32; shapes.qweight[0] * q.rows];
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
                return Err(FormatError(format!(
                    "zero point {} of row {o} falls outside what the GPTQ format stores",
                    p.zero_point
                )));
            }
            qzeros[g * (q.rows / per_word) + o / per_word] |=
                ((zero - 1) as u32) << ((o % per_word) as u32 * bits);
            scales[g * q.rows + o] = p.scale as f32;
        }
    }
    Ok(GptqTensors {
        qweight,
        qzeros,
        scales,
        g_idx: (0..q.cols).map(|i| (i / group) as i32).collect(),
    })
}

/// Unpacks a `rows` x `cols` weight (sizes as [`GptqLayout::shapes`] gives them; the caller
/// checks the tensors' shapes), refusing non-positive scales.
pub fn decode(
    rows: usize,
    cols: usize,
    layout: GptqLayout,
    qweight: &[u32],
    qzeros: &[u32],
    scales: &[f64],
) -> Result<QuantizedWeight, FormatError> {
    let shapes = layout.shapes(rows, cols)?;
    let size = |s: [usize; 2]| s[0] * s[1];
    if qweight.len() != size(shapes.qweight)
        || qzeros.len() != size(shapes.qzeros)
        || scales.len() != size(shapes.scales)
    {
        return Err(FormatError(format!(
            "tensor sizes do not match {shapes:?} for {rows}x{cols}"
        )));
    }
    let (bits, per_word) = (layout.bits, layout.per_word());
    let groups = shapes.scales[0];
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
                return Err(FormatError(format!(
                    "scale {scale} is not a positive number"
                )));
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
