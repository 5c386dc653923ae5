//! Golden Stick's checkpoint layout (msModelSlim names, spec §2.15) for a quantized Linear `L`:
//! - `L.weight`: int8 `[out, in]`, or for 4 bits and fewer u8 `[out, in/2]`, two values per byte
//!   along the input axis with element 2j in the low nibble;
//! - `L.weight_scale`, `L.weight_offset`: f32 `[out, groups]`; x = (q − offset)·scale.

use super::FormatError;
use crate::scheme::{int_range, Granularity, QParams, QuantizedWeight, WeightScheme};

/// The tensors of one Linear.
#[derive(Clone, Debug, PartialEq)]
pub struct GsTensors {
    /// Signed bytes, or packed nibbles when `packed`.
    pub weight: Vec<u8>,
    pub packed: bool,
    pub weight_shape: [usize; 2],
    pub scale: Vec<f32>,
    pub offset: Vec<f32>,
    /// `[out, groups]`.
    pub param_shape: [usize; 2],
}

/// Whether `bits` are stored two per byte.
pub fn packs(bits: u32) -> bool {
    bits <= 4
}

/// Groups per row of a weight with `cols` inputs.
pub fn groups(scheme: &WeightScheme, cols: usize) -> usize {
    match scheme.granularity {
        Granularity::PerGroup(g) => cols / g.max(1),
        _ => 1,
    }
}

/// The tensors of `q`.
pub fn encode(q: &QuantizedWeight) -> Result<GsTensors, FormatError> {
    let packed = packs(q.scheme.bits);
    let (weight, weight_shape) = if packed {
        if !q.cols.is_multiple_of(2) {
            return Err(FormatError(format!(
                "{} inputs cannot be packed two per byte",
                q.cols
            )));
        }
        (pack_int4(&q.values), [q.rows, q.cols / 2])
    } else {
        (
            q.values.iter().map(|&v| v as u8).collect(),
            [q.rows, q.cols],
        )
    };
    Ok(GsTensors {
        weight,
        packed,
        weight_shape,
        scale: q.params.iter().map(|p| p.scale as f32).collect(),
        offset: q.params.iter().map(|p| p.zero_point as f32).collect(),
        param_shape: [q.rows, groups(&q.scheme, q.cols)],
    })
}

/// A `rows` x `cols` weight of `scheme` from its tensors, checked: the sizes, every integer
/// inside the scheme's range, every scale a positive number.
pub fn decode(
    rows: usize,
    cols: usize,
    scheme: WeightScheme,
    t: &GsTensors,
) -> Result<QuantizedWeight, FormatError> {
    let bad = |m: String| Err(FormatError(m));
    if let Granularity::PerGroup(g) = scheme.granularity {
        if g == 0 || !cols.is_multiple_of(g) {
            return bad(format!("group size {g} does not divide {cols}"));
        }
    }
    let expected = if packs(scheme.bits) {
        [rows, cols / 2]
    } else {
        [rows, cols]
    };
    if t.packed != packs(scheme.bits) || t.weight_shape != expected {
        return bad(format!(
            "weight is {} {:?}; {}-bit {rows}x{cols} needs {} {expected:?}",
            if t.packed { "packed" } else { "int8" },
            t.weight_shape,
            scheme.bits,
            if packs(scheme.bits) { "packed" } else { "int8" },
        ));
    }
    let param_shape = [rows, groups(&scheme, cols)];
    if t.param_shape != param_shape
        || t.scale.len() != rows * param_shape[1]
        || t.offset.len() != t.scale.len()
    {
        return bad(format!(
            "scales and offsets are {:?}, {param_shape:?} expected",
            t.param_shape
        ));
    }
    let values: Vec<i8> = if t.packed {
        unpack_int4(&t.weight, rows * cols)
    } else {
        t.weight.iter().map(|&b| b as i8).collect()
    };
    let range = int_range(scheme.bits, true, false).map_err(|e| FormatError(e.to_string()))?;
    if let Some(v) = values
        .iter()
        .find(|&&v| (v as i32) < range.0 || (v as i32) > range.1)
    {
        return bad(format!(
            "value {v} is outside the {}-bit range",
            scheme.bits
        ));
    }
    if let Some(s) = t.scale.iter().find(|s| !s.is_finite() || **s <= 0.0) {
        return bad(format!("scale {s} is not a positive number"));
    }
    Ok(QuantizedWeight {
        rows,
        cols,
        scheme,
        values,
        params: t
            .scale
            .iter()
            .zip(&t.offset)
            .map(|(&s, &z)| QParams {
                scale: s as f64,
                zero_point: z as f64,
            })
            .collect(),
    })
}

/// Packs signed 4-bit values two per byte along the last axis: element 2j in the low nibble,
/// element 2j+1 in the high nibble (spec §3.0). An odd count leaves the last high nibble 0.
pub fn pack_int4(values: &[i8]) -> Vec<u8> {
    values
        .chunks(2)
        .map(|pair| {
            (pair[0] as u8 & 0x0F) | ((pair.get(1).copied().unwrap_or(0) as u8 & 0x0F) << 4)
        })
        .collect()
}

/// The inverse of [`pack_int4`]: `count` sign-extended 4-bit values.
pub fn unpack_int4(bytes: &[u8], count: usize) -> Vec<i8> {
    let nibble = |n: u8| ((n << 4) as i8) >> 4;
    bytes
        .iter()
        .flat_map(|&b| [nibble(b & 0x0F), nibble(b >> 4)])
        .take(count)
        .collect()
}
