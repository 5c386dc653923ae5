use candle_core::Tensor;

use crate::error::expect_inputs;
use crate::{Cell, CellCtx, Mode, Result};

/// Parameterless element-wise activations (and softmax along one dimension).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActivationKind {
    Relu,
    Relu6,
    LeakyRelu {
        slope: f64,
    },
    Sigmoid,
    /// relu6(x + 3) / 6
    HSigmoid,
    /// x * relu6(x + 3) / 6
    HSwish,
    /// The exact (erf) GELU, PyTorch's default.
    Gelu,
    Silu,
    Softmax {
        dim: usize,
    },
}

/// A cell applying one [`ActivationKind`].
#[derive(Clone, Debug)]
pub struct Activation(pub ActivationKind);

fn relu6(x: &Tensor) -> candle_core::Result<Tensor> {
    x.clamp(0f32, 6f32)
}

impl ActivationKind {
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match *self {
            ActivationKind::Relu => crate::kernels::relu::relu_op(x),
            ActivationKind::Relu6 => relu6(x),
            ActivationKind::LeakyRelu { slope } => x.maximum(&(x * slope)?),
            ActivationKind::Sigmoid => candle_nn::ops::sigmoid(x),
            ActivationKind::HSigmoid => relu6(&(x + 3.0)?)? / 6.0,
            ActivationKind::HSwish => x * (relu6(&(x + 3.0)?)? / 6.0)?,
            ActivationKind::Gelu => x.gelu_erf(),
            ActivationKind::Silu => x.silu(),
            ActivationKind::Softmax { dim } => candle_nn::ops::softmax(x, dim),
        }
    }
}

impl Cell for Activation {
    fn kind(&self) -> &'static str {
        match self.0 {
            ActivationKind::Relu => "ReLU",
            ActivationKind::Relu6 => "ReLU6",
            ActivationKind::LeakyRelu { .. } => "LeakyReLU",
            ActivationKind::Sigmoid => "Sigmoid",
            ActivationKind::HSigmoid => "HSigmoid",
            ActivationKind::HSwish => "HSwish",
            ActivationKind::Gelu => "GELU",
            ActivationKind::Silu => "SiLU",
            ActivationKind::Softmax { .. } => "Softmax",
        }
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs(self.kind(), inputs, 1)?;
        if self.0 == ActivationKind::Silu
            && ctx.mode == Mode::Eval
            && inputs[0].dtype() == candle_core::DType::F32
        {
            return Ok(crate::kernels::rows::silu(&inputs[0])?);
        }
        Ok(self.0.apply(&inputs[0])?)
    }

    fn summary(&self) -> String {
        match self.0 {
            ActivationKind::LeakyRelu { slope } => format!("slope {slope}"),
            ActivationKind::Softmax { dim } => format!("dim {dim}"),
            _ => String::new(),
        }
    }
}
