//! Learning-rate schedules, evaluated per optimizer step.

use std::f64::consts::PI;

/// The shape of the learning rate after warm-up.
#[derive(Clone, Debug, PartialEq)]
pub enum Decay {
    Constant,
    /// Multiply by `gamma` every `every_epochs` epochs.
    Step {
        every_epochs: usize,
        gamma: f64,
    },
    /// Half-cosine from the base rate down to `min_lr` at the last step.
    Cosine {
        min_lr: f64,
    },
}

/// Base rate, optional linear warm-up from 0 over `warmup_steps`, then a decay.
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub decay: Decay,
}

impl LrSchedule {
    pub fn constant(base_lr: f64) -> Self {
        LrSchedule {
            base_lr,
            warmup_steps: 0,
            decay: Decay::Constant,
        }
    }

    /// The rate at global step `step` (0-based) of `total_steps`, with `steps_per_epoch`.
    pub fn lr(&self, step: usize, total_steps: usize, steps_per_epoch: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            Decay::Constant => self.base_lr,
            Decay::Step {
                every_epochs,
                gamma,
            } => {
                let epoch = step / steps_per_epoch.max(1);
                self.base_lr * gamma.powi((epoch / every_epochs.max(1)) as i32)
            }
            Decay::Cosine { min_lr } => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
                min_lr + 0.5 * (self.base_lr - min_lr) * (1.0 + (PI * t).cos())
            }
        }
    }
}
