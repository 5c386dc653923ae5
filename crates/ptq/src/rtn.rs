//! Round-to-nearest weight quantization of a whole in-memory network (spec §3.2), without
//! calibration: every Linear inside a sub-graph (a decoder layer) is replaced, under its own
//! name, by a `WeightQuantLinear` holding the integer weight and its scales. Heads and
//! embeddings stay in float, as in the original.

use std::sync::Arc;

use gstick_nn::cell::downcast;
use gstick_nn::cells::Linear;
use gstick_nn::{Cell, Network};

use crate::fake_quant_linear::{linear_weight, WeightQuantLinear};
use crate::{LayerPolicies, PtqConfig};

/// What happened to one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    pub name: String,
    /// The original's summary string (`W8-per_channel`) or `NA`.
    pub summary: String,
}

/// Quantizes one Linear with the scheme `policy` gives.
fn quantize_linear(
    linear: &Linear,
    policy: &PtqConfig,
) -> crate::Result<Option<WeightQuantLinear>> {
    let Some(scheme) = policy.weight_scheme() else {
        return Ok(None);
    };
    let (values, rows, cols) = linear_weight(linear)?;
    let q = scheme
        .quantize_weight(&values, rows, cols)
        .map_err(|e| gstick_nn::Error::Config(e.to_string()))?;
    // Without calibration there is no input range: static activations are refused here.
    let activation = policy
        .activation_quant(None)
        .map_err(gstick_nn::Error::Config)?;
    Ok(Some(WeightQuantLinear::new(
        Arc::new(q),
        linear.bias.clone(),
        activation,
        &policy.summary(),
    )?))
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
    crate::supported::check(config)?;
    let mut reports = Vec::new();
    net.replace_cells(|site| {
        let Some(linear) = downcast::<Linear>(site.cell.as_ref()) else {
            return Ok(None);
        };
        if site.depth == 0 {
            return Ok(None); // embeddings and heads stay in float
        }
        let name = site.qualified.to_string();
        let policy = match policies {
            Some(p) => p.resolve(&name, config)?,
            None => config,
        };
        let quantized = if policy.is_blacklisted(&name) {
            None
        } else {
            quantize_linear(linear, policy).map_err(|e| crate::Error::Layer {
                layer: name.clone(),
                message: e.to_string(),
            })?
        };
        reports.push(LayerReport {
            name,
            summary: quantized
                .as_ref()
                .map_or_else(|| "NA".to_string(), |q| q.label.clone()),
        });
        Ok::<_, crate::Error>(quantized.map(|q| Box::new(q) as Box<dyn Cell>))
    })?;
    Ok(reports)
}
