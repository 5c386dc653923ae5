use candle_core::Tensor;

use crate::error::expect_inputs;
use crate::{Cell, CellCtx, Param, Result};

/// Looks up rows of a (vocab, dim) table for integer ids of any shape; output adds a last dim.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Param,
}

impl Embedding {
    pub fn from_tensor(weight: Tensor) -> Result<Self> {
        Ok(Embedding {
            weight: Param::weight(weight)?,
        })
    }
}

impl Cell for Embedding {
    fn kind(&self) -> &'static str {
        "Embedding"
    }

    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("Embedding", inputs, 1)?;
        let ids = &inputs[0];
        let w = self.weight.value();
        let rows = w.index_select(&ids.flatten_all()?, 0)?;
        let mut dims = ids.dims().to_vec();
        dims.push(w.dim(1)?);
        Ok(rows.reshape(dims)?)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        vec![("weight", &self.weight)]
    }

    fn params_mut(&mut self) -> Vec<(&'static str, &mut Param)> {
        vec![("weight", &mut self.weight)]
    }

    fn summary(&self) -> String {
        format!("{:?}", self.weight.tensor().dims())
    }
}
