//! Integer quantization arithmetic with the conventions of the original toolkit (spec §3.0):
//! integer ranges, scale and zero point from a min/max, round-to-nearest quantization of weights
//! per tensor, per output channel or per group of input channels. (Packing integers into bytes
//! belongs to the storage formats, `formats/`.)
//!
//! Rounding is to nearest with ties to even, as numpy's `round` that the original uses.

/// Errors of the quantization settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemeError {
    #[error("{0} bits is not supported (2 to 8)")]
    Bits(u32),
    #[error("group size {group} does not divide the {cols} input channels")]
    Group { group: usize, cols: usize },
    #[error("weight has {got} values, {rows} x {cols} expected")]
    Shape {
        got: usize,
        rows: usize,
        cols: usize,
    },
    #[error("non-finite weight value in row {row}")]
    NonFinite { row: usize },
    #[error("row {row}: scale {scale} does not fit an f16 normal number")]
    ScaleRange { row: usize, scale: String },
}

/// The integer range of `bits`: signed `[-2^(b-1), 2^(b-1)-1]`, unsigned `[0, 2^b-1]`; a narrow
/// range gives up the lowest value (int8 narrow = [-127, 127]).
pub fn int_range(bits: u32, signed: bool, narrow: bool) -> Result<(i32, i32), SchemeError> {
    if !(2..=8).contains(&bits) {
        return Err(SchemeError::Bits(bits));
    }
    let (lo, hi) = if signed {
        (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1)
    } else {
        (0, (1i32 << bits) - 1)
    };
    Ok((if narrow { lo + 1 } else { lo }, hi))
}

/// Scale and zero point: x ≈ (q - zero_point) * scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    pub scale: f64,
    pub zero_point: f64,
}

/// Quantization parameters from a value range (f64, as the original's high-precision path):
/// symmetric widens to [-m, m] with m = max(|min|, |max|) and zero point 0; otherwise
/// zp = round(qmin - min / scale). A constant range gives scale 1 and zero point 0.
/// Note the original's consequence: symmetric int8 uses scale = 2·absmax/255, not absmax/127.
pub fn qparams(min: f64, max: f64, (qmin, qmax): (i32, i32), symmetric: bool) -> QParams {
    if max == min {
        return QParams {
            scale: 1.0,
            zero_point: 0.0,
        };
    }
    let (lo, hi) = if symmetric {
        let m = min.abs().max(max.abs());
        (-m, m)
    } else {
        (min, max)
    };
    let scale = (hi - lo) / (qmax - qmin) as f64;
    let zero_point = if symmetric {
        0.0
    } else {
        (qmin as f64 - lo / scale).round_ties_even()
    };
    QParams { scale, zero_point }
}

/// q = clamp(round(x / scale + zp), qmin, qmax).
pub fn quantize(x: f64, p: QParams, (qmin, qmax): (i32, i32)) -> i32 {
    round_ties_even(x / p.scale + p.zero_point).clamp(qmin as f64, qmax as f64) as i32
}

/// `x.round_ties_even()` without the libm call it is on baseline x86-64 (no SSE4.1): adding
/// 1.5 * 2^52 leaves no fraction bits, so the sum rounds to an integer, ties to even, and
/// subtracting it back is exact for |x| < 2^51; larger values (and NaN) take the library call.
#[inline(always)]
fn round_ties_even(x: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    if x.abs() < 2_251_799_813_685_248.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

/// x ≈ (q - zp) * scale.
pub fn dequantize(q: i32, p: QParams) -> f64 {
    (q as f64 - p.zero_point) * p.scale
}

/// Integer types of weights, activations and the KV cache, as configurations name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantDtype {
    Int8,
    Int4,
    Int3,
    Int2,
}

impl QuantDtype {
    pub fn bits(self) -> u32 {
        match self {
            QuantDtype::Int8 => 8,
            QuantDtype::Int4 => 4,
            QuantDtype::Int3 => 3,
            QuantDtype::Int2 => 2,
        }
    }

    /// The dtype of `bits` (8, 4, 3 or 2).
    pub fn from_bits(bits: u32) -> Option<QuantDtype> {
        match bits {
            8 => Some(QuantDtype::Int8),
            4 => Some(QuantDtype::Int4),
            3 => Some(QuantDtype::Int3),
            2 => Some(QuantDtype::Int2),
            _ => None,
        }
    }
}

/// Which values share one scale and zero point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    PerTensor,
    /// One per output channel (row of the (out, in) weight).
    PerChannel,
    /// One per output channel and run of `group` consecutive input channels.
    PerGroup(usize),
}

