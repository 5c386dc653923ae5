use candle_core::{DType, Tensor};

use crate::error::expect_inputs;
use crate::init::{default_bound, uniform};
use crate::kernels::linear::{linear_no_grad, MIN_ROWS};
use crate::{Cell, CellCtx, Mode, Param, Result, Rng};

/// y = x W^T + b over the last dimension; W is (out, in).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
}

impl Linear {
    /// A freshly initialized layer (PyTorch's default init).
    pub fn new(in_features: usize, out_features: usize, bias: bool, rng: &mut Rng) -> Result<Self> {
        let bound = default_bound(in_features);
        let weight = Param::weight(uniform(&[out_features, in_features], bound, rng)?)?;
        let bias = if bias {
            Some(Param::weight(uniform(&[out_features], bound, rng)?)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Linear {
            weight: Param::weight(weight)?,
            bias: bias.map(Param::weight).transpose()?,
        })
    }

    pub fn in_features(&self) -> usize {
        self.weight.tensor().dims().get(1).copied().unwrap_or(0)
    }

    pub fn out_features(&self) -> usize {
        self.weight.tensor().dims().first().copied().unwrap_or(0)
    }
}

impl Cell for Linear {
    fn kind(&self) -> &'static str {
        "Linear"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("Linear", inputs, 1)?;
        let x = &inputs[0];
        let w = self.weight.value(ctx.mode);
        // Fold leading dimensions into rows so one 2-D matmul does the work.
        let dims = x.dims().to_vec();
        let last = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / last.max(1);
        let x2 = x.reshape((rows, last))?;
        // Inference on many rows takes the faster kernel, and so does every inference product
        // in bf16 arithmetic (asked for, so not left in f32 on decode-sized inputs); training
        // keeps candle's autodiff.
        let fast = ctx.mode == Mode::Eval
            && (rows >= MIN_ROWS || crate::kernels::compute() == crate::kernels::Compute::Bf16)
            && x.dtype() == DType::F32
            && w.dtype() == DType::F32;
        let y = if fast {
            linear_no_grad(&x2, &w)?
        } else {
            x2.matmul(&w.t()?)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.value(ctx.mode))?,
            None => y,
        };
        let mut out_dims = dims;
        if let Some(l) = out_dims.last_mut() {
            *l = self.out_features();
        }
        Ok(y.reshape(out_dims)?)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        let mut p = vec![("weight", &self.weight)];
        p.extend(self.bias.as_ref().map(|b| ("bias", b)));
        p
    }

    fn summary(&self) -> String {
        format!(
            "{} -> {}{}",
            self.in_features(),
            self.out_features(),
            if self.bias.is_some() { "" } else { ", no bias" }
        )
    }
}
