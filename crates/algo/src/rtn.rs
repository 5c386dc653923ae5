//! Round-to-nearest weight quantization (spec §3.2), applied through the Rewrite API: every Linear
//! inside a sub-graph (a decoder layer) is replaced, under its own name, by a
//! `WeightQuantLinear` holding the integer weight and its scales.

use candle_core::{Device, Tensor};
use gstick_nn::cell::downcast;
use gstick_nn::cells::Linear;
use gstick_nn::{Cell, CellCtx, Network, Param};
use gstick_quant::{QuantizedWeight, WeightScheme};
use gstick_rewrite::{Arg, NewNode, Op};

use crate::ptq_config::PtqConfig;
use crate::LayerPolicies;

/// A Linear whose weight is quantized: the integers and scales are kept (for export), and the
/// forward pass uses the weight they stand for (fake quantization; real integer kernels come
/// with deployment).
#[derive(Clone, Debug)]
pub struct WeightQuantLinear {
    pub quantized: std::sync::Arc<QuantizedWeight>,
    /// The dequantized weight, (out, in).
    pub weight: Param,
    pub bias: Option<Param>,
    pub label: String,
}

impl Cell for WeightQuantLinear {
    fn kind(&self) -> &'static str {
        "WeightQuantLinear"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        let as_linear = Linear {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
        };
        as_linear.forward(inputs, ctx)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        let mut p = vec![("weight", &self.weight)];
        p.extend(self.bias.as_ref().map(|b| ("bias", b)));
        p
    }

    fn summary(&self) -> String {
        format!(
            "{} ({} x {})",
            self.label, self.quantized.rows, self.quantized.cols
        )
    }
}

/// Quantizes one Linear with `scheme`.
pub fn quantize_linear(
    linear: &Linear,
    scheme: WeightScheme,
    label: &str,
) -> gstick_nn::Result<WeightQuantLinear> {
    let w = linear.weight.tensor();
    let (rows, cols) = w.dims2()?;
    let values: Vec<f32> = w.flatten_all()?.to_vec1()?;
    let q = scheme
        .quantize_weight(&values, rows, cols)
        .map_err(|e| gstick_nn::Error::Config(e.to_string()))?;
    let dequantized = Tensor::from_vec(q.dequantize(), (rows, cols), &Device::Cpu)?;
    Ok(WeightQuantLinear {
        quantized: std::sync::Arc::new(q),
        weight: Param::buffer(dequantized)?,
        bias: linear.bias.clone(),
        label: label.to_string(),
    })
}

/// What happened to one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    pub name: String,
    /// The original's summary string (`W8-per_channel`) or `NA`.
    pub summary: String,
}

/// Replaces every Linear inside the network's sub-graphs by its RTN-quantized version, each with
/// the configuration its layer policy (or the network configuration) gives. Blacklisted layers and
/// layers whose configuration quantizes no weights are reported as `NA`. All or nothing: on an
/// error the network is left as it was.
pub fn apply_rtn(
    net: &mut Network,
    config: &PtqConfig,
    policies: Option<&LayerPolicies>,
) -> crate::Result<Vec<LayerReport>> {
    config.validate()?;
    let mut reports = Vec::new();
    net.transaction(|g| walk(g, "", false, config, policies, &mut reports))?;
    Ok(reports)
}

fn walk(
    g: &mut Network,
    prefix: &str,
    inside: bool,
    config: &PtqConfig,
    policies: Option<&LayerPolicies>,
    reports: &mut Vec<LayerReport>,
) -> crate::Result<()> {
    for id in g.node_ids().to_vec() {
        let node = g.node(id)?;
        let name = if prefix.is_empty() {
            node.name().to_string()
        } else {
            format!("{prefix}.{}", node.name())
        };
        if let Op::SubGraph { .. } = node.op() {
            walk(g.subgraph_mut(id)?, &name, true, config, policies, reports)?;
            continue;
        }
        let Some(linear) = node.cell().and_then(|c| downcast::<Linear>(c.as_ref())) else {
            continue;
        };
        if !inside {
            continue; // embeddings and heads stay in float, as in the original
        }
        let policy = match policies {
            Some(p) => p.resolve(&name, config)?,
            None => config,
        };
        let scheme = match policy.weight_scheme() {
            Some(s) if !policy.is_blacklisted(&name) => s,
            _ => {
                reports.push(LayerReport {
                    name,
                    summary: "NA".into(),
                });
                continue;
            }
        };
        let label = policy.summary();
        let quantized =
            quantize_linear(linear, scheme, &label).map_err(|e| crate::Error::Layer {
                layer: name.clone(),
                message: e.to_string(),
            })?;
        let input = node
            .inputs()
            .first()
            .copied()
            .ok_or_else(|| crate::Error::Layer {
                layer: name.clone(),
                message: "Linear without input".into(),
            })?;
        let local = node.name().to_string();
        g.replace(
            id,
            vec![NewNode::cell(
                local,
                Box::new(quantized) as Box<dyn Cell>,
                vec![Arg::Node(input)],
            )],
        )?;
        reports.push(LayerReport {
            name,
            summary: label,
        });
    }
    Ok(())
}
