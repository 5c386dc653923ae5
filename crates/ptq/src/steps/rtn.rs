//! RTN as a step: round each target's (possibly AWQ-scaled and clipped) weight to its grid.

use super::{target_error, LayerState, Phase, PtqStep};
use crate::config::{PrecisionRecovery, PruneMethod};
use crate::{PtqConfig, Result};

/// Round-to-nearest for the Linears without precision recovery (spec §3.2).
pub struct RtnStep;

impl PtqStep for RtnStep {
    fn name(&self) -> &'static str {
        "rtn"
    }

    fn applies_to(&self, policy: &PtqConfig) -> bool {
        // SparseGPT quantizes the weights it prunes itself.
        policy.weight_scheme().is_some()
            && policy.precision_recovery == PrecisionRecovery::None
            && policy.prune.method != PruneMethod::Sparsegpt
    }

    fn phase(&self) -> Phase {
        Phase::Quantize
    }

    fn run(&self, state: &mut LayerState) -> Result<()> {
        state.quantize_targets(self, |_, target, scheme, (w, rows, cols)| {
            let q = scheme
                .quantize_weight(&w, rows, cols)
                .map_err(|e| target_error(target, e.to_string()))?;
            Ok((q, None))
        })
    }
}
