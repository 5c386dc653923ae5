//! PTQ steps: the stages the layer-wise pipeline runs on each decoder layer after its float pass
//! has filled the observers. A step says which Linears it acts on (by their configuration) and
//! which statistics it needs, then searches and transforms: AWQ folds scales into the layer and
//! clips weights, RTN and GPTQ quantize Linears into `WeightQuantLinear` cells. The pipeline
//! runs the steps a recipe asks for, in order ([`steps_for`]); a new algorithm is a new step.

mod awq;
mod gptq;
mod osl;
mod prune;
mod rtn;
mod smooth;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use gstick_nn::cell::downcast;
use gstick_nn::cells::Linear;
use gstick_nn::{Cell, Network};
use gstick_quant::{QuantizedLinear, QuantizedWeight, WeightScheme};

pub use awq::AwqStep;
pub use gptq::GptqStep;
pub use osl::OslStep;
pub use prune::PruneStep;
pub use rtn::RtnStep;
pub use smooth::SmoothStep;

use crate::fake_quant_linear::{linear_weight, WeightQuantLinear};
use crate::observer::InputStats;
use crate::pipeline::PipelineOptions;
use crate::records::LinearRecord;
use crate::{Error, PtqConfig, Recipe, Result};

/// A Linear of the layer that is to be quantized, with the configuration that applies to it.
#[derive(Clone, Debug)]
pub struct Target {
    /// Name inside the layer (`self_attn.q_proj`).
    pub local: String,
    /// Full name (`model.layers.3.self_attn.q_proj`).
    pub full: String,
    pub policy: PtqConfig,
}

/// Where a step's time is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Search,
    Quantize,
}

/// One decoder layer while its steps run.
pub struct LayerState<'a> {
    pub layer: &'a mut Network,
    /// The layer's full name (`model.layers.3`).
    pub prefix: &'a str,
    pub targets: &'a [Target],
    /// What each target's observer saw, by local name (Linears reading one value share it). A
    /// step that changes a Linear's input (AWQ's scale) replaces its entry.
    pub stats: BTreeMap<String, Arc<InputStats>>,
    /// Float parameters a step changed, by full parameter name (AWQ's scaled norms).
    pub float_overrides: Vec<(String, Tensor)>,
    /// Quantized Linears, by full name, with their records.
    pub quantized: BTreeMap<String, (QuantizedLinear, LinearRecord)>,
    /// Linears pruned but kept float, by full name, with their records.
    pub pruned: BTreeMap<String, LinearRecord>,
    /// The float Linears before a step replaced their weights (pruning), by local name: the
    /// reference of the error reports.
    pub originals: BTreeMap<String, Linear>,
    /// The smoothing strength α each smoothed Linear got (SmoothQuant's, or OSL's choice), by
    /// local name.
    pub smooth_alphas: BTreeMap<String, f64>,
    /// The layer's calibration inputs and its float outputs on them (for searches that run the
    /// whole layer, as OSL's).
    pub inputs: &'a [Tensor],
    pub float_outputs: &'a [Tensor],
    pub options: &'a PipelineOptions,
}

/// A stage of the per-layer pipeline.
pub trait PtqStep {
    fn name(&self) -> &'static str;
    /// Whether the step acts on a Linear quantized with `policy`.
    fn applies_to(&self, policy: &PtqConfig) -> bool;
    /// Whether the float pass must accumulate the inputs' Hessian for this step.
    fn needs_hessian(&self) -> bool {
        false
    }
    fn phase(&self) -> Phase;
    /// Runs the step on every target it applies to.
    fn run(&self, state: &mut LayerState) -> Result<()>;
}

/// The steps a recipe needs, in pipeline order: SmoothQuant's, OSL's and AWQ's scales and the
/// clipper first, then pruning (which may quantize too), then the quantizers.
pub fn steps_for(recipe: &Recipe) -> Vec<Box<dyn PtqStep>> {
    let all: Vec<Box<dyn PtqStep>> = vec![
        Box::new(SmoothStep),
        Box::new(OslStep),
        Box::new(AwqStep),
        Box::new(PruneStep),
        Box::new(GptqStep),
        Box::new(RtnStep),
    ];
    all.into_iter()
        .filter(|s| recipe.configs().any(|(_, c)| s.applies_to(c)))
        .collect()
}

/// The policy of the target named `local` in `targets` (what the searches ask of a Linear).
pub(crate) fn policy_in(targets: &[Target]) -> impl Fn(&str) -> Option<PtqConfig> + '_ {
    move |local| {
        targets
            .iter()
            .find(|t| t.local == local)
            .map(|t| t.policy.clone())
    }
}

