//! The layer-wise PTQ pipeline (spec §3.1). For each decoder layer, in order: take the layer
//! from its source; rewrite observers in front of the Linears to quantize; run the layer on the
//! cached inputs (float outputs kept); take the observers out; run the recipe's steps (searches,
//! then quantizers, each rewriting the layer); run the quantized layer on the same inputs, whose
//! outputs feed the next layer (or the float outputs, when asked); hand the layer back. Only one
//! layer's weights are resident when the source builds layers on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use gstick_models::layerwise::LayerwiseLm;
use gstick_models::llama::WeightSource;
use gstick_nn::cell::downcast;
use gstick_nn::cells::Linear;
use gstick_nn::{Executor, Mode, Network};
use gstick_quant::{FloatTensor, QuantizedModel};

use crate::observer::{ObserveSpec, Observers};
use crate::records::{KvRecord, LayerRecord, LayerTiming, LinearRecord};
use crate::steps::{steps_for, LayerState, Phase, PtqStep, Target};
use crate::supported::check_recipe;
use crate::{Error, Recipe, Result};

/// Settings of the pipeline itself (the algorithms' settings live in the recipe).
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Feed each layer the previous layer's quantized outputs (the default, as the original) or
    /// its float outputs.
    pub feed_quantized: bool,
    /// Input rows each observer keeps for searches and error reports, over all windows.
    pub sample_rows: usize,
    /// Searches that run the whole layer per candidate (OSL's α) use the first calibration
    /// windows up to this many tokens (at least one window): a 128 x 2048 calibration would
    /// otherwise make them 32 times slower than the 16 x 512 one, for the same choice.
    pub search_tokens: usize,
    /// Round the scales of weight-only layers to f16 after quantizing, so that GGUF and the GPTQ
    /// format (which store f16 scales) hold exactly the weights the pipeline evaluated. (Layers
    /// with int8 activations go only to formats with f32 scales.)
    pub f16_scales: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            feed_quantized: true,
            sample_rows: 4096,
            search_tokens: 4096,
            f16_scales: true,
        }
    }
}

/// Where the pipeline takes decoder layers from and gives them back.
pub trait LayerSource {
    fn layers(&self) -> usize;
    /// The full name of layer `index` (`model.layers.3`).
    fn prefix(&self, index: usize) -> String;
    fn take(&mut self, index: usize) -> Result<Network>;
    /// Returns the quantized layer (a source that builds layers on demand drops it).
    fn give_back(&mut self, index: usize, layer: Network) -> Result<()>;
}

impl<S: WeightSource> LayerSource for LayerwiseLm<S> {
    fn layers(&self) -> usize {
        self.config.layers
    }

    fn prefix(&self, index: usize) -> String {
        format!("model.layers.{index}")
    }

    fn take(&mut self, index: usize) -> Result<Network> {
        Ok(self.layer(index)?)
    }

    fn give_back(&mut self, _index: usize, _layer: Network) -> Result<()> {
        Ok(())
    }
}

/// The pipeline's product: the quantized model and the per-layer records.
pub struct PtqResult {
    pub model: QuantizedModel,
    pub layers: Vec<LayerRecord>,
}

/// Runs the recipe over every layer of `source`, starting from the inputs of its first layer
/// (one tensor per calibration window). `on_layer` is called after each layer (progress).
/// Refuses, before any work, a recipe asking for what is not implemented.
pub fn quantize_layers(
    source: &mut dyn LayerSource,
    mut inputs: Vec<Tensor>,
    recipe: &Recipe,
    options: &PipelineOptions,
    on_layer: &mut dyn FnMut(&LayerRecord),
) -> Result<PtqResult> {
    check_recipe(recipe)?;
    if inputs.is_empty() {
        return Err(Error::Layer {
            layer: "model".into(),
            message: "no calibration windows".into(),
        });
    }
    let steps = steps_for(recipe);
    let mut out = PtqResult {
        model: QuantizedModel::default(),
        layers: Vec::new(),
    };
    for index in 0..source.layers() {
        let prefix = source.prefix(index);
        let mut layer = source.take(index)?;
        let record = quantize_layer(
            &mut layer,
            &prefix,
            index,
            &mut inputs,
            recipe,
            &steps,
            options,
            &mut out.model,
        )
        .map_err(|e| match e {
            Error::Layer { .. } => e,
            other => Error::Layer {
                layer: prefix.clone(),
                message: other.to_string(),
            },
        })?;
        source.give_back(index, layer)?;
        on_layer(&record);
        out.layers.push(record);
    }
    Ok(out)
}

