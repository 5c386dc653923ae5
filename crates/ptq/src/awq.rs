//! AWQ (Lin et al., 2023) and weight clipping (spec §3.6), run on a decoder layer after its
//! float pass has filled the observers.
//!
//! Scale search: Linears that read the same input form a group. For each α of the `smooth_alpha`
//! grid a per-input-channel scale s is formed from the mean |x| of the inputs (and, with
//! `duo_scaling`, the normalized mean |w|); the group's weights are fake-quantized as W·s and the
//! outputs X·(Q(W·s)/s)ᵀ compared with X·Wᵀ on the sampled input rows. The best s is folded
//! into the op that produces the input (an RMSNorm or LayerNorm weight, or the rows of the Linear
//! feeding an element-wise Mul or the attention's values), so the float network is unchanged.
//! The original measures the whole decoder layer's output instead of the group's Linear outputs;
//! this is cheaper and isolates each group. A group whose producer cannot absorb a scale (the
//! attention output under grouped-query attention) is left unscaled.
//!
//! Clip search: per output row and group, the clamp max|w|·r over the `weight_clip_ratio` grid
//! that minimizes the mean squared error of the group's partial products Σ x·w on at most 512
//! sampled rows; q_proj and k_proj are skipped as in the original.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use gstick_nn::cell::downcast;
use gstick_nn::cells::{LayerNorm, Linear, RmsNorm, SelfAttention};
use gstick_nn::{Network, Param};
use gstick_quant::{Granularity, WeightScheme};
use gstick_rewrite::NodeId;

use crate::config::{OutliersSuppression, PtqConfig};
use crate::fake_quant_linear::linear_weight;
use crate::observer::InputStats;
use crate::{Error, Result};

/// Rows of the observer sample used by the scale search.
const SEARCH_ROWS: usize = 1024;
/// Rows of the observer sample used by the clip search (the original's limit).
const CLIP_ROWS: usize = 512;

/// What the searches changed.
#[derive(Default)]
pub struct SearchOutcome {
    /// Float tensors changed that are not quantized afterwards (norm weights), by local
    /// parameter name.
    pub overrides: Vec<(String, Tensor)>,
    /// The AWQ scale of each Linear whose weight was multiplied by it (its inputs are now x/s).
    pub scales: BTreeMap<String, Vec<f32>>,
}

/// Runs the AWQ scale search and the clip search on `layer` for the Linears whose policy asks
/// for them.
pub fn search_layer(
    layer: &mut Network,
    stats: &BTreeMap<String, Arc<InputStats>>,
    policy_of: &dyn Fn(&str) -> Option<PtqConfig>,
) -> Result<SearchOutcome> {
    let mut outcome = SearchOutcome::default();
    for names in &input_groups(layer, stats) {
        let awq: Vec<&String> = names
            .iter()
            .filter(|n| {
                policy_of(n).is_some_and(|c| c.outliers_suppression == OutliersSuppression::Awq)
            })
            .collect();
        if awq.len() != names.len() || awq.is_empty() {
            continue; // a group is scaled as a whole or not at all
        }
        let policy = policy_of(names[0].as_str()).ok_or_else(|| Error::Layer {
            layer: names[0].clone(),
            message: "no policy".into(),
        })?;
        let (changed, scale) = scale_group(layer, names, &stats[&names[0]], &policy)?;
        outcome.overrides.extend(changed);
        if let Some(s) = scale {
            for n in names {
                outcome.scales.insert(n.clone(), s.clone());
            }
        }
    }
    for name in stats.keys() {
        let Some(policy) = policy_of(name) else {
            continue;
        };
        // The original's clipper runs for AWQ and OSL, and wherever weight_clip asks for it.
        let wants_clip = policy.weight_clip
            || matches!(
                policy.outliers_suppression,
                OutliersSuppression::Awq | OutliersSuppression::OutlierSuppressionLite
            );
        if wants_clip && !name.ends_with("q_proj") && !name.ends_with("k_proj") {
            match outcome.scales.get(name) {
                Some(s) => clip_linear(layer, name, &stats[name].divided_by(s), &policy)?,
                None => clip_linear(layer, name, &stats[name], &policy)?,
            }
        }
    }
    Ok(outcome)
}

/// Groups of Linears sharing one input (one observer), in the layer's execution order (q/k/v,
/// o, gate/up, down). The order matters to whoever folds scales: a group's scale goes into its
/// producer, which may be a Linear of an earlier group (down's scale goes into up's rows).
pub(crate) fn input_groups(
    layer: &Network,
    stats: &BTreeMap<String, Arc<InputStats>>,
) -> Vec<Vec<String>> {
    let mut groups: Vec<(*const InputStats, Vec<String>)> = Vec::new();
    for (_, node) in layer.nodes() {
        let Some(s) = stats.get(node.name()) else {
            continue;
        };
        match groups.iter_mut().find(|(p, _)| *p == Arc::as_ptr(s)) {
            Some((_, names)) => names.push(node.name().to_string()),
            None => groups.push((Arc::as_ptr(s), vec![node.name().to_string()])),
        }
    }
    groups.into_iter().map(|(_, names)| names).collect()
}

