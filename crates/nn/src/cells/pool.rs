use candle_core::{Tensor, D};

use crate::error::expect_inputs;
use crate::kernels::conv2d::{conv2d, ConvGeom};
use crate::kernels::max_pool2d::{max_pool2d, PoolGeom};
use crate::{Cell, CellCtx, Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    /// Padding counts as zeros in the average (PyTorch's count_include_pad=True).
    Avg,
}

/// Max or average pooling over NCHW input with a square window.
#[derive(Clone, Debug)]
pub struct Pool2d {
    pub kind: PoolKind,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Pool2d {
    pub fn new(kind: PoolKind, kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        if kernel == 0 || stride == 0 || padding * 2 > kernel {
            return Err(Error::Config(format!(
                "pooling needs kernel >= 1, stride >= 1 and padding <= kernel / 2 (kernel {kernel}, stride {stride}, padding {padding})"
            )));
        }
        Ok(Pool2d {
            kind,
            kernel,
            stride,
            padding,
        })
    }

    pub fn max(kernel: usize, stride: usize) -> Self {
        Pool2d {
            kind: PoolKind::Max,
            kernel,
            stride,
            padding: 0,
        }
    }
}

impl Cell for Pool2d {
    fn kind(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "MaxPool2d",
            PoolKind::Avg => "AvgPool2d",
        }
    }

    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs, 1)?;
        let x = &inputs[0];
        Ok(match self.kind {
            PoolKind::Max => max_pool2d(
                x,
                PoolGeom {
                    kernel: self.kernel,
                    stride: self.stride,
                    padding: self.padding,
                },
            )?,
            // A depthwise convolution with weights 1/k^2: differentiable for any stride
            // (candle's own average pool has no backward unless kernel == stride).
            PoolKind::Avg => {
                let c = x.dim(1)?;
                let weight =
                    (Tensor::ones((c, 1, self.kernel, self.kernel), x.dtype(), x.device())?
                        / (self.kernel * self.kernel) as f64)?;
                conv2d(
                    x,
                    &weight,
                    ConvGeom {
                        stride: self.stride,
                        padding: self.padding,
                        dilation: 1,
                        groups: c,
                    },
                )?
            }
        })
    }

    fn summary(&self) -> String {
        format!("k{} s{} p{}", self.kernel, self.stride, self.padding)
    }
}

/// Mean over the spatial dimensions: NCHW -> NC.
#[derive(Clone, Debug, Default)]
pub struct GlobalAvgPool;

impl Cell for GlobalAvgPool {
    fn kind(&self) -> &'static str {
        "GlobalAvgPool"
    }

    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("GlobalAvgPool", inputs, 1)?;
        Ok(inputs[0].mean(D::Minus1)?.mean(D::Minus1)?)
    }
}
