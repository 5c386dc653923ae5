//! The layer-wise PTQ pipeline (spec §3.1) on a Llama-family model. For each decoder layer, in
//! order: load the layer; rewrite observers in front of the Linears to quantize; run the layer on
//! the cached inputs (float outputs kept); take the observers out; run the searches (AWQ scales,
//! weight clipping); quantize each Linear (RTN or GPTQ) and rewrite it into a
//! `WeightQuantLinear`; run the quantized layer on the same inputs, whose outputs feed the next
//! layer (or the float outputs, when asked). Only one layer's weights are resident at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use gstick_models::layerwise::{run_layer, LayerwiseLm};
use gstick_models::llama::WeightSource;
use gstick_nn::cell::downcast;
use gstick_nn::cells::Linear;
use gstick_nn::{Cell, Executor, Mode, Network};
use gstick_quant::QuantizedWeight;
use gstick_rewrite::{Arg, NewNode};
use serde::Serialize;

use crate::gptq::gptq;
use crate::observer::{InputStats, ObserveSpec, Observers};
use crate::ptq_config::{OutliersSuppression, PrecisionRecovery, PtqConfig};
use crate::rtn::{linear_weight, WeightQuantLinear};
use crate::{Error, LayerPolicies, Result};

/// Settings of the pipeline itself (the algorithms' settings live in [`PtqConfig`]).
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Feed each layer the previous layer's quantized outputs (the default, as the original) or
    /// its float outputs.
    pub feed_quantized: bool,
    /// Input rows each observer keeps for searches and error reports, over all windows.
    pub sample_rows: usize,
    /// Round every scale to f16 after quantizing, so that GGUF and the GPTQ format (which store
    /// f16 scales) hold exactly the weights the pipeline evaluated.
    pub f16_scales: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            feed_quantized: true,
            sample_rows: 4096,
            f16_scales: true,
        }
    }
}

/// What happened to one Linear.
#[derive(Clone, Debug, Serialize)]
pub struct LinearRecord {
    /// Full name (`model.layers.3.self_attn.q_proj`).
    pub name: String,
    /// The original's summary string (`GPTQ-W4-per_group`) or `NA`.
    pub summary: String,
    pub rows: usize,
    pub cols: usize,
    /// ‖XWᵀ − XQᵀ‖² / ‖XWᵀ‖² on the observer's sampled input rows (0 when not quantized).
    pub relative_output_error: f64,
    /// GPTQ's dampening, as a fraction of the mean Hessian diagonal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gptq_damp: Option<f64>,
    pub seconds: f64,
}

/// Where a layer's time went, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LayerTiming {
    /// Forward passes (float with observers, then quantized), without the statistics.
    pub forward: f64,
    /// Statistics inside the observers (Hessian accumulation, sampling).
    pub statistics: f64,
    /// Scale and clip searches.
    pub search: f64,
    /// Quantization (RTN, or the GPTQ solve).
    pub quantize: f64,
    pub total: f64,
}

/// What happened to one decoder layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerRecord {
    pub index: usize,
    /// Σ‖y − ŷ‖² / Σ‖y‖² between the float and the quantized layer's outputs on the same inputs.
    pub relative_output_error: f64,
    pub timing: LayerTiming,
    pub linears: Vec<LinearRecord>,
}

/// The pipeline's product: quantized weights by full name, float tensors that a search changed
/// (AWQ folds its scales into the preceding norm or Linear), and the per-layer records.
pub struct QuantizedLm {
    pub weights: BTreeMap<String, Arc<QuantizedWeight>>,
    pub float_overrides: BTreeMap<String, Tensor>,
    pub layers: Vec<LayerRecord>,
}

/// How one Linear of a layer is treated.
struct Plan {
    local: String,
    full: String,
    policy: Option<PtqConfig>,
}

/// Runs the pipeline over every decoder layer of `lm`, starting from the embedded calibration
/// windows. `on_layer` is called after each layer (progress).
pub fn quantize_lm<S: WeightSource>(
    lm: &mut LayerwiseLm<S>,
    mut inputs: Vec<Tensor>,
    config: &PtqConfig,
    policies: Option<&LayerPolicies>,
    options: &PipelineOptions,
    on_layer: &mut dyn FnMut(&LayerRecord),
) -> Result<QuantizedLm> {
    config.validate()?;
    if inputs.is_empty() {
        return Err(Error::Layer {
            layer: "model".into(),
            message: "no calibration windows".into(),
        });
    }
    let mut out = QuantizedLm {
        weights: BTreeMap::new(),
        float_overrides: BTreeMap::new(),
        layers: Vec::new(),
    };
    for index in 0..lm.config.layers {
        let prefix = format!("model.layers.{index}");
        let mut layer = lm.layer(index)?;
        let (record, next) = quantize_layer(
            &mut layer, &prefix, index, &inputs, config, policies, options, &mut out,
        )
        .map_err(|e| match e {
            Error::Layer { .. } => e,
            other => Error::Layer {
                layer: prefix.clone(),
                message: other.to_string(),
            },
        })?;
        on_layer(&record);
        out.layers.push(record);
        inputs = next;
    }
    Ok(out)
}

