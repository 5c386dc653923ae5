use candle_core::Tensor;

use crate::error::expect_inputs;
use crate::{Cell, CellCtx, Error, Result};

/// Flattens every dimension from `start_dim` on (1 keeps the batch dimension).
#[derive(Clone, Debug)]
pub struct Flatten {
    pub start_dim: usize,
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten { start_dim: 1 }
    }
}

impl Cell for Flatten {
    fn kind(&self) -> &'static str {
        "Flatten"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("Flatten", inputs, 1)?;
        Ok(inputs[0].flatten_from(self.start_dim)?)
    }
    fn summary(&self) -> String {
        format!("from dim {}", self.start_dim)
    }
}

/// Reshapes to `shape`, where 0 copies the input's dimension at that index and one -1 is inferred.
#[derive(Clone, Debug)]
pub struct Reshape {
    pub shape: Vec<i64>,
}

impl Reshape {
    fn target(&self, input: &[usize]) -> Result<Vec<usize>> {
        let bad = || Error::Config(format!("cannot reshape {input:?} to {:?}", self.shape));
        let mut dims = Vec::with_capacity(self.shape.len());
        let mut infer = None;
        for (i, &d) in self.shape.iter().enumerate() {
            match d {
                -1 if infer.is_none() => {
                    infer = Some(i);
                    dims.push(1);
                }
                0 => dims.push(*input.get(i).ok_or_else(bad)?),
                d if d > 0 => dims.push(d as usize),
                _ => return Err(bad()),
            }
        }
        let total: usize = input.iter().product();
        let known: usize = dims.iter().product();
        if let Some(i) = infer {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(bad());
            }
            dims[i] = total / known;
        }
        if dims.iter().product::<usize>() != total {
            return Err(bad());
        }
        Ok(dims)
    }
}

impl Cell for Reshape {
    fn kind(&self) -> &'static str {
        "Reshape"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("Reshape", inputs, 1)?;
        let dims = self.target(inputs[0].dims())?;
        Ok(inputs[0].reshape(dims)?)
    }
    fn summary(&self) -> String {
        format!("{:?}", self.shape)
    }
}

/// Concatenates its inputs along `dim`.
#[derive(Clone, Debug)]
pub struct Concat {
    pub dim: usize,
}

impl Cell for Concat {
    fn kind(&self) -> &'static str {
        "Concat"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> Result<Tensor> {
        if inputs.is_empty() {
            return Err(Error::Arity {
                kind: "Concat",
                expected: "1 or more".into(),
                got: 0,
            });
        }
        Ok(Tensor::cat(inputs, self.dim)?)
    }
    fn summary(&self) -> String {
        format!("dim {}", self.dim)
    }
}
