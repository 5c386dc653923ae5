//! The cells SimQAT rewrites into a network (spec §3.12): an activation fake quantizer, Conv2d and
//! Linear with fake-quantized weights, the fused Conv2d+BatchNorm2d, and its three quantized
//! BatchNorm treatments.

use candle_core::{DType, Device, Tensor};
use gstick_nn::cells::{BatchNorm2d, Conv2d, Linear};
use gstick_nn::error::expect_inputs;
use gstick_nn::kernels::channel_bias::add_channel_bias;
use gstick_nn::kernels::conv2d::{conv2d, ConvGeom};
use gstick_nn::{Cell, CellCtx, Mode, Param};

use super::fake_quant::{FakeQuantConfig, FakeQuantizer};

const WEIGHT_FQ: &[&str; 5] = &[
    "weight_quant.min",
    "weight_quant.max",
    "weight_quant.steps",
    "weight_quant.maxq",
    "weight_quant.neg_trunc",
];
const ACT_FQ: &[&str; 5] = &["min", "max", "steps", "maxq", "neg_trunc"];

fn conv_with(conv: &Conv2d, x: &Tensor, w: &Tensor) -> gstick_nn::Result<Tensor> {
    let c = conv.config;
    let geom = ConvGeom {
        stride: c.stride,
        padding: c.padding,
        dilation: c.dilation,
        groups: c.groups,
    };
    Ok(conv2d(x, w, geom)?)
}

fn per_out_channel(t: &Tensor) -> candle_core::Result<Tensor> {
    let c = t.elem_count();
    t.reshape((c, 1, 1, 1))
}

fn per_feature_map(t: &Tensor) -> candle_core::Result<Tensor> {
    let c = t.elem_count();
    t.reshape((1, c, 1, 1))
}

/// Fake quantization of an activation (per tensor): a node of its own, placed after the value it
/// quantizes.
#[derive(Clone, Debug)]
pub struct FakeQuant {
    pub quantizer: FakeQuantizer,
}

impl FakeQuant {
    pub fn new(config: FakeQuantConfig) -> gstick_nn::Result<Self> {
        Ok(FakeQuant {
            quantizer: FakeQuantizer::new(config, 1)?,
        })
    }
}

impl Cell for FakeQuant {
    fn kind(&self) -> &'static str {
        "FakeQuant"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("FakeQuant", inputs, 1)?;
        self.quantizer.forward(&inputs[0], ctx.mode)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        self.quantizer.params(ACT_FQ)
    }

    fn summary(&self) -> String {
        describe(&self.quantizer)
    }
}

fn describe(q: &FakeQuantizer) -> String {
    let c = q.config;
    format!(
        "int{} {} {}{}",
        c.bits,
        if c.per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        if c.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        },
        if c.narrow { " narrow" } else { "" }
    )
}

/// Conv2d computing with its fake-quantized weight (`Conv2dQuant`).
#[derive(Clone, Debug)]
pub struct QuantConv2d {
    pub conv: Conv2d,
    pub weight_quant: FakeQuantizer,
}

impl QuantConv2d {
    pub fn new(conv: Conv2d, config: FakeQuantConfig) -> gstick_nn::Result<Self> {
        let weight_quant = FakeQuantizer::new(config, conv.out_channels())?;
        Ok(QuantConv2d { conv, weight_quant })
    }
}

impl Cell for QuantConv2d {
    fn kind(&self) -> &'static str {
        "Conv2dQuant"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("Conv2dQuant", inputs, 1)?;
        let w = self
            .weight_quant
            .forward(&self.conv.weight.value(ctx.mode), ctx.mode)?;
        let y = conv_with(&self.conv, &inputs[0], &w)?;
        Ok(match &self.conv.bias {
            Some(b) => add_channel_bias(&y, &b.value(ctx.mode))?,
            None => y,
        })
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        let mut p = vec![("weight", &self.conv.weight)];
        p.extend(self.conv.bias.as_ref().map(|b| ("bias", b)));
        p.extend(self.weight_quant.params(WEIGHT_FQ));
        p
    }

    fn summary(&self) -> String {
        format!("weight {}", describe(&self.weight_quant))
    }
}

/// Linear computing with its fake-quantized weight (`DenseQuant`).
#[derive(Clone, Debug)]
pub struct QuantLinear {
    pub linear: Linear,
    pub weight_quant: FakeQuantizer,
}

impl QuantLinear {
    pub fn new(linear: Linear, config: FakeQuantConfig) -> gstick_nn::Result<Self> {
        let weight_quant = FakeQuantizer::new(config, linear.out_features())?;
        Ok(QuantLinear {
            linear,
            weight_quant,
        })
    }
}

impl Cell for QuantLinear {
    fn kind(&self) -> &'static str {
        "DenseQuant"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("DenseQuant", inputs, 1)?;
        let w = self
            .weight_quant
            .forward(&self.linear.weight.value(ctx.mode), ctx.mode)?;
        let x = &inputs[0];
        let y = x.matmul(&w.t()?)?;
        Ok(match &self.linear.bias {
            Some(b) => y.broadcast_add(&b.value(ctx.mode))?,
            None => y,
        })
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        let mut p = vec![("weight", &self.linear.weight)];
        p.extend(self.linear.bias.as_ref().map(|b| ("bias", b)));
        p.extend(self.weight_quant.params(WEIGHT_FQ));
        p
    }

    fn summary(&self) -> String {
        format!("weight {}", describe(&self.weight_quant))
    }
}