/// Quantizes one decoder layer in place; `inputs` become the next layer's inputs.
#[allow(clippy::too_many_arguments)]
pub fn quantize_layer(
    layer: &mut Network,
    prefix: &str,
    index: usize,
    inputs: &mut [Tensor],
    recipe: &Recipe,
    steps: &[Box<dyn PtqStep>],
    options: &PipelineOptions,
    model: &mut QuantizedModel,
) -> Result<LayerRecord> {
    let start = Instant::now();
    let mut timing = LayerTiming::default();
    let (targets, all) = plan_layer(layer, prefix, recipe)?;
    let mut kv_targets = crate::kv::targets(layer, prefix, recipe)?;
    crate::kv::observe(layer, &mut kv_targets)?;
    let active: Vec<&dyn PtqStep> = steps
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| targets.iter().any(|t| s.applies_to(&t.policy)))
        .collect();
    let spec = ObserveSpec {
        hessian: active.iter().any(|s| s.needs_hessian()),
        rows_per_call: options.sample_rows.div_ceil(inputs.len()).max(1),
    };

    // Float pass with observers.
    let locals: Vec<String> = targets.iter().map(|t| t.local.clone()).collect();
    let observers = Observers::insert(layer, &locals, spec)?;
    let t = Instant::now();
    let mut exec = Executor::new(Mode::Eval, 0);
    exec.check_finite = true;
    let float_out: Vec<Tensor> = inputs
        .iter()
        .map(|x| exec.forward1(layer, x))
        .collect::<gstick_nn::Result<_>>()?;
    let float_seconds = t.elapsed().as_secs_f64();
    let stats = observers.remove(layer)?;
    let kv_quants = crate::kv::quantizations(layer, &mut kv_targets)?;
    let mut seen = BTreeSet::new();
    timing.statistics = stats
        .values()
        .filter(|s| seen.insert(Arc::as_ptr(s)))
        .map(|s| s.seconds)
        .sum();
    timing.forward = (float_seconds - timing.statistics).max(0.0);

    // The recipe's steps.
    let mut state = LayerState {
        layer: &mut *layer,
        prefix,
        targets: &targets,
        stats,
        float_overrides: Vec::new(),
        quantized: BTreeMap::new(),
        pruned: BTreeMap::new(),
        originals: BTreeMap::new(),
        smooth_alphas: BTreeMap::new(),
        inputs,
        float_outputs: &float_out,
        options,
    };
    for step in &active {
        let t = Instant::now();
        step.run(&mut state)?;
        let seconds = t.elapsed().as_secs_f64();
        match step.phase() {
            Phase::Search => timing.search += seconds,
            Phase::Quantize => timing.quantize += seconds,
        }
    }
    let LayerState {
        float_overrides,
        mut quantized,
        mut pruned,
        ..
    } = state;
    for (name, t) in float_overrides {
        let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let shape = t.dims().to_vec();
        model
            .float_overrides
            .insert(name, FloatTensor { shape, values });
    }
    let mut linears = Vec::with_capacity(all.len());
    for (full, rows, cols) in all {
        match quantized.remove(&full) {
            Some((q, record)) => {
                model.linears.insert(full, q);
                linears.push(record);
            }
            // Pruned but float, or left alone.
            None => linears.push(pruned.remove(&full).unwrap_or(LinearRecord {
                name: full,
                summary: "NA".into(),
                rows,
                cols,
                relative_output_error: 0.0,
                gptq_damp: None,
                smooth_alpha: None,
                seconds: 0.0,
            })),
        }
    }

    let mut kv_caches = Vec::new();
    for (t, (full, quant)) in kv_targets.iter().zip(kv_quants) {
        crate::kv::install(layer, &t.local, quant.clone())?;
        model.kv_caches.insert(full.clone(), quant);
        kv_caches.push(KvRecord {
            name: full,
            summary: t.summary().to_string(),
        });
    }

    // Quantized pass, one window at a time: each input is replaced by what feeds the next layer.
    let t = Instant::now();
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in inputs.iter_mut().zip(float_out) {
        let yq = exec.forward1(layer, x)?;
        num += (&y - &yq)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        den += y.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        *x = if options.feed_quantized { yq } else { y };
    }
    timing.forward += t.elapsed().as_secs_f64();
    timing.total = start.elapsed().as_secs_f64();
    Ok(LayerRecord {
        index,
        relative_output_error: if den > 0.0 { num / den } else { 0.0 },
        timing,
        linears,
        kv_caches,
    })
}

/// The Linears of a layer to quantize, each with its configuration, and every Linear as
/// (full name, rows, cols) in node order.
type LayerPlan = (Vec<Target>, Vec<(String, usize, usize)>);

fn plan_layer(layer: &Network, prefix: &str, recipe: &Recipe) -> Result<LayerPlan> {
    let (mut targets, mut all) = (Vec::new(), Vec::new());
    for (_, node) in layer.nodes() {
        let Some(linear) = node.cell().and_then(|c| downcast::<Linear>(c.as_ref())) else {
            continue;
        };
        let local = node.name().to_string();
        let full = format!("{prefix}.{local}");
        let policy = recipe.layers.resolve(&full, &recipe.network)?;
        all.push((full.clone(), linear.out_features(), linear.in_features()));
        let acts = policy.weight_scheme().is_some() || policy.prune.is_on();
        if acts && !policy.is_blacklisted(&full) {
            targets.push(Target {
                local,
                full,
                policy: policy.clone(),
            });
        }
    }
    Ok((targets, all))
}
