//! The SimQAT fake quantizer (spec §3.12): min/max tracking with optional EMA, the nudged scale
//! and zero point on the unsigned grid, fake quantization, and the clipped straight-through
//! gradient. Weights use it per output channel, activations per tensor.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use gstick_nn::{Mode, Param};

/// Settings of one fake quantizer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FakeQuantConfig {
    pub bits: u32,
    pub symmetric: bool,
    pub narrow: bool,
    /// One range per slice along axis 0 (weights), or one for the whole tensor.
    pub per_channel: bool,
    /// Blend each batch's min/max into the stored ones instead of replacing them.
    pub ema: bool,
    /// Weight of the *batch* value in the blend (the original kernel's convention).
    pub ema_decay: f32,
    /// Training calls before fake quantization starts (identity until then).
    pub quant_delay: u64,
    /// LSQ: the range is a trained parameter instead of tracked min/max.
    pub learned_step: bool,
}

impl FakeQuantConfig {
    /// Per-tensor asymmetric 8-bit, SimQAT's activation default.
    pub fn activation() -> Self {
        FakeQuantConfig {
            bits: 8,
            symmetric: false,
            narrow: false,
            per_channel: false,
            ema: false,
            ema_decay: 0.999,
            quant_delay: 0,
            learned_step: false,
        }
    }

    /// Per-channel symmetric 8-bit, SimQAT's weight default.
    pub fn weight() -> Self {
        FakeQuantConfig {
            symmetric: true,
            per_channel: true,
            ..Self::activation()
        }
    }

    /// The unsigned integer grid: [0, 2^b - 1], or [1, 2^b - 1] when narrow.
    pub fn grid(&self) -> (f32, f32) {
        let qmax = ((1u64 << self.bits) - 1) as f32;
        (if self.narrow { 1.0 } else { 0.0 }, qmax)
    }
}

/// A nudged range: the representable interval, its step and the (integer) zero point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nudged {
    pub min: f32,
    pub max: f32,
    pub scale: f32,
    pub zero_point: f32,
}

/// Nudges a float range so that 0 is exactly representable (spec §3.12): symmetric ranges become
/// [-m, m]; scale = (max - min) / (qmax - qmin); the zero point qmin - min / scale is clamped into
/// the grid and rounded; the range is then recomputed from it. An empty range (max == min, only
/// possible at 0 because ranges always contain 0) represents just 0.
pub fn nudge(min: f32, max: f32, config: &FakeQuantConfig) -> Nudged {
    let (qmin, qmax) = config.grid();
    let (min, max) = if config.symmetric {
        let m = min.abs().max(max.abs());
        (-m, m)
    } else {
        (min, max)
    };
    let scale = (max - min) / (qmax - qmin);
    if scale.is_nan() || scale <= 0.0 || scale.is_infinite() {
        return Nudged {
            min: 0.0,
            max: 0.0,
            scale: 1.0,
            zero_point: qmin,
        };
    }
    let zp_from_min = qmin - min / scale;
    let zero_point = if zp_from_min < qmin {
        qmin
    } else if zp_from_min > qmax {
        qmax
    } else {
        zp_from_min.round()
    };
    Nudged {
        min: (qmin - zero_point) * scale,
        max: (qmax - zero_point) * scale,
        scale,
        zero_point,
    }
}

/// clamp(x, min, max), then snapped to the grid: floor((x - min) / scale + 0.5) * scale + min.
pub fn fake_quantize_value(x: f32, n: &Nudged) -> f32 {
    let c = x.clamp(n.min, n.max);
    ((c - n.min) / n.scale + 0.5).floor() * n.scale + n.min
}

/// The fake-quantization op: one nudged range per run of `run` consecutive values (a channel of a
/// contiguous (out, ...) weight), or one for all. Backward passes the gradient where the input lay
/// inside its range and zero elsewhere (the clipped straight-through estimator); the range itself
/// gets no gradient.
struct FakeQuantOp {
    ranges: Vec<Nudged>,
    run: usize,
}

impl FakeQuantOp {
    fn range_of(&self, i: usize) -> &Nudged {
        &self.ranges[(i / self.run.max(1)).min(self.ranges.len() - 1)]
    }
}

impl CustomOp1 for FakeQuantOp {
    fn name(&self) -> &'static str {
        "gstick-fake-quant"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            return Err(candle_core::Error::Msg("fake quant: f32 only".into()));
        };
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("fake quant: input not contiguous".into()))?;
        let out: Vec<f32> = data[start..end]
            .iter()
            .enumerate()
            .map(|(i, &x)| fake_quantize_value(x, self.range_of(i)))
            .collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let x: Vec<f32> = arg.flatten_all()?.to_vec1()?;
        let mask: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let n = self.range_of(i);
                if v >= n.min && v <= n.max {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, arg.shape(), arg.device())?;
        Ok(Some(grad_res.mul(&mask)?))
    }
}

/// A fake quantizer with its state: the tracked range (per channel or one) and a count of
/// training calls, all buffers so they are saved in checkpoints.
#[derive(Clone, Debug)]
pub struct FakeQuantizer {
    pub config: FakeQuantConfig,
    pub min: Param,
    pub max: Param,
    pub steps: Param,
    /// LSQ's trained range, replacing the min/max tracking when present.
    pub learned: Option<super::lsq::LearnedStep>,
}