/// Conv2d followed by BatchNorm2d as one float cell (`Conv2dBn`), what the fusion pattern makes
/// before the quantization policy wraps it.
#[derive(Clone, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

impl Cell for ConvBn {
    fn kind(&self) -> &'static str {
        "Conv2dBn"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        let y = self.conv.forward(inputs, ctx)?;
        self.bn.forward(&[y], ctx)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        conv_bn_params(&self.conv, &self.bn)
    }
}

fn conv_bn_params<'a>(conv: &'a Conv2d, bn: &'a BatchNorm2d) -> Vec<(&'static str, &'a Param)> {
    let mut p = vec![("weight", &conv.weight)];
    p.extend(conv.bias.as_ref().map(|b| ("bias", b)));
    p.extend([
        ("bn.weight", &bn.weight),
        ("bn.bias", &bn.bias),
        ("bn.running_mean", &bn.running_mean),
        ("bn.running_var", &bn.running_var),
    ]);
    p
}

/// How a quantized Conv2d+BatchNorm2d treats the BatchNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnFold {
    /// `Conv2dBnWithoutFoldQuant`: conv with the fake-quantized weight, then the real BatchNorm.
    None,
    /// `Conv2dBnFoldQuantOneConv`: the weight scaled by gamma / sigma (running) is fake-quantized;
    /// before the freeze the scale is undone and the BatchNorm applied, after it the folded bias
    /// is added.
    OneConv,
    /// `Conv2dBnFoldQuant`: a first float conv gives the batch statistics; the second conv uses
    /// the fake-quantized weight folded with the running sigma and is corrected to the batch
    /// statistics until the freeze, after which the running statistics are used.
    TwoConv,
}

/// Conv2d+BatchNorm2d with a fake-quantized (folded or not) weight.
#[derive(Clone, Debug)]
pub struct QuantConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
    pub fold: BnFold,
    pub weight_quant: FakeQuantizer,
    /// Training steps after which the BatchNorm uses its running statistics (folded treatments).
    pub freeze_bn: u64,
    pub steps: Param,
}

impl QuantConvBn {
    pub fn new(
        conv: Conv2d,
        bn: BatchNorm2d,
        fold: BnFold,
        config: FakeQuantConfig,
        freeze_bn: u64,
    ) -> gstick_nn::Result<Self> {
        if fold != BnFold::None && conv.bias.is_some() {
            return Err(gstick_nn::Error::Config(
                "a folded Conv2d+BatchNorm2d takes a conv without bias (fusion moves it into the BN)"
                    .into(),
            ));
        }
        let weight_quant = FakeQuantizer::new(config, conv.out_channels())?;
        Ok(QuantConvBn {
            conv,
            bn,
            fold,
            weight_quant,
            freeze_bn,
            steps: Param::buffer(Tensor::zeros(1, DType::F64, &Device::Cpu)?)?,
        })
    }

    /// sigma = sqrt(running_var + eps) per channel.
    fn running_sigma(&self) -> candle_core::Result<Tensor> {
        (self.bn.running_var.tensor() + self.bn.eps)?.sqrt()
    }

    /// The weight scaled by gamma / sigma (running), per output channel.
    fn folded_weight(&self, mode: Mode) -> gstick_nn::Result<Tensor> {
        let gamma = self.bn.weight.value(mode);
        let factor = gamma.div(&self.running_sigma()?)?;
        Ok(self
            .conv
            .weight
            .value(mode)
            .broadcast_mul(&per_out_channel(&factor)?)?)
    }

    /// beta - gamma * mean / sigma with the running statistics.
    fn folded_bias(&self, mode: Mode) -> gstick_nn::Result<Tensor> {
        let gamma = self.bn.weight.value(mode);
        let shift = gamma
            .mul(self.bn.running_mean.tensor())?
            .div(&self.running_sigma()?)?;
        Ok(self.bn.bias.value(mode).sub(&shift)?)
    }

    /// What evaluation computes, split for integer deployment: the weight the fake quantizer
    /// sees, the conv bias, and for the unfolded treatment the BatchNorm applied after the conv
    /// (mean, sqrt(var + eps), gamma, beta).
    #[allow(clippy::type_complexity)]
    pub fn eval_parts(&self) -> gstick_nn::Result<(Tensor, Tensor, Option<[Tensor; 4]>)> {
        let mode = Mode::Eval;
        match self.fold {
            BnFold::None => {
                let out = self.conv.out_channels();
                let bias = match &self.conv.bias {
                    Some(b) => b.tensor().clone(),
                    None => Tensor::zeros(out, DType::F32, &Device::Cpu)?,
                };
                let bn = [
                    self.bn.running_mean.tensor().clone(),
                    self.running_sigma()?,
                    self.bn.weight.tensor().clone(),
                    self.bn.bias.tensor().clone(),
                ];
                Ok((self.conv.weight.value(mode), bias, Some(bn)))
            }
            BnFold::OneConv | BnFold::TwoConv => {
                Ok((self.folded_weight(mode)?, self.folded_bias(mode)?, None))
            }
        }
    }