/// Settings of weight quantization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightScheme {
    pub bits: u32,
    pub granularity: Granularity,
    pub symmetric: bool,
    pub narrow: bool,
}

/// A quantized (out, in) weight: integer values in row-major order and one (scale, zero point)
/// per block, blocks in row-major order (row, group).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedWeight {
    pub rows: usize,
    pub cols: usize,
    pub scheme: WeightScheme,
    pub values: Vec<i8>,
    pub params: Vec<QParams>,
}

impl WeightScheme {
    /// Input channels per block (the whole row for per-channel; everything for per-tensor).
    fn block_cols(&self, cols: usize) -> usize {
        match self.granularity {
            Granularity::PerGroup(g) => g,
            _ => cols,
        }
    }

    /// Round-to-nearest quantization of a row-major (rows, cols) weight.
    pub fn quantize_weight(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<QuantizedWeight, SchemeError> {
        if w.len() != rows * cols {
            return Err(SchemeError::Shape {
                got: w.len(),
                rows,
                cols,
            });
        }
        if let Granularity::PerGroup(group) = self.granularity {
            if group == 0 || !cols.is_multiple_of(group) {
                return Err(SchemeError::Group { group, cols });
            }
        }
        if let Some(row) = w
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| i / cols.max(1))
        {
            return Err(SchemeError::NonFinite { row });
        }
        let range = int_range(self.bits, true, self.narrow)?;
        let min_max = |vals: &mut dyn Iterator<Item = f32>| {
            vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v as f64), hi.max(v as f64))
            })
        };
        let block = self.block_cols(cols);
        let mut params = Vec::new();
        let mut values = vec![0i8; w.len()];
        if self.granularity == Granularity::PerTensor {
            let (lo, hi) = min_max(&mut w.iter().copied());
            params.push(qparams(lo, hi, range, self.symmetric));
        }
        for r in 0..rows {
            for b in 0..cols / block.max(1) {
                let span = r * cols + b * block..r * cols + (b + 1) * block;
                let p = if self.granularity == Granularity::PerTensor {
                    params[0]
                } else {
                    let (lo, hi) = min_max(&mut w[span.clone()].iter().copied());
                    let p = qparams(lo, hi, range, self.symmetric);
                    params.push(p);
                    p
                };
                for i in span {
                    values[i] = quantize(w[i] as f64, p, range) as i8;
                }
            }
        }
        Ok(QuantizedWeight {
            rows,
            cols,
            scheme: *self,
            values,
            params,
        })
    }
}

impl QuantizedWeight {
    /// The (scale, zero point) of value (row, col).
    pub fn params_at(&self, row: usize, col: usize) -> QParams {
        match self.scheme.granularity {
            Granularity::PerTensor => self.params[0],
            Granularity::PerChannel => self.params[row],
            Granularity::PerGroup(g) => self.params[row * (self.cols / g) + col / g],
        }
    }

    /// Rounds every scale to the nearest f16 (the integers stay), so that formats storing f16
    /// scales (GGUF, the GPTQ format) hold exactly these values. Fails, naming the row, when a
    /// scale does not fit an f16 normal number.
    pub fn round_scales_to_f16(&mut self) -> Result<(), SchemeError> {
        let per_row = self.params.len() / self.rows.max(1);
        for (i, p) in self.params.iter_mut().enumerate() {
            let h = half::f16::from_f64(p.scale);
            if !h.is_normal() {
                return Err(SchemeError::ScaleRange {
                    row: i / per_row.max(1),
                    scale: format!("{:e}", p.scale),
                });
            }
            p.scale = h.to_f64();
        }
        Ok(())
    }

    /// The weight the integers stand for, row-major (rows, cols).
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows * self.cols)
            .map(|i| {
                dequantize(
                    self.values[i] as i32,
                    self.params_at(i / self.cols, i % self.cols),
                ) as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod rounding_tests {
    use super::round_ties_even;

    #[test]
    fn rounding_equals_the_standard_library() {
        let mut x = -3.0e6f64;
        while x < 3.0e6 {
            assert_eq!(round_ties_even(x), x.round_ties_even(), "{x}");
            x += 0.25 + x.abs() * 1e-7;
        }
        let big = 2_251_799_813_685_248.5f64; // 2^51 + 0.5 (representable)
        for x in [
            0.5,
            1.5,
            2.5,
            -0.5,
            -2.5,
            big,
            -big,
            4.5e15,
            1e300,
            f64::INFINITY,
        ] {
            assert_eq!(round_ties_even(x), x.round_ties_even(), "{x}");
        }
        assert!(round_ties_even(f64::NAN).is_nan());
    }
}
