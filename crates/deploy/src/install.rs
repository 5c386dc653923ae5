//! Installing packed weights: every named Linear of a network becomes a `PackedLinear` that
//! keeps its bias, through one Rewrite transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use gstick_nn::cell::downcast;
use gstick_nn::cells::Linear;
use gstick_nn::{named_params, Cell, Network};
use gstick_quant::kernels::PackedWeight;
use gstick_quant::QuantizedModel;

use crate::packed_linear::PackedLinear;
use crate::{Error, Result};

/// What an install changed.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DeployReport {
    pub layers: usize,
    /// Bytes of the f32 weights the packed ones stand for.
    pub f32_bytes: usize,
    pub packed_bytes: usize,
}

/// Replaces each Linear whose full name (`model.layers.0.mlp.up_proj`) has an entry in `packed`
/// by a `PackedLinear` of that weight and label. All or nothing: an entry without a Linear of
/// that name and shape is an error and leaves the network as it was.
pub fn install_packed(
    net: &mut Network,
    mut packed: BTreeMap<String, (PackedWeight, String)>,
) -> Result<DeployReport> {
    let mut report = DeployReport::default();
    net.transaction(|g| {
        g.replace_cells(|site| {
            let Some(linear) = downcast::<Linear>(site.cell.as_ref()) else {
                return Ok::<_, Error>(None);
            };
            let Some((weight, label)) = packed.remove(site.qualified) else {
                return Ok(None);
            };
            let (rows, cols) = (linear.out_features(), linear.in_features());
            // A skeleton built for deploy holds a placeholder weight; only a real one is checked.
            let placeholder = linear.weight.tensor().elem_count() == 1;
            if !placeholder && (rows, cols) != (weight.rows, weight.cols) {
                return Err(Error::Layer {
                    layer: site.qualified.to_string(),
                    message: format!(
                        "the quantized weight is {}x{}, the Linear {rows}x{cols}",
                        weight.rows, weight.cols
                    ),
                });
            }
            report.layers += 1;
            report.f32_bytes += 4 * weight.rows * weight.cols;
            report.packed_bytes += weight.bytes();
            Ok(Some(Box::new(PackedLinear {
                packed: Arc::new(weight),
                bias: linear.bias.clone(),
                label,
            }) as Box<dyn Cell>))
        })?;
        match packed.keys().next() {
            Some(missing) => Err(Error::Layer {
                layer: missing.clone(),
                message: "quantized weight for a Linear the model does not have".into(),
            }),
            None => Ok(()),
        }
    })?;
    Ok(report)
}

/// Puts a quantized model into the float network it was made from: the changed float tensors
/// are set, and every quantized Linear runs on the kernels.
pub fn install(net: &mut Network, model: &QuantizedModel) -> Result<DeployReport> {
    let mut overrides = Vec::new();
    for (name, p) in named_params(net) {
        if let Some(t) = model.float_overrides.get(&name) {
            if p.tensor().dims() != t.shape.as_slice() {
                return Err(Error::Layer {
                    layer: name,
                    message: format!(
                        "override of shape {:?} for {:?}",
                        t.shape,
                        p.tensor().dims()
                    ),
                });
            }
            overrides.push((p, t));
        }
    }
    let packed = model
        .linears
        .iter()
        .map(|(name, l)| {
            (
                name.clone(),
                (PackedWeight::from_quantized(&l.weight), l.label.clone()),
            )
        })
        .collect();
    let report = install_packed(net, packed)?;
    for (p, t) in overrides {
        p.set(&Tensor::from_slice(
            &t.values,
            t.shape.as_slice(),
            &Device::Cpu,
        )?)?;
    }
    Ok(report)
}
