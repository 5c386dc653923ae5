//! The calibration-time quantized Linear: `WeightQuantLinear` keeps the integer weight and its
//! scales (what exports and deploy read) and computes with the weight they stand for (fake
//! quantization), so the pipeline's next layer sees exactly what the deployed model computes.
//! With int8 activations (dynamic per-token or static per-tensor A8W8) it computes through the
//! deploy kernel itself (`quant::int8::a8w8`): calibration, evaluation and the deployed model
//! then see the same bits, and the kernel is checked against plain arithmetic by its own tests.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use gstick_nn::cell::downcast;
use gstick_nn::cells::Linear;
use gstick_nn::{named_params, Cell, CellCtx, Network, Param};
use gstick_quant::int8::a8w8::{self, A8W8Weight, TokenRows};
use gstick_quant::{
    ActivationQuant, FloatTensor, QuantizedLinear, QuantizedModel, QuantizedWeight,
};

/// A Linear whose weight is quantized (spec `WeightQuantLinearCell`).
#[derive(Clone, Debug)]
pub struct WeightQuantLinear {
    pub quantized: Arc<QuantizedWeight>,
    /// The dequantized weight, (out, in).
    pub weight: Param,
    pub bias: Option<Param>,
    /// How the input is quantized (`None`: float input).
    pub activation: Option<ActivationQuant>,
    /// The integer kernel's weight, for per-token activations.
    pub int8: Option<Arc<A8W8Weight>>,
    /// The original's summary string (`GPTQ-W4-per_group`).
    pub label: String,
}

/// `x` with each row (last dimension) quantized to int8 as `act` says and back: what the deploy
/// kernel multiplies (for analysis and tests; the cell computes on the kernel). A row holding
/// NaN or infinity is an error.
pub fn fake_quantize_activations(x: &Tensor, act: ActivationQuant) -> gstick_nn::Result<Tensor> {
    let dims = x.dims().to_vec();
    let cols = *dims.last().unwrap_or(&1);
    let values: Vec<f32> = x
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    let m = values.len() / cols.max(1);
    let mut rows = TokenRows::default();
    rows.quantize_as(act, &values, m, cols, 1)
        .map_err(|t| gstick_nn::Error::Config(format!("input row {t} holds NaN or infinity")))?;
    let mut out = Vec::with_capacity(values.len());
    for t in 0..m {
        let q = &rows.values[t * rows.k_padded..t * rows.k_padded + cols];
        let (s, zp) = (rows.scales[t], rows.zero_point);
        out.extend(q.iter().map(|&v| (v as i32 - zp) as f32 * s));
    }
    Ok(Tensor::from_vec(out, dims, x.device())?.to_dtype(x.dtype())?)
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
        match (&self.int8, self.activation, inputs) {
            (Some(w), Some(act), [x]) => self.forward_int8(w, act, x, ctx),
            _ => as_linear.forward(inputs, ctx),
        }
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
    /// A8W8 on the deploy kernel (no backward: calibration and evaluation only).
    fn forward_int8(
        &self,
        w: &A8W8Weight,
        act: ActivationQuant,
        x: &Tensor,
        ctx: &mut CellCtx,
    ) -> gstick_nn::Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let cols = *dims.last().unwrap_or(&0);
        if cols != w.cols {
            return Err(gstick_nn::Error::Config(format!(
                "{}: input has {cols} features, the weight {}",
                self.label, w.cols
            )));
        }
        let m = x.elem_count() / cols.max(1);
        let values: Vec<f32> = x
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let bias = match &self.bias {
            Some(b) => Some(b.value(ctx.mode).flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        let mut out = vec![0f32; m * w.rows];
        a8w8::linear_f32(
            &values,
            m,
            w,
            act,
            bias.as_deref(),
            &mut out,
            gstick_nn::kernels::kernel_threads(),
            &mut TokenRows::default(),
        )
        .map_err(|row| {
            gstick_nn::Error::Config(format!(
                "{}: input row {row} holds NaN or infinity",
                self.label
            ))
        })?;
        if let Some(last) = dims.last_mut() {
            *last = w.rows;
        }
        Ok(Tensor::from_vec(out, dims, x.device())?.to_dtype(x.dtype())?)
    }

    /// The cell for a quantized weight, keeping the float bias.
    pub fn new(
        q: Arc<QuantizedWeight>,
        bias: Option<Param>,
        activation: Option<ActivationQuant>,
        label: &str,
    ) -> gstick_nn::Result<WeightQuantLinear> {
        let dequantized = Tensor::from_vec(q.dequantize(), (q.rows, q.cols), &Device::Cpu)?;
        let int8 = match activation {
            None => None,
            Some(_) => Some(Arc::new(
                A8W8Weight::from_quantized(&q).map_err(gstick_nn::Error::Config)?,
            )),
        };
        Ok(WeightQuantLinear {
            quantized: q,
            weight: Param::buffer(dequantized)?,
            bias,
            activation,
            int8,
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
/// name, and every attention's int8 KV cache. (Float tensors are the network's own;
/// `float_overrides` stays empty.)
pub fn quantized_model(net: &Network) -> QuantizedModel {
    let mut model = QuantizedModel::default();
    for (name, node) in net.nodes_recursive() {
        if let Some(q) = node
            .cell()
            .and_then(|c| downcast::<gstick_nn::cells::SelfAttention>(c.as_ref()))
            .and_then(|a| a.kv_quant.clone())
        {
            model.kv_caches.insert(name.clone(), q);
        }
        if let Some(c) = node
            .cell()
            .and_then(|c| downcast::<WeightQuantLinear>(c.as_ref()))
        {
            model.linears.insert(
                name,
                QuantizedLinear {
                    weight: c.quantized.clone(),
                    activation: c.activation,
                    label: c.label.clone(),
                },
            );
        }
    }
    model
}

/// Puts a quantized model into the float network it was made from, in fake-quantized form: the
/// changed float tensors are set, every quantized Linear becomes a `WeightQuantLinear` and each
/// attention with an int8 KV cache gets it. All
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
            let cell = WeightQuantLinear::new(
                q.weight.clone(),
                linear.bias.clone(),
                q.activation,
                &q.label,
            )?;
            Ok(Some(Box::new(cell) as Box<dyn Cell>))
        })?;
        match model.linears.keys().find(|k| !replaced.contains(k)) {
            Some(name) => Err(crate::Error::Layer {
                layer: name.clone(),
                message: "quantized weight for a Linear the model does not have".into(),
            }),
            None => Ok(()),
        }?;
        gstick_nn::cells::install_kv_quant(g, &model.kv_caches)?;
        Ok::<(), crate::Error>(())
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