/// Quantizes one decoder layer in place and returns its record and the next layer's inputs.
#[allow(clippy::too_many_arguments)]
pub fn quantize_layer(
    layer: &mut Network,
    prefix: &str,
    index: usize,
    inputs: &[Tensor],
    config: &PtqConfig,
    policies: Option<&LayerPolicies>,
    options: &PipelineOptions,
    out: &mut QuantizedLm,
) -> Result<(LayerRecord, Vec<Tensor>)> {
    let start = Instant::now();
    let mut timing = LayerTiming::default();
    let plans = plan_layer(layer, prefix, config, policies)?;
    let targets: Vec<String> = plans
        .iter()
        .filter(|p| p.policy.is_some())
        .map(|p| p.local.clone())
        .collect();
    let needs_hessian = plans.iter().any(|p| {
        p.policy
            .as_ref()
            .is_some_and(|c| c.precision_recovery == PrecisionRecovery::Gptq)
    });
    let spec = ObserveSpec {
        hessian: needs_hessian,
        rows_per_call: options.sample_rows.div_ceil(inputs.len()).max(1),
    };

    // Float pass with observers.
    let observers = Observers::insert(layer, &targets, spec)?;
    let t = Instant::now();
    let mut exec = Executor::new(Mode::Eval, 0);
    exec.check_finite = true;
    let float_out = run_layer(layer, &mut exec, inputs)?;
    let float_seconds = t.elapsed().as_secs_f64();
    let stats = observers.remove(layer)?;
    let mut seen = std::collections::BTreeSet::new();
    timing.statistics = stats
        .values()
        .filter(|s| seen.insert(Arc::as_ptr(s)))
        .map(|s| s.seconds)
        .sum();
    timing.forward = (float_seconds - timing.statistics).max(0.0);

    // Searches.
    let t = Instant::now();
    let mut scaled: BTreeMap<String, (Arc<InputStats>, Vec<f32>)> = BTreeMap::new();
    if plans.iter().any(|p| {
        p.policy
            .as_ref()
            .is_some_and(|c| c.outliers_suppression == OutliersSuppression::Awq || c.weight_clip)
    }) {
        let policy_of = |local: &str| {
            plans
                .iter()
                .find(|p| p.local == local)
                .and_then(|p| p.policy.clone())
        };
        let outcome = crate::awq::search_layer(layer, &stats, &policy_of)?;
        for (local, tensor) in outcome.overrides {
            out.float_overrides
                .insert(format!("{prefix}.{local}"), tensor);
        }
        // A scaled Linear now reads x/s: its statistics follow.
        for (local, s) in &outcome.scales {
            if let Some(st) = stats.get(local) {
                let divided = Arc::new(st.divided_by(s));
                scaled.insert(local.clone(), (divided, s.clone()));
            }
        }
    }
    timing.search = t.elapsed().as_secs_f64();

    // Quantize and rewrite.
    let t = Instant::now();
    let mut linears = Vec::new();
    for plan in &plans {
        let lt = Instant::now();
        let id = layer.find(&plan.local)?;
        let node = layer.node(id)?;
        let linear = node
            .cell()
            .and_then(|c| downcast::<Linear>(c.as_ref()))
            .ok_or_else(|| Error::Layer {
                layer: plan.full.clone(),
                message: "not a Linear any more".into(),
            })?
            .clone();
        let (w, rows, cols) = linear_weight(&linear)?;
        let Some(policy) = &plan.policy else {
            linears.push(LinearRecord {
                name: plan.full.clone(),
                summary: "NA".into(),
                rows,
                cols,
                relative_output_error: 0.0,
                gptq_damp: None,
                seconds: 0.0,
            });
            continue;
        };
        let scheme = policy.weight_scheme().ok_or_else(|| Error::Layer {
            layer: plan.full.clone(),
            message: "the policy quantizes no weights".into(),
        })?;
        let layer_err = |m: String| Error::Layer {
            layer: plan.full.clone(),
            message: m,
        };
        let stat = match scaled.get(&plan.local) {
            Some((s, _)) => s,
            None => stats
                .get(&plan.local)
                .ok_or_else(|| layer_err("no statistics were gathered".into()))?,
        };
        let (mut q, damp) = if policy.precision_recovery == PrecisionRecovery::Gptq {
            let h = stat
                .hessian
                .as_ref()
                .ok_or_else(|| layer_err("no Hessian was gathered".into()))?;
            let (q, report) = gptq(&w, rows, cols, h, scheme, &policy.gptq)
                .map_err(|e| layer_err(e.to_string()))?;
            (q, Some(report.damp_percent))
        } else {
            let q = scheme
                .quantize_weight(&w, rows, cols)
                .map_err(|e| layer_err(e.to_string()))?;
            (q, None)
        };
        if options.f16_scales {
            q.round_scales_to_f16()
                .map_err(|e| layer_err(e.to_string()))?;
        }
        let label = policy.summary();
        let cell = WeightQuantLinear::new(q, linear.bias.clone(), &label)?;
        let error = relative_linear_error(stat, linear.weight.tensor(), cell.weight.tensor())?;
        out.weights
            .insert(plan.full.clone(), cell.quantized.clone());
        let input = *layer
            .node(id)?
            .inputs()
            .first()
            .ok_or_else(|| layer_err("a Linear without input".into()))?;
        layer.replace(
            id,
            vec![NewNode::cell(
                plan.local.clone(),
                Box::new(cell) as Box<dyn Cell>,
                vec![Arg::Node(input)],
            )],
        )?;
        linears.push(LinearRecord {
            name: plan.full.clone(),
            summary: label,
            rows,
            cols,
            relative_output_error: error,
            gptq_damp: damp,
            seconds: lt.elapsed().as_secs_f64(),
        });
    }
    timing.quantize = t.elapsed().as_secs_f64();

    // Quantized pass.
    let t = Instant::now();
    let quant_out = run_layer(layer, &mut exec, inputs)?;
    timing.forward += t.elapsed().as_secs_f64();
    let relative_output_error = relative_error(&float_out, &quant_out)?;
    timing.total = start.elapsed().as_secs_f64();
    let record = LayerRecord {
        index,
        relative_output_error,
        timing,
        linears,
    };
    let next = if options.feed_quantized {
        quant_out
    } else {
        float_out
    };
    Ok((record, next))
}

