//! SmoothQuant (Xiao et al., 2023; spec §3.3): outlier channels of a Linear's input are moved
//! into its weight, where per-channel weight quantization absorbs them. Per input channel j of a
//! group of Linears sharing one input, `s_j = max_t|X_tj|^α / max_o|W_oj|^(1-α)` (clamped to at
//! least 1e-5; 1 where either maximum is 0), with W the group's weights stacked. `W[:, j] *= s_j`
//! and the producer of the input (an RMSNorm, or the Linear rows feeding SwiGLU's product or the
//! attention's values) divides channel j by s_j, so the float network is unchanged. The original
//! divides the activation at run time instead (a `smooth_scale` beside the matmul); folding it
//! costs nothing at run time. A group whose producer cannot absorb a scale (the attention output
//! under grouped-query attention) is left as it is.

use std::collections::BTreeMap;
use std::sync::Arc;

use gstick_nn::Network;

use crate::awq::{absorber, fold_scale, group_weights, input_groups, SearchOutcome};
use crate::config::{OutliersSuppression, PtqConfig};
use crate::observer::InputStats;
use crate::{Error, Result};

/// The smoothing scale of one group from its input maxima and weights.
pub fn smooth_scale(x_max: &[f32], weights: &[(Vec<f32>, usize)], alpha: f64) -> Vec<f32> {
    let cols = x_max.len();
    let mut w_max = vec![0f32; cols];
    for (w, _) in weights {
        for row in w.chunks_exact(cols) {
            for (m, &v) in w_max.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
    }
    x_max
        .iter()
        .zip(&w_max)
        .map(|(&x, &w)| {
            if x == 0.0 || w == 0.0 {
                1.0
            } else {
                ((x as f64).powf(alpha) / (w as f64).powf(1.0 - alpha)).max(1e-5) as f32
            }
        })
        .collect()
}

/// Smooths every group of `layer` whose Linears all ask for SmoothQuant.
pub fn smooth_layer(
    layer: &mut Network,
    stats: &BTreeMap<String, Arc<InputStats>>,
    policy_of: &dyn Fn(&str) -> Option<PtqConfig>,
) -> Result<SearchOutcome> {
    let mut outcome = SearchOutcome::default();
    for names in &input_groups(layer, stats) {
        let policies: Vec<PtqConfig> = names.iter().filter_map(|n| policy_of(n)).collect();
        let smooth = |c: &PtqConfig| c.outliers_suppression == OutliersSuppression::Smooth;
        if policies.len() != names.len() || !policies.iter().all(smooth) {
            continue; // a group is smoothed as a whole or not at all
        }
        let alpha = policies[0].smooth.alpha;
        if let Some(n) = names
            .iter()
            .zip(&policies)
            .find(|(_, c)| c.smooth.alpha != alpha)
        {
            return Err(Error::Layer {
                layer: n.0.clone(),
                message: format!(
                    "smooth.alpha {} differs from {alpha} of the Linears reading the same input",
                    n.1.smooth.alpha
                ),
            });
        }
        let st = &stats[&names[0]];
        let Some(absorb) = absorber(layer, &names[0], st.cols)? else {
            continue;
        };
        let weights = group_weights(layer, names, st.cols)?;
        let s = smooth_scale(&st.abs_max, &weights, alpha);
        outcome
            .overrides
            .extend(fold_scale(layer, names, &weights, st.cols, &s, absorb)?);
        for n in names {
            outcome.scales.insert(n.clone(), s.clone());
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::smooth_scale;

    #[test]
    fn the_scale_follows_the_formula() {
        // Two channels, weights stacked from two Linears: max|W| = (4, 0.5); max|X| = (16, 2).
        let weights = vec![(vec![1.0, -0.5, -4.0, 0.25], 2), (vec![2.0, 0.0], 1)];
        let s = smooth_scale(&[16.0, 2.0], &weights, 0.5);
        assert_eq!(s, vec![2.0, 2.0]);
        let s = smooth_scale(&[16.0, 0.0], &weights, 0.75);
        assert!((s[0] - 8.0 / 4f32.powf(0.25)).abs() < 1e-6, "{s:?}");
        assert_eq!(s[1], 1.0); // a channel no input uses keeps its weight
    }
}
