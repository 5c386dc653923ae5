use candle_core::{DType, Device, Tensor, D};

use crate::error::expect_inputs;
use crate::{Cell, CellCtx, Mode, Param, Result};

/// Layer normalization over the last dimension, with learned scale and shift.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Param,
    pub bias: Param,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64) -> Result<Self> {
        let dev = Device::Cpu;
        Ok(LayerNorm {
            weight: Param::weight(Tensor::ones(dim, DType::F32, &dev)?)?,
            bias: Param::weight(Tensor::zeros(dim, DType::F32, &dev)?)?,
            eps,
        })
    }

    pub fn from_tensors(weight: Tensor, bias: Tensor, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: Param::weight(weight)?,
            bias: Param::weight(bias)?,
            eps,
        })
    }
}

impl Cell for LayerNorm {
    fn kind(&self) -> &'static str {
        "LayerNorm"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("LayerNorm", inputs, 1)?;
        let x = &inputs[0];
        let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let y = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(y.broadcast_mul(&self.weight.value(ctx.mode))?
            .broadcast_add(&self.bias.value(ctx.mode))?)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        vec![("weight", &self.weight), ("bias", &self.bias)]
    }

    fn summary(&self) -> String {
        format!(
            "{} features, eps {}",
            self.weight.tensor().elem_count(),
            self.eps
        )
    }
}

/// Root-mean-square normalization over the last dimension: x / sqrt(mean(x^2) + eps) * w.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Param,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: Param::weight(Tensor::ones(dim, DType::F32, &Device::Cpu)?)?,
            eps,
        })
    }

    pub fn from_tensor(weight: Tensor, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: Param::weight(weight)?,
            eps,
        })
    }
}

impl Cell for RmsNorm {
    fn kind(&self) -> &'static str {
        "RMSNorm"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("RMSNorm", inputs, 1)?;
        let x = &inputs[0];
        let w = self.weight.value(ctx.mode);
        if ctx.mode == Mode::Eval && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
            return Ok(crate::kernels::rows::rms_norm(x, &w, self.eps)?);
        }
        let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        Ok(x.broadcast_div(&rms)?.broadcast_mul(&w)?)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        vec![("weight", &self.weight)]
    }

    fn summary(&self) -> String {
        format!(
            "{} features, eps {}",
            self.weight.tensor().elem_count(),
            self.eps
        )
    }
}
