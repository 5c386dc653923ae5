//! Optimizers. Each updates the trainable parameters in place from a gradient store; state is
//! kept per parameter name so that a rewritten network keeps the state of untouched layers.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::{Param, Result};

pub trait Optimizer {
    /// One update with learning rate `lr`. Parameters without a gradient are skipped.
    fn step(&mut self, params: &[(String, Param)], grads: &GradStore, lr: f64) -> Result<()>;
}

/// Stochastic gradient descent with optional momentum, Nesterov momentum and (coupled, L2)
/// weight decay, as in PyTorch's `SGD`.
#[derive(Debug, Default)]
pub struct Sgd {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    velocity: HashMap<String, Tensor>,
}

impl Sgd {
    pub fn new(momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        Sgd {
            momentum,
            nesterov,
            weight_decay,
            velocity: HashMap::new(),
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &[(String, Param)], grads: &GradStore, lr: f64) -> Result<()> {
        for (name, p) in params.iter().filter(|(_, p)| p.is_trainable()) {
            let Some(g) = grads.get(p.tensor()) else {
                continue;
            };
            let w = p.tensor().detach();
            let mut g = g.detach();
            if self.weight_decay != 0.0 {
                g = (g + (&w * self.weight_decay)?)?;
            }
            if self.momentum != 0.0 {
                let v = match self.velocity.get(name) {
                    Some(v) => ((v * self.momentum)? + &g)?,
                    None => g.clone(),
                };
                g = if self.nesterov {
                    (g + (&v * self.momentum)?)?
                } else {
                    v.clone()
                };
                self.velocity.insert(name.clone(), v);
            }
            p.set(&(w - (g * lr)?)?)?;
        }
        Ok(())
    }
}

/// Adam with decoupled weight decay (Loshchilov & Hutter), as in PyTorch's `AdamW`.
#[derive(Debug)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    steps: HashMap<String, i32>,
    moments: HashMap<String, (Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(weight_decay: f64) -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            steps: HashMap::new(),
            moments: HashMap::new(),
        }
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &[(String, Param)], grads: &GradStore, lr: f64) -> Result<()> {
        let (b1, b2) = (self.beta1, self.beta2);
        for (name, p) in params.iter().filter(|(_, p)| p.is_trainable()) {
            let Some(g) = grads.get(p.tensor()) else {
                continue;
            };
            let g = g.detach();
            let (m, v) = match self.moments.get(name) {
                Some((m, v)) => (
                    ((m * b1)? + (&g * (1.0 - b1))?)?,
                    ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                ),
                None => ((&g * (1.0 - b1))?, (g.sqr()? * (1.0 - b2))?),
            };
            let t = self.steps.entry(name.clone()).or_insert(0);
            *t += 1;
            let m_hat = (&m / (1.0 - b1.powi(*t)))?;
            let v_hat = (&v / (1.0 - b2.powi(*t)))?;
            let w = (p.tensor().detach() * (1.0 - lr * self.weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            p.set(&(w - (update * lr)?)?)?;
            self.moments.insert(name.clone(), (m, v));
        }
        Ok(())
    }
}