impl LayerState<'_> {
    /// Takes in the scales a search folded into the layer: the changed norms become float
    /// overrides, and each scaled Linear's statistics are divided by its scale (its input is
    /// now x/s).
    pub(crate) fn fold(&mut self, outcome: crate::awq::SearchOutcome) {
        for (local, tensor) in outcome.overrides {
            let name = format!("{}.{local}", self.prefix);
            self.float_overrides.push((name, tensor));
        }
        for (local, s) in &outcome.scales {
            if let Some(st) = self.stats.get(local) {
                let divided = Arc::new(st.divided_by(s));
                self.stats.insert(local.clone(), divided);
            }
        }
    }

    /// The targets `step` acts on.
    pub fn targets_of<'t>(&'t self, step: &'t dyn PtqStep) -> impl Iterator<Item = &'t Target> {
        self.targets
            .iter()
            .filter(move |t| step.applies_to(&t.policy))
    }

    /// The Linear currently at `target`.
    pub fn linear(&self, target: &Target) -> Result<Linear> {
        let id = self.layer.find(&target.local)?;
        self.layer
            .node(id)?
            .cell()
            .and_then(|c| downcast::<Linear>(c.as_ref()))
            .cloned()
            .ok_or_else(|| target_error(target, "not a Linear any more"))
    }

    /// The statistics of `target`'s input.
    pub fn stats_of(&self, target: &Target) -> Result<&Arc<InputStats>> {
        self.stats
            .get(&target.local)
            .ok_or_else(|| target_error(target, "no statistics were gathered"))
    }

    /// Puts quantized weight `q` in place of `target`'s Linear as a `WeightQuantLinear` and
    /// records it. Scales are rounded to f16 first when the options ask for it.
    pub fn install(
        &mut self,
        target: &Target,
        mut q: QuantizedWeight,
        gptq_damp: Option<f64>,
        started: Instant,
    ) -> Result<()> {
        // Only weight-only layers can go to the formats with f16 scales (GGUF, GPTQ); those
        // with int8 activations keep f32 scales, which smoothing can make small.
        if self.options.f16_scales && target.policy.act_quant_dtype.is_none() {
            q.round_scales_to_f16()
                .map_err(|e| target_error(target, e.to_string()))?;
        }
        let linear = match self.originals.get(&target.local) {
            Some(l) => l.clone(),
            None => self.linear(target)?,
        };
        let label = target.policy.summary();
        let q = Arc::new(q);
        let range = self.stats_of(target)?.range();
        let activation = target
            .policy
            .activation_quant(Some(range))
            .map_err(|e| target_error(target, e))?;
        let cell = WeightQuantLinear::new(q.clone(), linear.bias.clone(), activation, &label)?;
        let error = relative_linear_error(self.stats_of(target)?, &linear, &cell)?;
        let id = self.layer.find(&target.local)?;
        self.layer
            .replace_cell(id, Box::new(cell) as Box<dyn Cell>)?;
        let record = LinearRecord {
            name: target.full.clone(),
            summary: label.clone(),
            rows: q.rows,
            cols: q.cols,
            relative_output_error: error,
            gptq_damp,
            smooth_alpha: self.smooth_alphas.get(&target.local).copied(),
            seconds: started.elapsed().as_secs_f64(),
        };
        self.quantized.insert(
            target.full.clone(),
            (
                QuantizedLinear {
                    weight: q,
                    activation,
                    label,
                },
                record,
            ),
        );
        Ok(())
    }

    /// Quantizes every target `step` applies to with `solve`, which gets the target, its
    /// weight scheme and current weight (row-major, rows, cols) and returns the quantized weight
    /// and GPTQ's dampening if any; each result is installed in place of the Linear.
    pub fn quantize_targets(
        &mut self,
        step: &dyn PtqStep,
        mut solve: impl FnMut(
            &LayerState,
            &Target,
            WeightScheme,
            (Vec<f32>, usize, usize),
        ) -> Result<(QuantizedWeight, Option<f64>)>,
    ) -> Result<()> {
        let targets: Vec<Target> = self.targets_of(step).cloned().collect();
        for target in &targets {
            let started = Instant::now();
            let scheme = target
                .policy
                .weight_scheme()
                .ok_or_else(|| target_error(target, "the policy quantizes no weights"))?;
            let weight = linear_weight(&self.linear(target)?)?;
            let (q, damp) = solve(self, target, scheme, weight)?;
            self.install(target, q, damp, started)?;
        }
        Ok(())
    }
}

pub(crate) fn target_error(target: &Target, message: impl Into<String>) -> Error {
    Error::Layer {
        layer: target.full.clone(),
        message: message.into(),
    }
}

/// ‖f(X) − q(X)‖² / ‖f(X)‖² on (at most 1024 of) the sampled input rows, for the float
/// Linear f and its quantized (or pruned) cell q (with its activation quantization, if any).
fn relative_linear_error(stats: &InputStats, float: &Linear, quantized: &dyn Cell) -> Result<f64> {
    let rows = stats.sample_rows.min(1024);
    if rows == 0 {
        return Ok(0.0);
    }
    let x = Tensor::from_slice(
        &stats.sample[..rows * stats.cols],
        (rows, stats.cols),
        &Device::Cpu,
    )?;
    let mut rng = gstick_nn::rng(0);
    let mut ctx = gstick_nn::CellCtx::new(gstick_nn::Mode::Eval, &mut rng);
    let y = float.forward(std::slice::from_ref(&x), &mut ctx)?;
    let yq = quantized.forward(std::slice::from_ref(&x), &mut ctx)?;
    let num = (&y - &yq)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let den = y.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok(if den > 0.0 { num / den } else { 0.0 })
}
