use candle_core::Tensor;

use crate::{Cell, CellCtx, Error, Result};

fn fold(
    kind: &'static str,
    inputs: &[Tensor],
    op: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    let (first, rest) = inputs.split_first().ok_or(Error::Arity {
        kind,
        expected: "2 or more".into(),
        got: 0,
    })?;
    if rest.is_empty() {
        return Err(Error::Arity {
            kind,
            expected: "2 or more".into(),
            got: 1,
        });
    }
    let mut acc = first.clone();
    for t in rest {
        acc = op(&acc, t)?;
    }
    Ok(acc)
}

/// Element-wise sum of two or more inputs (with broadcasting): residual connections.
#[derive(Clone, Debug, Default)]
pub struct Add;

impl Cell for Add {
    fn kind(&self) -> &'static str {
        "Add"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> Result<Tensor> {
        fold("Add", inputs, |a, b| a.broadcast_add(b))
    }
}

/// Element-wise product of two or more inputs (with broadcasting): gates, SwiGLU.
#[derive(Clone, Debug, Default)]
pub struct Mul;

impl Cell for Mul {
    fn kind(&self) -> &'static str {
        "Mul"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> Result<Tensor> {
        fold("Mul", inputs, |a, b| a.broadcast_mul(b))
    }
}
