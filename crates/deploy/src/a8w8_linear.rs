//! The deploy Linear of A8W8: each input row is quantized to int8, per token at run time
//! (dynamic, spec §3.8 `DynamicQuantMatmul`) or with the calibrated per-tensor scale and zero
//! point (static, spec §3.3 `AllQuantMatmul`), and multiplied by int8 weights with int32 sums
//! (`gstick_quant::int8::a8w8`); the zero point's share, the scales and the bias are applied as
//! the sums are stored.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use gstick_nn::{Cell, CellCtx, Param};
use gstick_quant::int8::a8w8::{self, A8W8Weight, TokenRows};
use gstick_quant::{ActivationQuant, QuantizedWeight};

/// A Linear with int8 weights and int8 activations.
#[derive(Clone, Debug)]
pub struct A8W8Linear {
    pub weight: Arc<A8W8Weight>,
    pub activation: ActivationQuant,
    pub bias: Option<Param>,
    /// The quantization summary string (`W8-per_channel-A8-per_token`).
    pub label: String,
}

impl A8W8Linear {
    /// The kernel's weight from a quantized one: 8 bits, symmetric, per channel.
    pub fn weight_from(q: &QuantizedWeight) -> Result<A8W8Weight, String> {
        A8W8Weight::from_quantized(q)
    }

    /// The label of a layer with weights labelled `weight_label` and inputs quantized by `act`
    /// (`W8-per_channel-A8-per_token`).
    pub fn label(weight_label: &str, act: ActivationQuant) -> String {
        match act {
            ActivationQuant::DynamicPerToken => format!("{weight_label}-A8-per_token"),
            ActivationQuant::StaticPerTensor { .. } => format!("{weight_label}-A8-per_tensor"),
        }
    }
}

struct A8W8Matmul {
    weight: Arc<A8W8Weight>,
    activation: ActivationQuant,
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for A8W8Matmul {
    fn name(&self) -> &'static str {
        "gstick-a8w8-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            return Err(candle_core::Error::Msg(
                "A8W8 linear: f32 input only".into(),
            ));
        };
        let (m, cols) = l.shape().dims2()?;
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("A8W8 linear: input not contiguous".into()))?;
        let mut out = vec![0f32; m * self.weight.rows];
        a8w8::linear_f32(
            &data[start..end],
            m,
            &self.weight,
            self.activation,
            self.bias.as_deref(),
            &mut out,
            gstick_nn::kernels::kernel_threads(),
            &mut TokenRows::default(),
        )
        .map_err(|row| {
            candle_core::Error::Msg(format!(
                "A8W8 linear: input row {row} of {cols} values holds NaN or infinity"
            ))
        })?;
        Ok((CpuStorage::F32(out), Shape::from((m, self.weight.rows))))
    }
}

impl Cell for A8W8Linear {
    fn kind(&self) -> &'static str {
        "A8W8Linear"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        let [x] = inputs else {
            return Err(gstick_nn::Error::Config(format!(
                "A8W8Linear takes 1 input, got {}",
                inputs.len()
            )));
        };
        let mut dims = x.dims().to_vec();
        let cols = *dims.last().unwrap_or(&0);
        if cols != self.weight.cols {
            return Err(gstick_nn::Error::Config(format!(
                "A8W8Linear ({}): input has {cols} features, the weight {}",
                self.label, self.weight.cols
            )));
        }
        let bias = match &self.bias {
            Some(b) => Some(b.value(ctx.mode).flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        let x2 = x
            .reshape((x.elem_count() / cols.max(1), cols))?
            .contiguous()?;
        let y = x2.apply_op1_no_bwd(&A8W8Matmul {
            weight: self.weight.clone(),
            activation: self.activation,
            bias,
        })?;
        if let Some(last) = dims.last_mut() {
            *last = self.weight.rows;
        }
        Ok(y.reshape(dims)?)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        self.bias.iter().map(|b| ("bias", b)).collect()
    }

    fn summary(&self) -> String {
        format!(
            "{} ({} x {}, {} bytes)",
            self.label,
            self.weight.rows,
            self.weight.cols,
            self.weight.bytes()
        )
    }
}