impl FakeQuantizer {
    /// Ranges start at [-6, 6], as in the original.
    pub fn new(config: FakeQuantConfig, channels: usize) -> gstick_nn::Result<Self> {
        let n = if config.per_channel { channels } else { 1 };
        let dev = Device::Cpu;
        Ok(FakeQuantizer {
            config,
            min: Param::buffer(Tensor::full(-6f32, n, &dev)?)?,
            max: Param::buffer(Tensor::full(6f32, n, &dev)?)?,
            steps: Param::buffer(Tensor::zeros(1, DType::F64, &dev)?)?,
            learned: if config.learned_step {
                Some(super::lsq::LearnedStep::new(n)?)
            } else {
                None
            },
        })
    }

    pub fn channels(&self) -> usize {
        self.min.tensor().elem_count()
    }

    /// The nudged range of each channel (one when per tensor).
    pub fn nudged(&self) -> gstick_nn::Result<Vec<Nudged>> {
        if let Some(l) = &self.learned {
            return l.nudged(&self.config);
        }
        let min: Vec<f32> = self.min.tensor().to_vec1()?;
        let max: Vec<f32> = self.max.tensor().to_vec1()?;
        Ok(min
            .iter()
            .zip(&max)
            .map(|(&a, &b)| nudge(a, b, &self.config))
            .collect())
    }

    /// Training calls seen so far.
    pub fn steps(&self) -> gstick_nn::Result<u64> {
        Ok(self.steps.tensor().to_vec1::<f64>()?[0] as u64)
    }

    /// Sets the range to that of `x` (no EMA): how post-training calibration fixes weight ranges.
    pub fn set_range(&self, x: &Tensor) -> gstick_nn::Result<()> {
        if let Some(l) = &self.learned {
            return l.initialize(x, &self.config);
        }
        let (lo, hi) = self.batch_range(x)?;
        self.min.set(&lo)?;
        self.max.set(&hi)?;
        Ok(())
    }

    /// The range of `x` per channel along axis 0 or over everything, with min at most 0 and max
    /// at least 0 so that 0 stays representable.
    fn batch_range(&self, x: &Tensor) -> gstick_nn::Result<(Tensor, Tensor)> {
        let x = x.detach();
        let (lo, hi) = if self.config.per_channel {
            let c = x.dims().first().copied().unwrap_or(1);
            let rows = x.reshape((c, x.elem_count() / c.max(1)))?;
            (rows.min(1)?, rows.max(1)?)
        } else {
            let flat = x.flatten_all()?;
            (flat.min_keepdim(0)?, flat.max_keepdim(0)?)
        };
        Ok((lo.clamp(f32::MIN, 0f32)?, hi.clamp(0f32, f32::MAX)?))
    }

    /// Records the batch's range, replacing the stored one or blended into it (EMA).
    fn observe(&self, x: &Tensor) -> gstick_nn::Result<()> {
        let (lo, hi) = self.batch_range(x)?;
        let (lo, hi) = if self.config.ema {
            let d = self.config.ema_decay as f64;
            (
                ((lo * d)? + (self.min.tensor() * (1.0 - d))?)?,
                ((hi * d)? + (self.max.tensor() * (1.0 - d))?)?,
            )
        } else {
            (lo, hi)
        };
        self.min.set(&lo)?;
        self.max.set(&hi)?;
        Ok(())
    }

    /// Training: observe the batch, count the call, and fake-quantize once the delay has
    /// passed. Evaluation: fake-quantize with the stored range.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> gstick_nn::Result<Tensor> {
        if let Some(l) = &self.learned {
            if mode == Mode::Train {
                let steps = self.steps()? + 1;
                if steps == 1 {
                    l.initialize(x, &self.config)?;
                }
                self.steps
                    .set(&Tensor::full(steps as f64, 1, &Device::Cpu)?)?;
                if steps <= self.config.quant_delay {
                    return Ok(x.clone());
                }
            }
            return l.forward(x, mode, &self.config);
        }
        if mode == Mode::Train {
            self.observe(x)?;
            let steps = self.steps()? + 1;
            self.steps
                .set(&Tensor::full(steps as f64, 1, &Device::Cpu)?)?;
            if steps <= self.config.quant_delay {
                return Ok(x.clone());
            }
        }
        let ranges = self.nudged()?;
        let run = if self.config.per_channel {
            x.elem_count() / ranges.len().max(1)
        } else {
            x.elem_count()
        };
        Ok(x.contiguous()?.apply_op1(FakeQuantOp { ranges, run })?)
    }

    /// The state under `names` (`min`, `max`, `steps`, and for LSQ `maxq`, `neg_trunc`).
    pub fn params<'a>(
        &'a self,
        names: &'static [&'static str; 5],
    ) -> Vec<(&'static str, &'a Param)> {
        let mut p = vec![
            (names[0], &self.min),
            (names[1], &self.max),
            (names[2], &self.steps),
        ];
        if let Some(l) = &self.learned {
            p.extend([(names[3], &l.maxq), (names[4], &l.neg_trunc)]);
        }
        p
    }
}
