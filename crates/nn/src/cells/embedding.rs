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

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("Embedding", inputs, 1)?;
        let ids = &inputs[0];
        let w = self.weight.value(ctx.mode);
        let rows = w.index_select(&ids.flatten_all()?, 0)?;
        let mut dims = ids.dims().to_vec();
        dims.push(w.dim(1)?);
        Ok(rows.reshape(dims)?)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        vec![("weight", &self.weight)]
    }

    fn summary(&self) -> String {
        format!("{:?}", self.weight.tensor().dims())
    }
}

/// Adds rows of a learned table to (B, T, D) input: rows 0..T (absolute position embeddings) or
/// one fixed row for every position (BERT's token type 0).
#[derive(Clone, Debug)]
pub struct AddEmbedding {
    pub weight: Param,
    /// `None`: row t for position t; `Some(r)`: row r everywhere.
    pub row: Option<usize>,
}

impl Cell for AddEmbedding {
    fn kind(&self) -> &'static str {
        "AddEmbedding"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("AddEmbedding", inputs, 1)?;
        let x = &inputs[0];
        let t = x.dim(1)?;
        let w = self.weight.value(ctx.mode);
        let rows = match self.row {
            None if t > w.dim(0)? => {
                return Err(crate::Error::Config(format!(
                    "sequence of {t} tokens is longer than the {} learned positions",
                    w.dim(0)?
                )))
            }
            None => w.narrow(0, 0, t)?,
            Some(r) => w.narrow(0, r, 1)?,
        };
        Ok(x.broadcast_add(&rows)?)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        vec![("weight", &self.weight)]
    }

    fn summary(&self) -> String {
        match self.row {
            None => format!("positions {:?}", self.weight.tensor().dims()),
            Some(r) => format!("row {r} of {:?}", self.weight.tensor().dims()),
        }
    }
}
