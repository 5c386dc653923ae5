//! Seeded parameter initialization, following PyTorch's defaults so that training recipes carry
//! over: weights and biases of Linear and Conv2d are uniform in ±1/sqrt(fan_in).

use candle_core::{Device, Tensor};
use rand::Rng as _;

use crate::{Result, Rng};

/// A tensor of `shape` with values uniform in [-bound, bound).
pub fn uniform(shape: &[usize], bound: f32, rng: &mut Rng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// PyTorch's default for a layer with `fan_in` inputs per output (kaiming-uniform with a = sqrt(5)).
pub fn default_bound(fan_in: usize) -> f32 {
    1.0 / (fan_in.max(1) as f32).sqrt()
}
