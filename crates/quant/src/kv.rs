//! KV-cache int8 (spec §3.9, the original's C8): the keys (after RoPE) and values an attention
//! caches are stored as int8, each row of `width = kv_heads * head_dim` values either with its
//! own scale (dynamic per token, `max|row| / 127`, as the activations of dynamic A8W8) or with one
//! calibrated scale per channel (static per channel, symmetric: `2 max|x_c| / 255`, the
//! original's arithmetic). Values are `q * scale`. Rows are quantized once, when they enter the
//! cache, and read back by attention: the f32 path dequantizes, the decoder's dot products read
//! the integers.

use crate::int8::a8w8::quantize_token;

/// How an attention's cached keys and values are quantized.
#[derive(Clone, Debug, PartialEq)]
pub enum KvQuant {
    /// A scale per cached row, computed when the row is stored.
    DynamicPerToken,
    /// A calibrated scale per channel for the keys and for the values (`width` each).
    StaticPerChannel {
        key_scales: Vec<f32>,
        value_scales: Vec<f32>,
    },
}

impl KvQuant {
    /// The name configurations and the Golden Stick format use.
    pub fn name(&self) -> &'static str {
        match self {
            KvQuant::DynamicPerToken => "dynamic_per_token",
            KvQuant::StaticPerChannel { .. } => "static_per_channel",
        }
    }

    /// Static scales from the calibrated largest magnitude of each channel of the keys and of
    /// the values. A channel that was always 0 gets scale 1 (its integers are 0).
    pub fn static_from_absmax(key_absmax: &[f32], value_absmax: &[f32]) -> Result<KvQuant, String> {
        let scales = |absmax: &[f32], what: &str| -> Result<Vec<f32>, String> {
            absmax
                .iter()
                .enumerate()
                .map(|(c, &m)| {
                    if !m.is_finite() {
                        return Err(format!("{what} channel {c}: calibrated maximum {m}"));
                    }
                    let p = crate::scheme::qparams(-(m as f64), m as f64, (-128, 127), true);
                    Ok(p.scale as f32)
                })
                .collect()
        };
        Ok(KvQuant::StaticPerChannel {
            key_scales: scales(key_absmax, "key")?,
            value_scales: scales(value_absmax, "value")?,
        })
    }
}

/// Rounds half to even, exactly, below 2^22 (see `a8w8`).
#[inline(always)]
fn round_ties_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Quantizes `x` (rows of `width`) and appends the integers to `q` and, for per-token rows, each
/// row's scale to `row_scales`. The first row holding NaN or infinity is an error naming it
/// (nothing is appended then).
pub fn append_rows(
    quant: &KvQuant,
    keys: bool,
    x: &[f32],
    width: usize,
    q: &mut Vec<i8>,
    row_scales: &mut Vec<f32>,
) -> Result<(), usize> {
    let rows = x.len() / width.max(1);
    if let Some(bad) = x
        .chunks_exact(width.max(1))
        .position(|r| r.iter().any(|v| !v.is_finite()))
    {
        return Err(bad);
    }
    let start = q.len();
    q.resize(start + rows * width, 0);
    let out = &mut q[start..];
    match quant {
        KvQuant::DynamicPerToken => {
            for (row, qr) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
                row_scales.push(quantize_token(row, qr));
            }
        }
        KvQuant::StaticPerChannel {
            key_scales,
            value_scales,
        } => {
            let scales = if keys { key_scales } else { value_scales };
            assert_eq!(scales.len(), width, "kv::append_rows: static scales");
            for (row, qr) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
                for ((d, &v), &s) in qr.iter_mut().zip(row).zip(scales) {
                    let r = round_ties_even(v / s).clamp(-128.0, 127.0);
                    // SAFETY: `v` is finite (checked above) and `r` within [-128, 127].
                    *d = unsafe { r.to_int_unchecked::<i32>() } as i8;
                }
            }
        }
    }
    Ok(())
}

/// The f32 values of int8 rows `q` (rows of `width`), into `out` (resized).
pub fn dequantize_rows(
    quant: &KvQuant,
    keys: bool,
    q: &[i8],
    row_scales: &[f32],
    width: usize,
    out: &mut Vec<f32>,
) {
    out.resize(q.len(), 0.0);
    match quant {
        KvQuant::DynamicPerToken => {
            for ((o, r), &s) in out
                .chunks_exact_mut(width)
                .zip(q.chunks_exact(width))
                .zip(row_scales)
            {
                for (o, &v) in o.iter_mut().zip(r) {
                    *o = v as f32 * s;
                }
            }
        }
        KvQuant::StaticPerChannel {
            key_scales,
            value_scales,
        } => {
            let scales = if keys { key_scales } else { value_scales };
            for (o, r) in out.chunks_exact_mut(width).zip(q.chunks_exact(width)) {
                for ((o, &v), &s) in o.iter_mut().zip(r).zip(scales) {
                    *o = v as f32 * s;
                }
            }
        }
    }
}

/// The dequantized value of integer `v` at channel `c` of row `row`.
#[cfg(test)]
fn value(quant: &KvQuant, keys: bool, v: i8, row_scales: &[f32], row: usize, c: usize) -> f32 {
    match quant {
        KvQuant::DynamicPerToken => v as f32 * row_scales[row],
        KvQuant::StaticPerChannel {
            key_scales,
            value_scales,
        } => v as f32 * if keys { key_scales[c] } else { value_scales[c] },
    }
}