/// The weights (row-major, with their row counts) of the named Linears, each checked to read
/// `cols` inputs.
pub(crate) fn group_weights(
    layer: &Network,
    names: &[String],
    cols: usize,
) -> Result<Vec<(Vec<f32>, usize)>> {
    let mut weights = Vec::new();
    for n in names {
        let lin = linear_at(layer, layer.find(n)?).ok_or_else(|| layer_error(n, "not a Linear"))?;
        let (w, rows, c) = linear_weight(&lin)?;
        if c != cols {
            return Err(layer_error(
                n,
                format!("{c} inputs, the observer saw {cols}"),
            ));
        }
        weights.push((w, rows));
    }
    Ok(weights)
}

fn layer_error(layer: &str, message: impl Into<String>) -> Error {
    Error::Layer {
        layer: layer.to_string(),
        message: message.into(),
    }
}

/// The bias of the Linear at `id`, if it is a Linear with one.
pub(crate) fn linear_bias(layer: &Network, id: NodeId) -> Option<Param> {
    linear_at(layer, id).and_then(|l| l.bias)
}

fn linear_at(layer: &Network, id: NodeId) -> Option<Linear> {
    layer
        .node(id)
        .ok()?
        .cell()
        .and_then(|c| downcast::<Linear>(c.as_ref()))
        .cloned()
}

/// Where a group's input comes from, if that op can absorb a division by s.
pub(crate) enum Absorber {
    RmsNorm(NodeId),
    LayerNorm(NodeId),
    LinearRows(NodeId),
}

pub(crate) fn absorber(layer: &Network, first: &str, cols: usize) -> Result<Option<Absorber>> {
    let id = layer.find(first)?;
    let Some(&src) = layer.node(id)?.inputs().first() else {
        return Ok(None);
    };
    let node = layer.node(src)?;
    let Some(cell) = node.cell() else {
        return Ok(None);
    };
    let rows_of = |id: NodeId| {
        linear_at(layer, id)
            .and_then(|l| l.weight.tensor().dims2().ok())
            .map(|(r, _)| r)
    };
    Ok(if downcast::<RmsNorm>(cell.as_ref()).is_some() {
        Some(Absorber::RmsNorm(src))
    } else if downcast::<LayerNorm>(cell.as_ref()).is_some() {
        Some(Absorber::LayerNorm(src))
    } else if downcast::<Linear>(cell.as_ref()).is_some() {
        Some(Absorber::LinearRows(src))
    } else if cell.kind() == "Mul" {
        // An element-wise product (SwiGLU): scale the factor that a Linear produces.
        node.inputs()
            .iter()
            .rev()
            .copied()
            .find(|&i| rows_of(i) == Some(cols))
            .map(Absorber::LinearRows)
    } else if let Some(attn) = downcast::<SelfAttention>(cell.as_ref()) {
        // The output is linear in the values only when every head has its own values.
        let v = node.inputs().get(2).copied();
        v.filter(|&v| attn.heads == attn.kv_heads && rows_of(v) == Some(cols))
            .map(Absorber::LinearRows)
    } else {
        None
    })
}

/// Fake quantization: the weight the integers of `w` stand for.
fn fake_quant(w: &[f32], rows: usize, cols: usize, scheme: WeightScheme) -> Result<Vec<f32>> {
    Ok(scheme
        .quantize_weight(w, rows, cols)
        .map_err(|e| layer_error("awq", e.to_string()))?
        .dequantize())
}

/// mean over rows of |W[o,j]| / max over the row (or group) of |W[o,·]|.
fn weight_mean(weights: &[(Vec<f32>, usize)], cols: usize, group: usize) -> Vec<f64> {
    let mut sum = vec![0.0f64; cols];
    let mut rows_total = 0;
    for (w, rows) in weights {
        for r in 0..*rows {
            let row = &w[r * cols..(r + 1) * cols];
            for (gi, g) in row.chunks(group).enumerate() {
                let m = g.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 + 1e-6;
                let base = gi * group;
                for (k, v) in g.iter().enumerate() {
                    sum[base + k] += v.abs() as f64 / m;
                }
            }
        }
        rows_total += rows;
    }
    sum.iter().map(|s| s / rows_total.max(1) as f64).collect()
}

fn sample_tensor(stats: &InputStats, max_rows: usize) -> Result<Tensor> {
    let rows = stats.sample_rows.min(max_rows);
    Ok(Tensor::from_slice(
        &stats.sample[..rows * stats.cols],
        (rows, stats.cols),
        &Device::Cpu,
    )?)
}

