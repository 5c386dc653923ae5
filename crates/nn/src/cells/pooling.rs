use candle_core::{Tensor, D};

use crate::error::expect_inputs;
use crate::{Cell, CellCtx, Result};

/// Mean over the token dimension: (B, T, D) -> (B, D) (sentence embeddings of unpadded input).
#[derive(Clone, Debug, Default)]
pub struct MeanTokens;

impl Cell for MeanTokens {
    fn kind(&self) -> &'static str {
        "MeanTokens"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("MeanTokens", inputs, 1)?;
        Ok(inputs[0].mean(1)?)
    }
}

/// Scales each vector along the last dimension to unit Euclidean length (zero stays zero).
#[derive(Clone, Debug)]
pub struct L2Normalize {
    pub eps: f64,
}

impl Default for L2Normalize {
    fn default() -> Self {
        L2Normalize { eps: 1e-12 }
    }
}

impl Cell for L2Normalize {
    fn kind(&self) -> &'static str {
        "L2Normalize"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("L2Normalize", inputs, 1)?;
        let x = &inputs[0];
        let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(self.eps)?;
        Ok(x.broadcast_div(&norm)?)
    }
}
