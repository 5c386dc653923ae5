//! OutlierSuppression-Lite (spec §3.4): SmoothQuant's scale with its migration strength α
//! searched instead of fixed. For each group of Linears reading one input (q/k/v, gate/up,
//! down) and each α of the original's grid, the group is smoothed with
//! `s_j = max|X_j|^α / max|W_j|^(1-α)` and put in A8W8 fake-quantized form (weights W·s per
//! channel, inputs X/s quantized as the policy says) while every other Linear stays float; the
//! whole decoder layer runs on the cached calibration inputs, and the α whose output is closest
//! to the float layer's (mean squared error) wins. The original searches each matrix; here the
//! Linears of a group share one α because their scale is folded into the one op that produces
//! their input (as SmoothQuant's here), which they all read.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use gstick_nn::{Cell, CellCtx, Executor, Mode, Network, Param};

use crate::awq::{absorber, fold_scale, group_weights, input_groups, SearchOutcome};
use crate::config::{OutliersSuppression, PtqConfig};
use crate::fake_quant_linear::WeightQuantLinear;
use crate::observer::InputStats;
use crate::smooth::smooth_scale;
use crate::{Error, Result};

/// The original's α grid (hard-coded there too).
pub const ALPHAS: [f64; 13] = [
    0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0,
];

/// What the search chose for one group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupChoice {
    pub alpha: f64,
    /// Mean squared error of the layer's output at that α.
    pub loss: f64,
}

/// The search's result: the folds (as SmoothQuant's) and the α of each Linear.
#[derive(Default)]
pub struct OslOutcome {
    pub smoothing: SearchOutcome,
    pub choices: BTreeMap<String, GroupChoice>,
}

/// `x * inv` channel-wise, then the quantized Linear: a smoothed Linear before its scale is
/// folded into the producer.
#[derive(Clone, Debug)]
struct InputScaled {
    inv: Tensor,
    inner: WeightQuantLinear,
}

impl Cell for InputScaled {
    fn kind(&self) -> &'static str {
        "OslCandidate"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        let [x] = inputs else {
            return Err(gstick_nn::Error::Config(
                "OSL candidate takes 1 input".into(),
            ));
        };
        let scaled = x.broadcast_mul(&self.inv)?;
        self.inner.forward(&[scaled], ctx)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        Vec::new()
    }
}

/// The min and max of the inputs divided channel-wise by `s` (the static range after
/// smoothing), without copying the statistics.
fn range_divided(stats: &InputStats, s: &[f32]) -> (f32, f32) {
    let lo = stats
        .min
        .iter()
        .zip(s)
        .fold(f32::INFINITY, |a, (&m, &v)| a.min(m / v));
    let hi = stats
        .max
        .iter()
        .zip(s)
        .fold(f32::NEG_INFINITY, |a, (&m, &v)| a.max(m / v));
    (lo, hi)
}

/// Mean over windows of the mean squared difference between `layer`'s outputs and `reference`.
fn layer_loss(layer: &Network, inputs: &[Tensor], reference: &[Tensor]) -> Result<f64> {
    let mut exec = Executor::new(Mode::Eval, 0);
    let mut total = 0.0;
    for (x, y) in inputs.iter().zip(reference) {
        let yq = exec.forward1(layer, x)?;
        let n = y.elem_count().max(1) as f64;
        total += (&yq - y)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 / n;
    }
    Ok(total / inputs.len().max(1) as f64)
}

/// Searches α for every group of `layer` whose Linears all ask for OSL, then folds each
/// group's scale in (as SmoothQuant does). `inputs` are the layer's calibration inputs and
/// `reference` its float outputs on them.
pub fn search_layer(
    layer: &mut Network,
    stats: &BTreeMap<String, Arc<InputStats>>,
    policy_of: &dyn Fn(&str) -> Option<PtqConfig>,
    inputs: &[Tensor],
    reference: &[Tensor],
) -> Result<OslOutcome> {
    let mut outcome = OslOutcome::default();
    // Every group is searched against the float layer, as the original searches each matrix
    // with the others in float; the folds are applied afterwards, in execution order.
    let float_layer = layer.clone();
    let mut chosen = Vec::new();
    for names in &input_groups(layer, stats) {
        let policies: Vec<PtqConfig> = names.iter().filter_map(|n| policy_of(n)).collect();
        let osl =
            |c: &PtqConfig| c.outliers_suppression == OutliersSuppression::OutlierSuppressionLite;
        if policies.len() != names.len() || !policies.iter().all(osl) {
            continue; // a group is smoothed as a whole or not at all
        }
        let policy = &policies[0];
        let st = &stats[&names[0]];
        if absorber(layer, &names[0], st.cols)?.is_none() {
            continue; // nothing can absorb the scale: the group stays unsmoothed
        }
        let weights = group_weights(layer, names, st.cols)?;
        let scheme = policy.weight_scheme().ok_or_else(|| Error::Layer {
            layer: names[0].clone(),
            message: "OSL needs a weight dtype".into(),
        })?;
        let mut best: Option<(f64, f64, Vec<f32>)> = None;
        for alpha in ALPHAS {
            let s = smooth_scale(&st.abs_max, &weights, alpha);
            let inv = Tensor::from_vec(
                s.iter().map(|v| 1.0 / v).collect::<Vec<f32>>(),
                st.cols,
                &Device::Cpu,
            )?;
            let activation = policy
                .activation_quant(Some(range_divided(st, &s)))
                .map_err(|message| Error::Layer {
                    layer: names[0].clone(),
                    message,
                })?;
            let mut candidate = float_layer.clone();
            for (n, (w, rows)) in names.iter().zip(&weights) {
                let scaled: Vec<f32> = w
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * s[i % st.cols])
                    .collect();
                let q = scheme
                    .quantize_weight(&scaled, *rows, st.cols)
                    .map_err(|e| Error::Layer {
                        layer: n.clone(),
                        message: e.to_string(),
                    })?;
                let id = candidate.find(n)?;
                let bias = crate::awq::linear_bias(&candidate, id);
                let inner = WeightQuantLinear::new(Arc::new(q), bias, activation, "osl")?;
                let cell = InputScaled {
                    inv: inv.clone(),
                    inner,
                };
                candidate.replace_cell(id, Box::new(cell) as Box<dyn Cell>)?;
            }
            let loss = layer_loss(&candidate, inputs, reference)?;
            if best.as_ref().is_none_or(|(b, _, _)| loss < *b) {
                best = Some((loss, alpha, s));
            }
        }
        if let Some((loss, alpha, s)) = best {
            for n in names {
                outcome
                    .choices
                    .insert(n.clone(), GroupChoice { alpha, loss });
            }
            chosen.push((names.clone(), s));
        }
    }
    for (names, s) in chosen {
        let cols = s.len();
        let Some(absorb) = absorber(layer, &names[0], cols)? else {
            continue;
        };
        // The current weights: an earlier fold may have scaled this group's rows.
        let weights = group_weights(layer, &names, cols)?;
        outcome
            .smoothing
            .overrides
            .extend(fold_scale(layer, &names, &weights, cols, &s, absorb)?);
        for n in &names {
            outcome.smoothing.scales.insert(n.clone(), s.clone());
        }
    }
    Ok(outcome)
}