fn squared_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a - b)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64)
}

/// The changed norm weight, if any, and the scale applied, if any.
type GroupOutcome = (Option<(String, Tensor)>, Option<Vec<f32>>);

/// Searches and applies the AWQ scale of one group.
fn scale_group(
    layer: &mut Network,
    names: &[String],
    stats: &InputStats,
    policy: &PtqConfig,
) -> Result<GroupOutcome> {
    let scheme = policy
        .weight_scheme()
        .ok_or_else(|| layer_error(&names[0], "the policy quantizes no weights"))?;
    let cols = stats.cols;
    let Some(absorb) = absorber(layer, &names[0], cols)? else {
        return Ok((None, None));
    };
    let weights = group_weights(layer, names, cols)?;
    let group = match scheme.granularity {
        Granularity::PerGroup(g) => g,
        _ => cols,
    };
    let x_mean = stats.abs_mean();
    let w_mean = weight_mean(&weights, cols, group);
    let x = sample_tensor(stats, SEARCH_ROWS)?;
    let reference: Vec<Tensor> = weights
        .iter()
        .map(|(w, rows)| {
            let wt = Tensor::from_slice(w, (*rows, cols), &Device::Cpu)?;
            x.matmul(&wt.t()?)
        })
        .collect::<candle_core::Result<_>>()?;

    let candidate = |alpha: f64| -> Vec<f32> {
        let mut s: Vec<f64> = (0..cols)
            .map(|j| {
                let v = if policy.awq.duo_scaling {
                    x_mean[j].powf(alpha) / (w_mean[j].powf(1.0 - alpha) + 1e-4)
                } else {
                    x_mean[j].powf(alpha)
                };
                v.max(1e-4)
            })
            .collect();
        let (lo, hi) = s
            .iter()
            .fold((f64::INFINITY, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
        let norm = (lo * hi).sqrt();
        for (j, v) in s.iter_mut().enumerate() {
            *v = if x_mean[j] == 0.0 || w_mean[j] == 0.0 {
                1.0
            } else {
                *v / norm
            };
        }
        s.iter().map(|&v| v as f32).collect()
    };

    let mut best: Option<(f64, Vec<f32>)> = None;
    for alpha in policy.awq.smooth_alpha.values() {
        let s = candidate(alpha);
        let mut loss = 0.0;
        for ((w, rows), y) in weights.iter().zip(&reference) {
            let scaled: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * s[i % cols]).collect();
            let q = fake_quant(&scaled, *rows, cols, scheme)?;
            let effective: Vec<f32> = q.iter().enumerate().map(|(i, v)| v / s[i % cols]).collect();
            let wt = Tensor::from_vec(effective, (*rows, cols), &Device::Cpu)?;
            loss += squared_error(y, &x.matmul(&wt.t()?)?)?;
        }
        if best.as_ref().is_none_or(|(b, _)| loss < *b) {
            best = Some((loss, s));
        }
    }
    let Some((_, s)) = best else {
        return Ok((None, None));
    };
    let changed = fold_scale(layer, names, &weights, cols, &s, absorb)?;
    Ok((changed, Some(s)))
}

/// Folds a per-input-channel scale into a group: W[:, j] *= s_j in each of its Linears, and the
/// producer's output channel j /= s_j, so the float network computes the same function. Returns
/// the changed float tensor to record when the producer is a norm (a producing Linear is
/// quantized, or kept, with the rest of the layer).
pub(crate) fn fold_scale(
    layer: &mut Network,
    names: &[String],
    weights: &[(Vec<f32>, usize)],
    cols: usize,
    s: &[f32],
    absorb: Absorber,
) -> Result<Option<(String, Tensor)>> {
    for (n, (w, rows)) in names.iter().zip(weights) {
        let id = layer.find(n)?;
        let lin = linear_at(layer, id).ok_or_else(|| layer_error(n, "not a Linear"))?;
        let scaled: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * s[i % cols]).collect();
        let cell = Linear {
            weight: Param::buffer(Tensor::from_vec(scaled, (*rows, cols), &Device::Cpu)?)?,
            bias: lin.bias.clone(),
        };
        layer.replace_cell(id, Box::new(cell))?;
    }
    let inv = Tensor::from_vec(
        s.iter().map(|v| 1.0 / v).collect::<Vec<f32>>(),
        cols,
        &Device::Cpu,
    )?;
    let changed = match absorb {
        Absorber::RmsNorm(id) => {
            let name = layer.name_of(id)?.to_string();
            let norm = layer
                .node(id)?
                .cell()
                .and_then(|c| downcast::<RmsNorm>(c.as_ref()))
                .cloned()
                .ok_or_else(|| layer_error(&name, "not an RMSNorm"))?;
            let weight = norm.weight.tensor().mul(&inv)?;
            let cell = RmsNorm::from_tensor(weight.clone(), norm.eps)?;
            layer.replace_cell(id, Box::new(cell))?;
            Some((format!("{name}.weight"), weight))
        }
        Absorber::LayerNorm(id) => {
            let name = layer.name_of(id)?.to_string();
            let norm = layer
                .node(id)?
                .cell()
                .and_then(|c| downcast::<LayerNorm>(c.as_ref()))
                .cloned()
                .ok_or_else(|| layer_error(&name, "not a LayerNorm"))?;
            let weight = norm.weight.tensor().mul(&inv)?;
            let bias = norm.bias.tensor().mul(&inv)?;
            let cell = LayerNorm::from_tensors(weight.clone(), bias, norm.eps)?;
            layer.replace_cell(id, Box::new(cell))?;
            Some((format!("{name}.weight"), weight))
        }
        Absorber::LinearRows(id) => {
            let name = layer.name_of(id)?.to_string();
            let lin = linear_at(layer, id).ok_or_else(|| layer_error(&name, "not a Linear"))?;
            let weight = lin.weight.tensor().broadcast_mul(&inv.unsqueeze(1)?)?;
            let bias = match &lin.bias {
                Some(b) => Some(Param::buffer(b.tensor().mul(&inv)?)?),
                None => None,
            };
            let cell = Linear {
                weight: Param::buffer(weight)?,
                bias,
            };
            layer.replace_cell(id, Box::new(cell))?;
            None // a Linear of the layer: it is quantized (or kept) with the rest
        }
    };
    Ok(changed)
}

