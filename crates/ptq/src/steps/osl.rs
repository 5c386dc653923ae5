//! OutlierSuppression-Lite as a step: α searched per group on the layer's output, then folded
//! in as SmoothQuant's scale (spec §3.4). The weight clipper that OSL enables runs next, in the
//! AWQ step. Linears whose input is now x/s see statistics divided by s.

use super::{LayerState, Phase, PtqStep};
use crate::config::OutliersSuppression;
use crate::{PtqConfig, Result};

/// OSL's α search and smoothing.
pub struct OslStep;

impl PtqStep for OslStep {
    fn name(&self) -> &'static str {
        "osl"
    }

    fn applies_to(&self, policy: &PtqConfig) -> bool {
        policy.weight_scheme().is_some()
            && policy.outliers_suppression == OutliersSuppression::OutlierSuppressionLite
    }

    fn phase(&self) -> Phase {
        Phase::Search
    }

    fn run(&self, state: &mut LayerState) -> Result<()> {
        let policy_of = super::policy_in(state.targets);
        // The first windows up to the options' token budget.
        let mut windows = 0;
        let mut tokens = 0;
        while windows < state.inputs.len() && (windows == 0 || tokens < state.options.search_tokens)
        {
            tokens += state.inputs[windows].elem_count()
                / state.inputs[windows].dim(candle_core::D::Minus1)?.max(1);
            windows += 1;
        }
        let outcome = crate::osl::search_layer(
            state.layer,
            &state.stats,
            &policy_of,
            &state.inputs[..windows],
            &state.float_outputs[..windows],
        )?;
        state.fold(outcome.smoothing);
        for (local, choice) in outcome.choices {
            state.smooth_alphas.insert(local, choice.alpha);
        }
        Ok(())
    }
}