/// Each Linear of the layer with the configuration that applies to it (`None`: left in float).
fn plan_layer(
    layer: &Network,
    prefix: &str,
    config: &PtqConfig,
    policies: Option<&LayerPolicies>,
) -> Result<Vec<Plan>> {
    let mut plans = Vec::new();
    for (_, node) in layer.nodes() {
        if node
            .cell()
            .is_none_or(|c| downcast::<Linear>(c.as_ref()).is_none())
        {
            continue;
        }
        let local = node.name().to_string();
        let full = format!("{prefix}.{local}");
        let policy = match policies {
            Some(p) => p.resolve(&full, config)?,
            None => config,
        };
        let quantize = policy.weight_scheme().is_some() && !policy.is_blacklisted(&full);
        plans.push(Plan {
            local,
            full,
            policy: quantize.then(|| policy.clone()),
        });
    }
    Ok(plans)
}

/// ‖XWᵀ − XQᵀ‖² / ‖XWᵀ‖² on (at most 1024 of) the sampled input rows.
fn relative_linear_error(stats: &InputStats, w: &Tensor, q: &Tensor) -> Result<f64> {
    let rows = stats.sample_rows.min(1024);
    if rows == 0 {
        return Ok(0.0);
    }
    let x = Tensor::from_slice(
        &stats.sample[..rows * stats.cols],
        (rows, stats.cols),
        &Device::Cpu,
    )?;
    let y = x.matmul(&w.t()?)?;
    let yq = x.matmul(&q.t()?)?;
    let num = (&y - &yq)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let den = y.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok(if den > 0.0 { num / den } else { 0.0 })
}

/// Σ‖a − b‖² / Σ‖a‖² over matching tensors.
fn relative_error(a: &[Tensor], b: &[Tensor]) -> Result<f64> {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        num += (x - y)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        den += x.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(if den > 0.0 { num / den } else { 0.0 })
}

/// The per-layer summary table: one row per Linear with its summary string and errors.
pub fn summary_table(layers: &[LayerRecord]) -> String {
    let mut s = format!(
        "{:<40} {:<26} {:>12} {:>12}\n",
        "layer", "quantization", "rel. error", "layer error"
    );
    for l in layers {
        for (k, lin) in l.linears.iter().enumerate() {
            let layer_err = if k == 0 {
                format!("{:.3e}", l.relative_output_error)
            } else {
                String::new()
            };
            s.push_str(&format!(
                "{:<40} {:<26} {:>12.3e} {:>12}\n",
                lin.name, lin.summary, lin.relative_output_error, layer_err
            ));
        }
    }
    s
}

/// Puts the pipeline's result into a float network of the whole model (fake quantization):
/// the changed float tensors are set and every quantized Linear is rewritten into a
/// `WeightQuantLinear`.
pub fn install(net: &mut Network, q: &QuantizedLm) -> Result<()> {
    for (name, p) in gstick_nn::named_params(net) {
        if let Some(t) = q.float_overrides.get(&name) {
            p.set(t)?;
        }
    }
    let weights = q
        .weights
        .iter()
        .map(|(k, v)| (k.clone(), (**v).clone()))
        .collect();
    crate::rtn::install_quantized(net, weights)
}
