//! Installing quantized weights: every named Linear of a network becomes a `PackedLinear`
//! (weight-only) or an `A8W8Linear` (int8 activations too) that keeps its bias, through one
//! Rewrite transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use gstick_nn::cell::downcast;
use gstick_nn::cells::Linear;
use gstick_nn::{named_params, Cell, Network};
use gstick_quant::int8::a8w8::A8W8Weight;
use gstick_quant::kernels::PackedWeight;
use gstick_quant::{ActivationQuant, QuantizedModel};

use crate::a8w8_linear::A8W8Linear;
use crate::packed_linear::PackedLinear;

/// A Linear's weight in the form a deploy cell computes with.
#[derive(Clone, Debug)]
pub enum DeployWeight {
    /// Int8 or int4 weights, float activations: a `PackedLinear`.
    Packed(PackedWeight),
    /// Int8 weights, int8 activations (per token, or static per tensor): an `A8W8Linear`.
    A8W8(A8W8Weight, ActivationQuant),
}

impl DeployWeight {
    pub fn shape(&self) -> (usize, usize) {
        match self {
            DeployWeight::Packed(w) => (w.rows, w.cols),
            DeployWeight::A8W8(w, _) => (w.rows, w.cols),
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            DeployWeight::Packed(w) => w.bytes(),
            DeployWeight::A8W8(w, _) => w.bytes(),
        }
    }
}
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
    packed: BTreeMap<String, (PackedWeight, String)>,
) -> Result<DeployReport> {
    let weights = packed
        .into_iter()
        .map(|(name, (w, label))| (name, (DeployWeight::Packed(w), label)))
        .collect();
    install_linears(net, weights)
}

/// [`install_packed`] for weights of either deploy form.
pub fn install_linears(
    net: &mut Network,
    mut packed: BTreeMap<String, (DeployWeight, String)>,
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
            let (w_rows, w_cols) = weight.shape();
            // A skeleton built for deploy holds a placeholder weight; only a real one is checked.
            let placeholder = linear.weight.tensor().elem_count() == 1;
            if !placeholder && (rows, cols) != (w_rows, w_cols) {
                return Err(Error::Layer {
                    layer: site.qualified.to_string(),
                    message: format!(
                        "the quantized weight is {w_rows}x{w_cols}, the Linear {rows}x{cols}"
                    ),
                });
            }
            report.layers += 1;
            report.f32_bytes += 4 * w_rows * w_cols;
            report.packed_bytes += weight.bytes();
            let bias = linear.bias.clone();
            Ok(Some(match weight {
                DeployWeight::Packed(w) => Box::new(PackedLinear {
                    packed: Arc::new(w),
                    bias,
                    label,
                }) as Box<dyn Cell>,
                DeployWeight::A8W8(w, activation) => Box::new(A8W8Linear {
                    weight: Arc::new(w),
                    activation,
                    bias,
                    label,
                }),
            }))
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
    let mut weights = BTreeMap::new();
    for (name, l) in &model.linears {
        let w = match l.activation {
            None => DeployWeight::Packed(PackedWeight::from_quantized(&l.weight)),
            Some(act) => DeployWeight::A8W8(
                A8W8Linear::weight_from(&l.weight).map_err(|message| Error::Layer {
                    layer: name.clone(),
                    message,
                })?,
                act,
            ),
        };
        weights.insert(name.clone(), (w, l.label.clone()));
    }
    let report = install_linears(net, weights)?;
    gstick_nn::cells::install_kv_quant(net, &model.kv_caches)?;
    for (p, t) in overrides {
        p.set(&Tensor::from_slice(
            &t.values,
            t.shape.as_slice(),
            &Device::Cpu,
        )?)?;
    }
    Ok(report)
}