    /// Counts a training step; whether the BatchNorm is frozen now.
    fn frozen(&self, mode: Mode) -> gstick_nn::Result<bool> {
        if mode != Mode::Train {
            return Ok(true);
        }
        let steps = self.steps.tensor().to_vec1::<f64>()?[0] + 1.0;
        self.steps.set(&Tensor::full(steps, 1, &Device::Cpu)?)?;
        Ok(steps as u64 > self.freeze_bn)
    }
}

impl Cell for QuantConvBn {
    fn kind(&self) -> &'static str {
        match self.fold {
            BnFold::None => "Conv2dBnWithoutFoldQuant",
            BnFold::OneConv => "Conv2dBnFoldQuantOneConv",
            BnFold::TwoConv => "Conv2dBnFoldQuant",
        }
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs(self.kind(), inputs, 1)?;
        let x = &inputs[0];
        let mode = ctx.mode;
        match self.fold {
            BnFold::None => {
                let w = self
                    .weight_quant
                    .forward(&self.conv.weight.value(mode), mode)?;
                let y = conv_with(&self.conv, x, &w)?;
                let y = match &self.conv.bias {
                    Some(b) => add_channel_bias(&y, &b.value(mode))?,
                    None => y,
                };
                self.bn.forward(&[y], ctx)
            }
            BnFold::OneConv => {
                let frozen = self.frozen(mode)?;
                let w = self
                    .weight_quant
                    .forward(&self.folded_weight(mode)?, mode)?;
                let y = conv_with(&self.conv, x, &w)?;
                if frozen {
                    return Ok(add_channel_bias(&y, &self.folded_bias(mode)?)?);
                }
                // Undo the fold (y * sigma / gamma), then the real BatchNorm with batch statistics.
                let undo = self.running_sigma()?.div(&self.bn.weight.value(mode))?;
                let y = y.broadcast_mul(&per_feature_map(&undo)?)?;
                self.bn.forward(&[y], ctx)
            }
            BnFold::TwoConv => {
                let frozen = self.frozen(mode)?;
                let w = self
                    .weight_quant
                    .forward(&self.folded_weight(mode)?, mode)?;
                let y = conv_with(&self.conv, x, &w)?;
                if frozen {
                    return Ok(add_channel_bias(&y, &self.folded_bias(mode)?)?);
                }
                // Batch statistics from the float conv; the running ones are updated with them.
                let sigma_running = self.running_sigma()?;
                let y_float = conv_with(&self.conv, x, &self.conv.weight.value(mode))?;
                let (mean, var) = batch_stats(&y_float)?;
                update_running(
                    &self.bn,
                    &mean,
                    &var,
                    y_float.elem_count() / mean.elem_count(),
                )?;
                let sigma_batch = (var + self.bn.eps)?.sqrt()?;
                let gamma = self.bn.weight.value(mode);
                let correction = sigma_running.div(&sigma_batch)?;
                let bias = self
                    .bn
                    .bias
                    .value(mode)
                    .sub(&gamma.mul(&mean)?.div(&sigma_batch)?)?;
                let y = y.broadcast_mul(&per_feature_map(&correction)?)?;
                Ok(y.broadcast_add(&per_feature_map(&bias)?)?)
            }
        }
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        let mut p = conv_bn_params(&self.conv, &self.bn);
        p.extend(self.weight_quant.params(WEIGHT_FQ));
        p.push(("steps", &self.steps));
        p
    }

    fn summary(&self) -> String {
        format!(
            "weight {}, freeze_bn {}",
            describe(&self.weight_quant),
            self.freeze_bn
        )
    }
}

/// Per-channel mean and biased variance of NCHW activations (both tracked by autodiff).
fn batch_stats(y: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let c = y.dims()[1];
    let per_channel = y.transpose(0, 1)?.contiguous()?.reshape((c, ()))?;
    let mean = per_channel.mean(1)?;
    let var = per_channel
        .broadcast_sub(&mean.unsqueeze(1)?)?
        .sqr()?
        .mean(1)?;
    Ok((mean, var))
}

/// PyTorch's running-statistics update (unbiased variance), as `BatchNorm2d` does.
fn update_running(
    bn: &BatchNorm2d,
    mean: &Tensor,
    var: &Tensor,
    n: usize,
) -> gstick_nn::Result<()> {
    let m = bn.momentum;
    let n = n as f64;
    let unbiased = (var.detach() * (n / (n - 1.0).max(1.0)))?;
    bn.running_mean
        .set(&((bn.running_mean.tensor() * (1.0 - m))? + (mean.detach() * m)?)?)?;
    bn.running_var
        .set(&((bn.running_var.tensor() * (1.0 - m))? + (unbiased * m)?)?)?;
    Ok(())
}
