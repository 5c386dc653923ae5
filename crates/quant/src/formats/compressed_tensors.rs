//! The weight layouts of compressed-tensors checkpoints (`quant_method: "compressed-tensors"`,
//! as vLLM, llm-compressor and transformers load them), symmetric integer weights:
//! - `int-quantized`: `weight` int8 `[out, in]`, the values as they are;
//! - `pack-quantized`: `weight_packed` int32 `[out, ceil(in·bits/32)]`, each row one dense
//!   little-endian bit stream of the unsigned values q + 2^(bits−1) (value i at stream bit
//!   i·bits, so a value may straddle two words), and `weight_shape` int64 `[2]` = `[out, in]`;
//! - `weight_scale` `[out, 1]` per channel or `[out, in / group]` per group; w = q·scale.

use super::FormatError;
use crate::scheme::{Granularity, QParams, QuantizedWeight, WeightScheme};

/// How a Linear's integers are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtFormat {
    /// int8 values in a `weight` tensor.
    IntQuantized,
    /// Values packed into int32 words (`weight_packed`).
    PackQuantized,
}

impl CtFormat {
    /// The name `config.json` uses.
    pub fn name(self) -> &'static str {
        match self {
            CtFormat::IntQuantized => "int-quantized",
            CtFormat::PackQuantized => "pack-quantized",
        }
    }

    pub fn from_name(name: &str) -> Option<CtFormat> {
        match name {
            "int-quantized" => Some(CtFormat::IntQuantized),
            "pack-quantized" => Some(CtFormat::PackQuantized),
            _ => None,
        }
    }
}

/// What a weight's `weights` arguments say: bits and group (`None`: per channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CtWeightArgs {
    pub bits: u32,
    pub group: Option<usize>,
}

impl CtWeightArgs {
    /// The arguments of `q`, or why the format cannot hold it.
    pub fn of(q: &QuantizedWeight) -> Result<CtWeightArgs, FormatError> {
        if !q.scheme.symmetric {
            return Err(FormatError(
                "asymmetric weights (zero points) are not written in compressed-tensors yet; quantize with weight_symmetric: true".into(),
            ));
        }
        if !(2..=8).contains(&q.scheme.bits) {
            return Err(FormatError(format!(
                "compressed-tensors packs 2 to 8 bits, not {}",
                q.scheme.bits
            )));
        }
        let group = match q.scheme.granularity {
            Granularity::PerChannel => None,
            Granularity::PerGroup(g) => Some(g),
            Granularity::PerTensor => {
                return Err(FormatError(
                    "per-tensor weights are not written in compressed-tensors; use per-channel or per-group".into(),
                ))
            }
        };
        Ok(CtWeightArgs {
            bits: q.scheme.bits,
            group,
        })
    }

    /// Scale columns of a weight with `cols` inputs.
    pub fn groups(&self, cols: usize) -> Result<usize, FormatError> {
        match self.group {
            None => Ok(1),
            Some(g) if g > 0 && cols.is_multiple_of(g) => Ok(cols / g),
            Some(g) => Err(FormatError(format!(
                "group size {g} does not divide {cols} input columns"
            ))),
        }
    }
}

/// Words per packed row of `cols` values of `bits`.
pub fn packed_cols(cols: usize, bits: u32) -> usize {
    (cols * bits as usize).div_ceil(32)
}

/// Packs the integers of a row-major (rows, cols) weight as `weight_packed`.
pub fn pack(values: &[i8], rows: usize, cols: usize, bits: u32) -> Vec<i32> {
    let words = packed_cols(cols, bits);
    let offset = 1i32 << (bits - 1);
    let mut out = vec![0u32; rows * words];
    for (row, packed) in values.chunks_exact(cols).zip(out.chunks_exact_mut(words)) {
        for (i, &v) in row.iter().enumerate() {
            let u = (v as i32 + offset) as u64;
            let bit = i * bits as usize;
            // The value's bits may run into the next word.
            let wide = u << (bit % 32);
            packed[bit / 32] |= wide as u32;
            if let Some(next) = packed.get_mut(bit / 32 + 1) {
                *next |= (wide >> 32) as u32;
            }
        }
    }
    out.into_iter().map(|w| w as i32).collect()
}

