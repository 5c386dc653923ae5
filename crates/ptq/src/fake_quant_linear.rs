//! The calibration-time quantized Linear: `WeightQuantLinear` keeps the integer weight and its
//! scales (what exports and deploy read) and computes with the weight they stand for (fake
//! quantization), so the pipeline's next layer sees exactly what the deployed model computes.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use gstick_nn::cell::downcast;
use gstick_nn::cells::Linear;
use gstick_nn::{named_params, Cell, CellCtx, Network, Param};
use gstick_quant::{FloatTensor, QuantizedLinear, QuantizedModel, QuantizedWeight};

/// A Linear whose weight is quantized (spec `WeightQuantLinearCell`).
#[derive(Clone, Debug)]
pub struct WeightQuantLinear {
    pub quantized: Arc<QuantizedWeight>,
    /// The dequantized weight, (out, in).
    pub weight: Param,
    pub bias: Option<Param>,
    /// The original's summary string (`GPTQ-W4-per_group`).
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
        q: Arc<QuantizedWeight>,
        bias: Option<Param>,
        label: &str,
    ) -> gstick_nn::Result<WeightQuantLinear> {
        let dequantized = Tensor::from_vec(q.dequantize(), (q.rows, q.cols), &Device::Cpu)?;
        Ok(WeightQuantLinear {
            quantized: q,
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

/// The quantized model a fake-quantized network holds: every `WeightQuantLinear` by its full
/// name. (Float tensors are the network's own; `float_overrides` stays empty.)
pub fn quantized_model(net: &Network) -> QuantizedModel {
    let mut model = QuantizedModel::default();
    for (name, node) in net.nodes_recursive() {
        if let Some(c) = node
            .cell()
            .and_then(|c| downcast::<WeightQuantLinear>(c.as_ref()))
        {
            model.linears.insert(
                name,
                QuantizedLinear {
                    weight: c.quantized.clone(),
                    label: c.label.clone(),
                },
            );
        }
    }
    model
}

/// Puts a quantized model into the float network it was made from, in fake-quantized form: the
/// changed float tensors are set and every quantized Linear becomes a `WeightQuantLinear`. All
/// or nothing for the rewrite; an override that does not fit its tensor is refused before any
/// change.
pub fn install_fake(net: &mut Network, model: &QuantizedModel) -> crate::Result<()> {
    let params = named_params(net);
    let overrides: Vec<(&Param, &FloatTensor)> = params
        .iter()
        .filter_map(|(name, p)| model.float_overrides.get(name).map(|t| (p, t)))
        .collect();
    for (p, t) in &overrides {
        if p.tensor().dims() != t.shape.as_slice() {
            return Err(crate::Error::Layer {
                layer: "float override".into(),
                message: format!(
                    "shape {:?} for a tensor of {:?}",
                    t.shape,
                    p.tensor().dims()
                ),
            });
        }
    }
    net.transaction(|g| {
        let replaced = g.replace_cells(|site| {
            let (Some(linear), Some(q)) = (
                downcast::<Linear>(site.cell.as_ref()),
                model.linears.get(site.qualified),
            ) else {
                return Ok::<_, crate::Error>(None);
            };
            let cell = WeightQuantLinear::new(q.weight.clone(), linear.bias.clone(), &q.label)?;
            Ok(Some(Box::new(cell) as Box<dyn Cell>))
        })?;
        match model.linears.keys().find(|k| !replaced.contains(k)) {
            Some(name) => Err(crate::Error::Layer {
                layer: name.clone(),
                message: "quantized weight for a Linear the model does not have".into(),
            }),
            None => Ok(()),
        }
    })?;
    for (p, t) in overrides {
        p.set(&Tensor::from_slice(
            &t.values,
            t.shape.as_slice(),
            &Device::Cpu,
        )?)?;
    }
    Ok(())
}
