//! Pruning as a step: each target's weight gets zeros in the requested pattern, by magnitude,
//! by Wanda's score, or by SparseGPT with error compensation. SparseGPT with a weight dtype
//! quantizes in the same pass and installs the quantized Linear; otherwise the pruned float
//! weight replaces the Linear's (a float override), and RTN, when asked, rounds it afterwards
//! (pruned weights round to exactly zero on any grid that holds zero).

use std::time::Instant;

use candle_core::{Device, Tensor};
use gstick_nn::cells::Linear;
use gstick_nn::Cell;

use super::{relative_linear_error, target_error, LayerState, Phase, PtqStep, Target};
use crate::config::PruneMethod;
use crate::fake_quant_linear::linear_weight;
use crate::records::LinearRecord;
use crate::sparsegpt::{sparsegpt, SparseGptOutput, SparseGptSettings};
use crate::sparsity::{check_shape, magnitude_mask, wanda_mask};
use crate::{PtqConfig, Result};

/// Weight pruning (magnitude, Wanda, SparseGPT).
pub struct PruneStep;

impl PtqStep for PruneStep {
    fn name(&self) -> &'static str {
        "prune"
    }

    fn applies_to(&self, policy: &PtqConfig) -> bool {
        policy.prune.is_on()
    }

    fn needs_hessian(&self) -> bool {
        true // Wanda's input norms and SparseGPT's solve
    }

    fn phase(&self) -> Phase {
        Phase::Quantize
    }

    fn run(&self, state: &mut LayerState) -> Result<()> {
        let targets: Vec<Target> = state.targets_of(self).cloned().collect();
        for target in &targets {
            let started = Instant::now();
            let linear = state.linear(target)?;
            let (w, rows, cols) = linear_weight(&linear)?;
            let prune = &target.policy.prune;
            let mut damp = None;
            check_shape(prune.pattern, cols).map_err(|m| target_error(target, m))?;
            let hessian = || {
                state
                    .stats_of(target)?
                    .gptq_hessian(0.0)
                    .ok_or_else(|| target_error(target, "no Hessian was gathered"))
            };
            let apply = |mask: Vec<bool>| -> Vec<f32> {
                w.iter()
                    .zip(mask)
                    .map(|(&v, m)| if m { 0.0 } else { v })
                    .collect()
            };
            let pruned = match prune.method {
                PruneMethod::None => continue,
                PruneMethod::Magnitude => apply(magnitude_mask(
                    &w,
                    rows,
                    cols,
                    prune.pattern,
                    prune.sparsity,
                )),
                PruneMethod::Wanda => {
                    let h = hessian()?;
                    let diag: Vec<f64> = (0..cols).map(|j| h.h[j * cols + j]).collect();
                    apply(wanda_mask(
                        &w,
                        rows,
                        cols,
                        &diag,
                        prune.pattern,
                        prune.sparsity,
                    ))
                }
                PruneMethod::Sparsegpt => {
                    let settings = SparseGptSettings {
                        pattern: prune.pattern,
                        sparsity: prune.sparsity,
                        block_size: prune.block_size,
                        damp_percent: prune.damp_percent,
                    };
                    let scheme = target.policy.weight_scheme();
                    let (out, report) = sparsegpt(&w, rows, cols, &hessian()?, scheme, &settings)
                        .map_err(|e| target_error(target, e.to_string()))?;
                    damp = Some(report.damp_percent);
                    match out {
                        SparseGptOutput::Quantized(q) => {
                            state.originals.insert(target.local.clone(), linear.clone());
                            state.install(target, q, damp, started)?;
                            continue;
                        }
                        SparseGptOutput::Float(p) => p,
                    }
                }
            };
            let weight = Tensor::from_vec(pruned, (rows, cols), &Device::Cpu)?;
            let bias = linear.bias.as_ref().map(|b| b.tensor().clone());
            let cell = Linear::from_tensors(weight.clone(), bias)?;
            let error = relative_linear_error(state.stats_of(target)?, &linear, &cell)?;
            let id = state.layer.find(&target.local)?;
            state
                .layer
                .replace_cell(id, Box::new(cell) as Box<dyn Cell>)?;
            // With a weight dtype RTN rounds the pruned weight next; the float copy is not kept.
            if target.policy.weight_scheme().is_none() {
                state
                    .float_overrides
                    .push((format!("{}.weight", target.full), weight));
            }
            state.originals.insert(target.local.clone(), linear);
            state.pruned.insert(
                target.full.clone(),
                LinearRecord {
                    name: target.full.clone(),
                    summary: target.policy.summary(),
                    rows,
                    cols,
                    relative_output_error: error,
                    gptq_damp: damp,
                    smooth_alpha: None,
                    seconds: started.elapsed().as_secs_f64(),
                },
            );
        }
        Ok(())
    }
}
