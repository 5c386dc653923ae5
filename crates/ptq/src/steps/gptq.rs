//! GPTQ as a step: each target's weight is quantized against the Hessian of its inputs (after
//! any AWQ scale, which the statistics already follow).

use super::{target_error, LayerState, Phase, PtqStep};
use crate::config::PrecisionRecovery;
use crate::gptq::gptq;
use crate::{PtqConfig, Result};

/// GPTQ precision recovery (spec §3.7).
pub struct GptqStep;

impl PtqStep for GptqStep {
    fn name(&self) -> &'static str {
        "gptq"
    }

    fn applies_to(&self, policy: &PtqConfig) -> bool {
        policy.weight_scheme().is_some() && policy.precision_recovery == PrecisionRecovery::Gptq
    }

    fn needs_hessian(&self) -> bool {
        true
    }

    fn phase(&self) -> Phase {
        Phase::Quantize
    }

    fn run(&self, state: &mut LayerState) -> Result<()> {
        state.quantize_targets(self, |state, target, scheme, (w, rows, cols)| {
            let settings = &target.policy.gptq;
            let h = state
                .stats_of(target)?
                .gptq_hessian(settings.sink_share)
                .ok_or_else(|| target_error(target, "no Hessian was gathered"))?;
            let (q, report) = gptq(&w, rows, cols, &h, scheme, settings)
                .map_err(|e| target_error(target, e.to_string()))?;
            Ok((q, Some(report.damp_percent)))
        })
    }
}
