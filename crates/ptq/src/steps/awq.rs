//! AWQ as a step: the scale search folds scales into the layer, then the clip search clamps
//! weights (spec §3.6; the clipper also runs after OSL's smoothing, and wherever
//! `weight_clip` asks for it). Linears whose input is now x/s see statistics divided by s.

use super::{LayerState, Phase, PtqStep};
use crate::config::OutliersSuppression;
use crate::{PtqConfig, Result};

/// AWQ scales and weight clipping.
pub struct AwqStep;

impl PtqStep for AwqStep {
    fn name(&self) -> &'static str {
        "awq"
    }

    fn applies_to(&self, policy: &PtqConfig) -> bool {
        policy.weight_scheme().is_some()
            && (policy.weight_clip
                || matches!(
                    policy.outliers_suppression,
                    OutliersSuppression::Awq | OutliersSuppression::OutlierSuppressionLite
                ))
    }

    fn phase(&self) -> Phase {
        Phase::Search
    }

    fn run(&self, state: &mut LayerState) -> Result<()> {
        let policy_of = super::policy_in(state.targets);
        let outcome = crate::awq::search_layer(state.layer, &state.stats, &policy_of)?;
        state.fold(outcome);
        Ok(())
    }
}