/// Searches the clamp ratio per (row, group) of one Linear and clamps its weight.
fn clip_linear(
    layer: &mut Network,
    name: &str,
    stats: &InputStats,
    policy: &PtqConfig,
) -> Result<()> {
    let scheme = policy
        .weight_scheme()
        .ok_or_else(|| layer_error(name, "the policy quantizes no weights"))?;
    let id = layer.find(name)?;
    let lin = linear_at(layer, id).ok_or_else(|| layer_error(name, "not a Linear"))?;
    let (w, rows, cols) = linear_weight(&lin)?;
    let group = match scheme.granularity {
        Granularity::PerGroup(g) => g,
        _ => cols,
    };
    let groups = cols / group;
    let t = stats.sample_rows.min(CLIP_ROWS);
    if t == 0 {
        return Ok(());
    }
    // x as (groups, t, group) for batched partial products.
    let x = sample_tensor(stats, CLIP_ROWS)?
        .reshape((t, groups, group))?
        .transpose(0, 1)?
        .contiguous()?;
    let partial = |w: &[f32]| -> Result<Vec<f32>> {
        // (groups, group, rows): per group, the weight slice transposed.
        let wt = Tensor::from_slice(w, (rows, groups, group), &Device::Cpu)?
            .permute((1, 2, 0))?
            .contiguous()?;
        Ok(x.matmul(&wt)?.flatten_all()?.to_vec1()?) // (groups, t, rows)
    };
    let reference = partial(&w)?;
    let absmax: Vec<f32> = (0..rows * groups)
        .map(|k| {
            let (r, g) = (k / groups, k % groups);
            w[r * cols + g * group..r * cols + (g + 1) * group]
                .iter()
                .fold(0f32, |a, v| a.max(v.abs()))
        })
        .collect();
    let mut best_err = vec![f64::INFINITY; rows * groups];
    let mut best_max = absmax.clone();
    for ratio in policy.awq.weight_clip_ratio.values() {
        let limits: Vec<f32> = absmax.iter().map(|m| m * ratio as f32).collect();
        let clamped: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let m = limits[(i / cols) * groups + (i % cols) / group];
                v.clamp(-m, m)
            })
            .collect();
        let q = fake_quant(&clamped, rows, cols, scheme)?;
        let out = partial(&q)?;
        for g in 0..groups {
            for r in 0..rows {
                let mut e = 0.0f64;
                for k in 0..t {
                    let i = (g * t + k) * rows + r;
                    let d = (out[i] - reference[i]) as f64;
                    e += d * d;
                }
                let slot = r * groups + g;
                if e < best_err[slot] {
                    best_err[slot] = e;
                    best_max[slot] = limits[slot];
                }
            }
        }
    }
    let clamped: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let m = best_max[(i / cols) * groups + (i % cols) / group];
            v.clamp(-m, m)
        })
        .collect();
    let cell = Linear {
        weight: Param::buffer(Tensor::from_vec(clamped, (rows, cols), &Device::Cpu)?)?,
        bias: lin.bias.clone(),
    };
    layer.replace_cell(id, Box::new(cell))?;
    Ok(())
}
