use candle_core::Tensor;
use rand::Rng as _;

use crate::error::expect_inputs;
use crate::{Cell, CellCtx, Error, Mode, Result};

/// Inverted dropout: in training, zeroes each value with probability `p` and scales the rest by
/// 1/(1-p), drawing from the executor's seeded generator; the identity in evaluation.
#[derive(Clone, Debug)]
pub struct Dropout {
    pub p: f64,
}

impl Dropout {
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Config(format!(
                "Dropout probability must be in [0, 1), got {p}"
            )));
        }
        Ok(Dropout { p })
    }
}

impl Cell for Dropout {
    fn kind(&self) -> &'static str {
        "Dropout"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("Dropout", inputs, 1)?;
        let x = &inputs[0];
        if ctx.mode == Mode::Eval || self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if ctx.rng.random::<f64>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }

    fn summary(&self) -> String {
        format!("p {}", self.p)
    }
}
