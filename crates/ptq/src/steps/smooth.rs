//! SmoothQuant as a step: each group's smoothing scale is folded into the layer before the
//! quantizers run (spec §3.1: `LinearSmoothQuant` comes first). Linears whose input is now x/s
//! see statistics divided by s.

use super::{LayerState, Phase, PtqStep};
use crate::config::OutliersSuppression;
use crate::{PtqConfig, Result};

/// SmoothQuant's scale migration.
pub struct SmoothStep;

impl PtqStep for SmoothStep {
    fn name(&self) -> &'static str {
        "smooth"
    }

    fn applies_to(&self, policy: &PtqConfig) -> bool {
        policy.weight_scheme().is_some()
            && policy.outliers_suppression == OutliersSuppression::Smooth
    }

    fn phase(&self) -> Phase {
        Phase::Search
    }

    fn run(&self, state: &mut LayerState) -> Result<()> {
        let policy_of = super::policy_in(state.targets);
        let outcome = crate::smooth::smooth_layer(state.layer, &state.stats, &policy_of)?;
        for local in outcome.scales.keys() {
            if let Some(t) = state.targets.iter().find(|t| &t.local == local) {
                state
                    .smooth_alphas
                    .insert(local.clone(), t.policy.smooth.alpha);
            }
        }
        state.fold(outcome);
        Ok(())
    }
}
