//! LSQ, learned step size quantization (spec §2.11, §3.14): a symmetric fake quantizer whose
//! range `maxq` is trained with the network. With q_max = 2^(b-1) - 1 (or 2^b - 1 for values
//! that are never negative, "neg_trunc") and s = maxq / q_max:
//! out = round(clamp(x / s, -q_max | 0, q_max)) * s, rounding half up. The gradient reaches x
//! inside the range (straight through) and s everywhere (round(v) - v inside, the clip bound
//! outside), scaled by 1 / sqrt(n * q_max) as the LSQ paper prescribes.

use candle_core::{DType, Device, Tensor};
use gstick_nn::{Mode, Param};

use super::fake_quant::{FakeQuantConfig, Nudged};

/// The learned state of an LSQ quantizer.
#[derive(Clone, Debug)]
pub struct LearnedStep {
    /// The clip value, one per channel (or one); trained.
    pub maxq: Param,
    /// 1 when the quantized values are never negative (decided on the first training batch).
    pub neg_trunc: Param,
}

impl LearnedStep {
    pub fn new(channels: usize) -> gstick_nn::Result<Self> {
        let dev = Device::Cpu;
        Ok(LearnedStep {
            maxq: Param::weight(Tensor::ones(channels, DType::F32, &dev)?)?,
            neg_trunc: Param::buffer(Tensor::zeros(1, DType::F32, &dev)?)?,
        })
    }

    fn unsigned(&self) -> gstick_nn::Result<bool> {
        Ok(self.neg_trunc.tensor().to_vec1::<f32>()?[0] > 0.5)
    }

    fn q_max(&self, config: &FakeQuantConfig) -> gstick_nn::Result<f32> {
        Ok(if self.unsigned()? {
            ((1u64 << config.bits) - 1) as f32
        } else {
            ((1u64 << (config.bits - 1)) - 1) as f32
        })
    }

    /// First training batch: the sign decides neg_trunc, and maxq starts at the paper's step
    /// 2 mean|x| / sqrt(q_max), times q_max.
    pub fn initialize(&self, x: &Tensor, config: &FakeQuantConfig) -> gstick_nn::Result<()> {
        let x = x.detach();
        let min = x.flatten_all()?.min(0)?.to_scalar::<f32>()?;
        let flag = if min >= 0.0 && !config.per_channel {
            1f32
        } else {
            0.0
        };
        self.neg_trunc.set(&Tensor::new(&[flag], &Device::Cpu)?)?;
        let q_max = self.q_max(config)? as f64;
        let c = self.maxq.tensor().elem_count();
        let mean_abs = x.abs()?.reshape((c, ()))?.mean(1)?;
        let maxq = ((mean_abs * (2.0 * q_max.sqrt()))? + 1e-8)?;
        self.maxq.set(&maxq)?;
        Ok(())
    }

    /// The fake-quantized `x` (autodiff-tracked in training).
    pub fn forward(
        &self,
        x: &Tensor,
        mode: Mode,
        config: &FakeQuantConfig,
    ) -> gstick_nn::Result<Tensor> {
        let q_max = self.q_max(config)? as f64;
        let lo = if self.unsigned()? { 0.0 } else { -q_max };
        let c = self.maxq.tensor().elem_count();
        let maxq = self.maxq.value(mode);
        let step = (maxq / q_max)?;
        // Gradient scale g = 1 / sqrt(n * q_max): the value stays s, its gradient is g times.
        let n = (x.elem_count() / c.max(1)) as f64;
        let g = 1.0 / (n * q_max).sqrt();
        let step = ((&step * g)? + (&step - (&step * g)?)?.detach())?;
        let mut shape = vec![1usize; x.rank()];
        if config.per_channel && x.rank() > 0 {
            shape[0] = c;
        }
        let step = step.reshape(shape)?;
        let v = x.broadcast_div(&step)?.clamp(lo, q_max)?;
        // Round half up with a straight-through gradient.
        let rounded = (&v + 0.5)?.floor()?;
        let r = (&v + (rounded - &v)?.detach())?;
        Ok(r.broadcast_mul(&step)?)
    }

    /// The same grid as the min/max quantizer's nudged range, so convert and export treat LSQ
    /// layers like any other.
    pub fn nudged(&self, config: &FakeQuantConfig) -> gstick_nn::Result<Vec<Nudged>> {
        let q_max = self.q_max(config)?;
        let unsigned = self.unsigned()?;
        let maxq: Vec<f32> = self.maxq.tensor().to_vec1()?;
        Ok(maxq
            .iter()
            .map(|&m| {
                let s = (m / q_max).max(f32::MIN_POSITIVE);
                if unsigned {
                    Nudged {
                        min: 0.0,
                        max: q_max * s,
                        scale: s,
                        zero_point: 0.0,
                    }
                } else {
                    // Narrow symmetric on the unsigned grid: [1, 2 q_max + 1] with zero q_max + 1.
                    let zp = q_max + 1.0;
                    Nudged {
                        min: (1.0 - zp) * s,
                        max: q_max * s,
                        scale: s,
                        zero_point: zp,
                    }
                }
            })
            .collect())
    }
}