/// Unpacks `weight_packed` into signed integers (the caller checks the tensor's shape).
pub fn unpack(words: &[i32], rows: usize, cols: usize, bits: u32) -> Result<Vec<i8>, FormatError> {
    let per_row = packed_cols(cols, bits);
    if !(2..=8).contains(&bits) || words.len() != rows * per_row {
        return Err(FormatError(format!(
            "{} words do not hold {rows}x{cols} values of {bits} bits",
            words.len()
        )));
    }
    let offset = 1i32 << (bits - 1);
    let mask = (1u64 << bits) - 1;
    let mut values = Vec::with_capacity(rows * cols);
    for packed in words.chunks_exact(per_row) {
        for i in 0..cols {
            let bit = i * bits as usize;
            let lo = packed[bit / 32] as u32 as u64;
            let hi = packed.get(bit / 32 + 1).map_or(0, |&w| w as u32 as u64);
            let u = ((lo | hi << 32) >> (bit % 32)) & mask;
            values.push((u as i32 - offset) as i8);
        }
    }
    Ok(values)
}

/// The scales of `q`, row-major `[rows, groups]`.
pub fn scales(q: &QuantizedWeight) -> Vec<f32> {
    q.params.iter().map(|p| p.scale as f32).collect()
}

/// A weight from its integers and `[rows, groups]` scales, refusing values outside `bits` and
/// scales that are not positive numbers.
pub fn weight_from_parts(
    rows: usize,
    cols: usize,
    args: CtWeightArgs,
    values: Vec<i8>,
    scales: &[f32],
) -> Result<QuantizedWeight, FormatError> {
    let groups = args.groups(cols)?;
    if values.len() != rows * cols || scales.len() != rows * groups {
        return Err(FormatError(format!(
            "{} values and {} scales for a {rows}x{cols} weight with {groups} scale(s) per row",
            values.len(),
            scales.len()
        )));
    }
    let (lo, hi) = (-(1i32 << (args.bits - 1)), (1i32 << (args.bits - 1)) - 1);
    if let Some(i) = values
        .iter()
        .position(|&v| !(lo..=hi).contains(&(v as i32)))
    {
        return Err(FormatError(format!(
            "value {} at row {} is outside {}-bit integers",
            values[i],
            i / cols,
            args.bits
        )));
    }
    if let Some(i) = scales.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(FormatError(format!(
            "scale {} of row {} is not a positive number",
            scales[i],
            i / groups
        )));
    }
    Ok(QuantizedWeight {
        rows,
        cols,
        scheme: WeightScheme {
            bits: args.bits,
            granularity: args
                .group
                .map_or(Granularity::PerChannel, Granularity::PerGroup),
            symmetric: true,
            narrow: false,
        },
        values,
        params: scales
            .iter()
            .map(|&s| QParams {
                scale: s as f64,
                zero_point: 0.0,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_every_width_and_straddles_words() {
        for bits in 2..=8u32 {
            let (rows, cols) = (3, 37);
            let lo = -(1i32 << (bits - 1));
            let span = 1i32 << bits;
            let values: Vec<i8> = (0..rows * cols)
                .map(|i| (lo + (i as i32 * 7 + 3) % span) as i8)
                .collect();
            let words = pack(&values, rows, cols, bits);
            assert_eq!(words.len(), rows * packed_cols(cols, bits));
            assert_eq!(
                unpack(&words, rows, cols, bits).unwrap(),
                values,
                "{bits} bits"
            );
        }
    }

    #[test]
    fn four_bit_values_sit_in_nibbles_from_the_low_end() {
        // Values 0..8 of one row: unsigned 8..16, value i in nibble i.
        let values: Vec<i8> = (0..8).collect();
        let words = pack(&values, 1, 8, 4);
        assert_eq!(words, vec![0xFEDC_BA98u32 as i32]);
        // Three bits: value 10 straddles words 0 and 1 (stream bits 30..33).
        let values = vec![3i8; 11];
        let words = pack(&values, 1, 11, 3);
        assert_eq!(words.len(), 2);
        assert_eq!(words[0] as u32 >> 30, 0b11);
        assert_eq!(words[1] & 0b1, 0b1);
    }

    #[test]
    fn bad_parts_are_refused() {
        let args = CtWeightArgs {
            bits: 4,
            group: Some(2),
        };
        assert!(weight_from_parts(1, 4, args, vec![0, 1, 2, 3], &[1.0, 0.5]).is_ok());
        assert!(weight_from_parts(1, 4, args, vec![0, 1, 2, 8], &[1.0, 0.5]).is_err());
        assert!(weight_from_parts(1, 4, args, vec![0; 4], &[1.0, f32::NAN]).is_err());
        assert!(weight_from_parts(1, 4, args, vec![0; 4], &[1.0]).is_err());
        assert!(unpack(&[0; 3], 1, 8, 4).is_err());
    }
}
