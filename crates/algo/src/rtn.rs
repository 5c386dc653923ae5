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

impl WeightQuantLinear {
    /// The cell for a quantized weight, keeping the float bias.
    pub fn new(
        q: QuantizedWeight,
        bias: Option<Param>,
        label: &str,
    ) -> gstick_nn::Result<WeightQuantLinear> {
        let dequantized = Tensor::from_vec(q.dequantize(), (q.rows, q.cols), &Device::Cpu)?;
        Ok(WeightQuantLinear {
            quantized: std::sync::Arc::new(q),
            weight: Param::buffer(dequantized)?,
            bias,
            label: label.to_string(),
        })
    }
}

/// The weight of a Linear as row-major values with its (rows, cols).
pub fn linear_weight(linear: &Linear) -> gstick_nn::Result<(Vec<f32>, usize, usize)> {
    let w = linear.weight.tensor();
    let (rows, cols) = w.dims2()?;
    Ok((w.flatten_all()?.to_vec1()?, rows, cols))
}

/// Quantizes one Linear with `scheme`.
pub fn quantize_linear(
    linear: &Linear,
    scheme: WeightScheme,
    label: &str,
) -> gstick_nn::Result<WeightQuantLinear> {
    let (values, rows, cols) = linear_weight(linear)?;
    let q = scheme
        .quantize_weight(&values, rows, cols)
        .map_err(|e| gstick_nn::Error::Config(e.to_string()))?;
    WeightQuantLinear::new(q, linear.bias.clone(), label)
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

/// Deploy mode: replaces every Linear whose full name (`model.layers.0.mlp.up_proj`) has an
/// entry in `weights` by a `WeightQuantLinear` of those integers; all or nothing. An entry with
/// no matching Linear is an error.
pub fn install_quantized(
    net: &mut Network,
    mut weights: std::collections::BTreeMap<String, QuantizedWeight>,
) -> crate::Result<()> {
    fn walk(
        g: &mut Network,
        prefix: &str,
        weights: &mut std::collections::BTreeMap<String, QuantizedWeight>,
    ) -> crate::Result<()> {
        for id in g.node_ids().to_vec() {
            let node = g.node(id)?;
            let name = if prefix.is_empty() {
                node.name().to_string()
            } else {
                format!("{prefix}.{}", node.name())
            };
            if let Op::SubGraph { .. } = node.op() {
                walk(g.subgraph_mut(id)?, &name, weights)?;
                continue;
            }
            let Some(linear) = node.cell().and_then(|c| downcast::<Linear>(c.as_ref())) else {
                continue;
            };
            let Some(q) = weights.remove(&name) else {
                continue;
            };
            let granularity = match q.scheme.granularity {
                gstick_quant::Granularity::PerGroup(_) => "per_group",
                _ => "per_channel",
            };
            let label = format!("W{}-{granularity}", q.scheme.bits);
            let cell = WeightQuantLinear::new(q, linear.bias.clone(), &label)?;
            let input = node.inputs().to_vec();
            let local = node.name().to_string();
            g.replace(
                id,
                vec![NewNode::cell(
                    local,
                    Box::new(cell) as Box<dyn Cell>,
                    input.into_iter().map(Arg::Node).collect(),
                )],
            )?;
        }
        Ok(())
    }
    net.transaction(|g| {
        walk(g, "", &mut weights)?;
        match weights.keys().next() {
            Some(missing) => Err(crate::Error::Layer {
                layer: missing.clone(),
                message: "quantized weight for a Linear the model does not have".into(),
            }),
            None => Ok(()),
        }
    })
}
