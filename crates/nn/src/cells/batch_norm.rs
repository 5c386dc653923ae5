use candle_core::{DType, Tensor};

use crate::error::expect_inputs;
use crate::{Cell, CellCtx, Mode, Param, Result};

/// Batch normalization over the channels of NCHW input. In training it normalizes with the batch
/// statistics and updates the running ones (PyTorch's convention: biased variance to normalize,
/// unbiased variance in the running estimate); in evaluation it uses the running statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Param,
    pub running_var: Param,
    pub eps: f64,
    pub momentum: f64,
}

impl BatchNorm2d {
    /// gamma = 1, beta = 0, running mean 0 and variance 1; eps 1e-5, momentum 0.1.
    pub fn new(channels: usize) -> Result<Self> {
        let dev = candle_core::Device::Cpu;
        Ok(BatchNorm2d {
            weight: Param::weight(Tensor::ones(channels, DType::F32, &dev)?)?,
            bias: Param::weight(Tensor::zeros(channels, DType::F32, &dev)?)?,
            running_mean: Param::buffer(Tensor::zeros(channels, DType::F32, &dev)?)?,
            running_var: Param::buffer(Tensor::ones(channels, DType::F32, &dev)?)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    pub fn channels(&self) -> usize {
        self.weight.tensor().elem_count()
    }

    /// Per-channel (scale, shift) such that eval-mode output = x * scale + shift.
    pub fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        let scale = (self.weight.tensor() / (self.running_var.tensor() + self.eps)?.sqrt()?)?;
        let shift = (self.bias.tensor() - (self.running_mean.tensor() * &scale)?)?;
        Ok((scale, shift))
    }
}

impl Cell for BatchNorm2d {
    fn kind(&self) -> &'static str {
        "BatchNorm2d"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("BatchNorm2d", inputs, 1)?;
        let x = &inputs[0];
        let c = self.channels();
        let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
        let (mean, var) = match ctx.mode {
            Mode::Train => {
                let mean = x.mean_keepdim(3)?.mean_keepdim(2)?.mean_keepdim(0)?;
                let centered = x.broadcast_sub(&mean)?;
                let var = centered
                    .sqr()?
                    .mean_keepdim(3)?
                    .mean_keepdim(2)?
                    .mean_keepdim(0)?;
                let n = (x.elem_count() / c) as f64;
                let m = self.momentum;
                let batch_mean = mean.detach().flatten_all()?;
                let unbiased = (var.detach().flatten_all()? * (n / (n - 1.0).max(1.0)))?;
                self.running_mean
                    .set(&((self.running_mean.tensor() * (1.0 - m))? + (batch_mean * m)?)?)?;
                self.running_var
                    .set(&((self.running_var.tensor() * (1.0 - m))? + (unbiased * m)?)?)?;
                (mean, var)
            }
            Mode::Eval => (
                per_channel(self.running_mean.tensor())?,
                per_channel(self.running_var.tensor())?,
            ),
        };
        let normalized = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normalized
            .broadcast_mul(&per_channel(&self.weight.value(ctx.mode))?)?
            .broadcast_add(&per_channel(&self.bias.value(ctx.mode))?)?)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        vec![
            ("weight", &self.weight),
            ("bias", &self.bias),
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
        ]
    }

    fn summary(&self) -> String {
        format!(
            "{} channels, eps {}, momentum {}",
            self.channels(),
            self.eps,
            self.momentum
        )
    }
}