/// Attention scores of one query head against int8 keys: `out[p] = q . key[p][offset..offset +
/// q.len()]` with the keys' scales applied after the sum (per-token scales) or to q first
/// (per-channel scales), so the inner loop is a plain dot product of f32 by int8.
pub fn key_scores(
    quant: &KvQuant,
    keys: &[i8],
    row_scales: &[f32],
    width: usize,
    offset: usize,
    q: &[f32],
    out: &mut [f32],
) {
    let d = q.len();
    let scaled: Vec<f32>;
    let q = match quant {
        KvQuant::DynamicPerToken => q,
        KvQuant::StaticPerChannel { key_scales, .. } => {
            scaled = q
                .iter()
                .zip(&key_scales[offset..offset + d])
                .map(|(x, s)| x * s)
                .collect();
            &scaled
        }
    };
    for (p, o) in out.iter_mut().enumerate() {
        let row = &keys[p * width + offset..p * width + offset + d];
        let mut acc = [0f32; 16];
        let chunks = row.chunks_exact(16).zip(q.chunks_exact(16));
        for (k, x) in chunks {
            for i in 0..16 {
                acc[i] += x[i] * k[i] as f32;
            }
        }
        let tail = d - d % 16;
        for i in tail..d {
            acc[i % 16] += q[i] * row[i] as f32;
        }
        let sum: f32 = acc.iter().sum();
        *o = match quant {
            KvQuant::DynamicPerToken => sum * row_scales[p],
            KvQuant::StaticPerChannel { .. } => sum,
        };
    }
}

/// `out = sum_p weights[p] * value[p][offset..offset + out.len()]` over int8 values.
pub fn weighted_values(
    quant: &KvQuant,
    values: &[i8],
    row_scales: &[f32],
    width: usize,
    offset: usize,
    weights: &[f32],
    out: &mut [f32],
) {
    out.fill(0.0);
    let d = out.len();
    for (p, &w) in weights.iter().enumerate() {
        let w = match quant {
            KvQuant::DynamicPerToken => w * row_scales[p],
            KvQuant::StaticPerChannel { .. } => w,
        };
        let row = &values[p * width + offset..p * width + offset + d];
        for (o, &v) in out.iter_mut().zip(row) {
            *o += w * v as f32;
        }
    }
    if let KvQuant::StaticPerChannel { value_scales, .. } = quant {
        for (o, s) in out.iter_mut().zip(&value_scales[offset..offset + d]) {
            *o *= s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_within_half_a_step() {
        let width = 6;
        let x: Vec<f32> = (0..3 * width)
            .map(|i| ((i * 7) % 11) as f32 - 5.3)
            .collect();
        let absmax: Vec<f32> = (0..width)
            .map(|c| (0..3).map(|r| x[r * width + c].abs()).fold(0.0, f32::max))
            .collect();
        let statics = KvQuant::static_from_absmax(&absmax, &absmax).unwrap();
        for quant in [KvQuant::DynamicPerToken, statics] {
            let (mut q, mut scales) = (Vec::new(), Vec::new());
            append_rows(&quant, true, &x[..width], width, &mut q, &mut scales).unwrap();
            append_rows(&quant, true, &x[width..], width, &mut q, &mut scales).unwrap();
            let mut back = Vec::new();
            dequantize_rows(&quant, true, &q, &scales, width, &mut back);
            for (i, (&a, &b)) in x.iter().zip(&back).enumerate() {
                let step = match &quant {
                    KvQuant::DynamicPerToken => scales[i / width],
                    KvQuant::StaticPerChannel { key_scales, .. } => key_scales[i % width],
                };
                assert!(
                    (a - b).abs() <= 0.5 * step * 1.0001,
                    "{quant:?} {i}: {a} {b}"
                );
            }
            // Scores and weighted sums read the integers as the dequantized rows.
            let qv = [0.5f32, -1.0, 2.0];
            let mut s = [0f32; 3];
            key_scores(&quant, &q, &scales, width, 3, &qv, &mut s);
            for (p, &got) in s.iter().enumerate() {
                let want: f32 = (0..3).map(|i| qv[i] * back[p * width + 3 + i]).sum();
                assert!((got - want).abs() < 1e-4, "{got} {want}");
            }
            let mut o = [0f32; 3];
            weighted_values(&quant, &q, &scales, width, 0, &[0.25, 0.5, 0.25], &mut o);
            for (i, &got) in o.iter().enumerate() {
                let want: f32 = (0..3)
                    .map(|p| [0.25, 0.5, 0.25][p] * dequant_v(&quant, &q, &scales, width, p, i))
                    .sum();
                assert!((got - want).abs() < 1e-4, "{got} {want}");
            }
            let bad = [1.0, f32::NAN, 0.0, 0.0, 0.0, 0.0];
            assert_eq!(
                append_rows(&quant, false, &bad, width, &mut q, &mut scales),
                Err(0)
            );
        }
    }

    fn dequant_v(quant: &KvQuant, q: &[i8], s: &[f32], width: usize, p: usize, c: usize) -> f32 {
        value(quant, false, q[p * width + c], s, p, c)
    }
}
