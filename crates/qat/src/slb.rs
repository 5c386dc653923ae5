//! SLB, searching for low-bit weights (spec §2.10, §3.13): every Conv2d weight becomes a choice
//! among a few discrete values, learned through a softmax relaxation whose temperature rises on
//! a schedule until the choice is frozen to the most likely value.

use candle_core::{DType, Device, Tensor, D};
use gstick_nn::cell::downcast;
use gstick_nn::cells::{BatchNorm2d, Conv2d};
use gstick_nn::error::expect_inputs;
use gstick_nn::kernels::channel_bias::add_channel_bias;
use gstick_nn::kernels::conv2d::{conv2d, ConvGeom};
use gstick_nn::train::{Callback, EpochReport, TrainState};
use gstick_nn::{Cell, CellCtx, Executor, Mode, Network, Param};
use gstick_rewrite::{NodeId, Op};
use serde::{Deserialize, Serialize};

use super::cells::FakeQuant;
use super::fake_quant::FakeQuantConfig;
use crate::ConfigError;
use gstick_nn::comp_algo::invalid;
use gstick_nn::CompAlgo;

/// SLB's weight widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlbBits {
    Int1,
    Int2,
    Int4,
}

impl SlbBits {
    pub fn bits(self) -> u32 {
        match self {
            SlbBits::Int1 => 1,
            SlbBits::Int2 => 2,
            SlbBits::Int4 => 4,
        }
    }

    /// The discrete set: {-1, +1} for 1 bit, else 2^b values evenly spaced over [-1, 1].
    pub fn values(self) -> Vec<f32> {
        match self {
            SlbBits::Int1 => vec![-1.0, 1.0],
            b => {
                let n = 1usize << b.bits();
                (0..n)
                    .map(|k| -1.0 + 2.0 * k as f32 / (n - 1) as f32)
                    .collect()
            }
        }
    }
}

/// SLB's configuration (spec §2.10) with the original's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlbConfig {
    pub weight_quant_dtype: SlbBits,
    pub enable_act_quant: bool,
    pub enable_bn_calibration: bool,
    /// Total training epochs (must be set before `callbacks`).
    pub epoch_size: i64,
    /// Epochs trained before this run (must be set before `callbacks`).
    pub has_trained_epoch: i64,
    pub t_start_val: f64,
    /// Fraction of the epochs after which the temperature starts rising.
    pub t_start_time: f64,
    /// Fraction of the epochs at which the weights are frozen to their most likely value.
    pub t_end_time: f64,
    pub t_factor: f64,
    /// Seed of the weight-choice initialization.
    pub seed: u64,
}

impl Default for SlbConfig {
    fn default() -> Self {
        SlbConfig {
            weight_quant_dtype: SlbBits::Int1,
            enable_act_quant: false,
            enable_bn_calibration: false,
            epoch_size: -1,
            has_trained_epoch: -1,
            t_start_val: 1.0,
            t_start_time: 0.2,
            t_end_time: 0.6,
            t_factor: 1.2,
            seed: 0,
        }
    }
}

impl SlbConfig {
    /// The checks `apply` needs; each names its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.t_start_val > 0.0 && self.t_start_val.is_finite()) {
            return Err(invalid("t_start_val", "must be a positive number"));
        }
        if !(0.0..=1.0).contains(&self.t_start_time) {
            return Err(invalid("t_start_time", "must be in [0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.t_end_time) {
            return Err(invalid("t_end_time", "must be in [0, 1]"));
        }
        if !(self.t_factor > 0.0 && self.t_factor.is_finite()) {
            return Err(invalid("t_factor", "must be a positive number"));
        }
        Ok(())
    }

    /// The further checks of `callbacks`: the schedule needs the epoch counts.
    pub fn validate_schedule(&self) -> Result<(), ConfigError> {
        self.validate()?;
        if self.epoch_size <= 0 {
            return Err(invalid(
                "epoch_size",
                "must be set to the number of training epochs",
            ));
        }
        if self.has_trained_epoch < 0 {
            return Err(invalid(
                "has_trained_epoch",
                "must be set (0 for a fresh run)",
            ));
        }
        if self.epoch_size <= self.has_trained_epoch {
            return Err(invalid(
                "epoch_size",
                format!(
                    "{} is not more than has_trained_epoch {}",
                    self.epoch_size, self.has_trained_epoch
                ),
            ));
        }
        if self.t_end_time < self.t_start_time {
            return Err(invalid("t_end_time", "is before t_start_time"));
        }
        Ok(())
    }

    /// Temperature at (absolute) `epoch`, and whether the choice is frozen.
    pub fn temperature(&self, epoch: i64) -> (f64, bool) {
        let t_start = (self.epoch_size as f64 * self.t_start_time) as i64;
        let t_end = (self.epoch_size as f64 * self.t_end_time) as i64;
        let t = if epoch > t_start {
            self.t_start_val * self.t_factor.powi((epoch.min(t_end) - t_start) as i32)
        } else {
            self.t_start_val
        };
        (t, epoch >= t_end)
    }
}

/// A Conv2d whose weight is a learned choice among discrete values (`Conv2dSlbQuant`).
#[derive(Clone, Debug)]
pub struct SlbConv2d {
    pub conv: Conv2d,
    /// Choice scores, (out, in / groups, kh, kw, values); trained.
    pub logits: Param,
    pub values: Vec<f32>,
    pub temperature: Param,
    /// 1 once the choice is frozen to the most likely value.
    pub hard: Param,
}

impl SlbConv2d {
    /// Scores drawn with He-normal scaling over the fan-out, as the original initializes them.
    pub fn new(conv: Conv2d, bits: SlbBits, rng: &mut gstick_nn::Rng) -> gstick_nn::Result<Self> {
        let values = bits.values();
        let mut dims = conv.weight.tensor().dims().to_vec();
        dims.push(values.len());
        let fan_out: usize = dims[0] * dims[2..].iter().product::<usize>();
        let std = (2.0 / fan_out as f64).sqrt() as f32;
        let n: usize = dims.iter().product();
        use rand_distr_free::normal;
        let scores: Vec<f32> = (0..n).map(|_| normal(rng) * std).collect();
        let dev = Device::Cpu;
        Ok(SlbConv2d {
            logits: Param::weight(Tensor::from_vec(scores, dims, &dev)?)?,
            values,
            conv,
            temperature: Param::buffer(Tensor::ones(1, DType::F32, &dev)?)?,
            hard: Param::buffer(Tensor::zeros(1, DType::F32, &dev)?)?,
        })
    }

    fn is_hard(&self) -> gstick_nn::Result<bool> {
        Ok(self.hard.tensor().to_vec1::<f32>()?[0] > 0.5)
    }

    /// The most likely value of every weight.
    pub fn discrete_weight(&self) -> gstick_nn::Result<Tensor> {
        let idx = self.logits.tensor().detach().argmax(D::Minus1)?;
        let values = Tensor::new(self.values.as_slice(), &Device::Cpu)?;
        let dims = idx.dims().to_vec();
        Ok(values.index_select(&idx.flatten_all()?, 0)?.reshape(dims)?)
    }

    /// The weight the conv uses now: the softmax-weighted mean of the values while searching,
    /// the most likely value once frozen or in evaluation.
    pub fn weight(&self, mode: Mode) -> gstick_nn::Result<Tensor> {
        if mode == Mode::Eval || self.is_hard()? {
            return self.discrete_weight();
        }
        let t = self.temperature.tensor().to_vec1::<f32>()?[0] as f64;
        let p = candle_nn_softmax_last(&(self.logits.value(mode) * t)?)?;
        let k = self.values.len();
        let values = Tensor::new(self.values.as_slice(), &Device::Cpu)?.reshape((k, 1))?;
        let dims = p.dims()[..p.rank() - 1].to_vec();
        Ok(p.reshape(((), k))?.matmul(&values)?.reshape(dims)?)
    }
}

fn candle_nn_softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// A tiny seeded normal sampler (Box-Muller) so SLB needs no extra dependency.
mod rand_distr_free {
    use rand::Rng;

    pub fn normal(rng: &mut gstick_nn::Rng) -> f32 {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

impl Cell for SlbConv2d {
    fn kind(&self) -> &'static str {
        "Conv2dSlbQuant"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("Conv2dSlbQuant", inputs, 1)?;
        let c = self.conv.config;
        let geom = ConvGeom {
            stride: c.stride,
            padding: c.padding,
            dilation: c.dilation,
            groups: c.groups,
        };
        let y = conv2d(&inputs[0], &self.weight(ctx.mode)?, geom)?;
        Ok(match &self.conv.bias {
            Some(b) => add_channel_bias(&y, &b.value(ctx.mode))?,
            None => y,
        })
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        let mut p = vec![("weight", &self.logits)];
        p.extend(self.conv.bias.as_ref().map(|b| ("bias", b)));
        p.extend([("temperature", &self.temperature), ("hard", &self.hard)]);
        p
    }

    fn summary(&self) -> String {
        format!("{} values", self.values.len())
    }
}

/// The SLB algorithm.
pub struct Slb {
    pub config: SlbConfig,
}

impl Slb {
    pub fn new(config: SlbConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Slb { config })
    }
}

fn slb_cells(
    g: &Network,
    f: &mut dyn FnMut(&SlbConv2d) -> gstick_nn::Result<()>,
) -> gstick_nn::Result<()> {
    for (_, node) in g.nodes_recursive() {
        if let Some(c) = node.cell().and_then(|c| downcast::<SlbConv2d>(c.as_ref())) {
            f(c)?;
        }
    }
    Ok(())
}

/// Puts an 8-bit per-tensor activation quantizer (starting after 900 steps) in front of every
/// SLB conv of one graph, one per value read.
fn quantize_conv_inputs(g: &mut Network) -> crate::Result<()> {
    let mut quantizer_of: std::collections::HashMap<NodeId, NodeId> = Default::default();
    for id in g.node_ids().to_vec() {
        if g.node(id)?.kind() != "Conv2dSlbQuant" {
            continue;
        }
        let src = g.node(id)?.inputs()[0];
        let fq = match quantizer_of.get(&src) {
            Some(&fq) => fq,
            None => {
                let q = FakeQuant::new(FakeQuantConfig {
                    quant_delay: 900,
                    ..FakeQuantConfig::activation()
                })?;
                let qname = g.unique_name(&format!("{}_quant", g.name_of(src)?));
                let fq = g.insert(
                    g.after(src),
                    &qname,
                    Op::Cell(Box::new(q) as Box<dyn Cell>),
                    &[src],
                )?;
                quantizer_of.insert(src, fq);
                fq
            }
        };
        g.set_input(id, 0, fq)?;
    }
    Ok(())
}

impl CompAlgo for Slb {
    type Error = crate::Error;

    fn name(&self) -> &'static str {
        "SlbQuantAwareTraining"
    }

    /// Replaces every Conv2d by an SLB conv (choice scores drawn from the configured seed, in
    /// execution order), with activation quantizers on their inputs when enabled.
    fn apply(&mut self, net: &mut Network) -> crate::Result<()> {
        self.config.validate()?;
        let config = self.config.clone();
        let mut rng = gstick_nn::rng(config.seed);
        net.transaction(|g| {
            g.replace_cells(|site| match downcast::<Conv2d>(site.cell.as_ref()) {
                Some(conv) => Ok::<_, crate::Error>(Some(Box::new(SlbConv2d::new(
                    conv.clone(),
                    config.weight_quant_dtype,
                    &mut rng,
                )?) as Box<dyn Cell>)),
                None => Ok(None),
            })?;
            if config.enable_act_quant {
                g.edit_graphs(|_, g| quantize_conv_inputs(g))?;
            }
            Ok(())
        })
    }

    /// Each SLB conv becomes a Conv2d with its discrete weights.
    fn convert(&self, net: &mut Network) -> crate::Result<()> {
        net.replace_cells(|site| {
            let Some(s) = downcast::<SlbConv2d>(site.cell.as_ref()) else {
                return Ok::<_, crate::Error>(None);
            };
            let conv = Conv2d::from_tensors(
                s.discrete_weight()?,
                s.conv.bias.as_ref().map(|b| b.tensor().clone()),
                s.conv.config,
            )?;
            Ok(Some(Box::new(conv) as Box<dyn Cell>))
        })?;
        Ok(())
    }

    /// The temperature schedule (and BN re-calibration when enabled, which needs its data:
    /// see [`BnCalibration`]).
    fn callbacks(&self) -> crate::Result<Vec<Box<dyn Callback>>> {
        self.config.validate_schedule()?;
        Ok(vec![Box::new(TemperatureScheduler {
            config: self.config.clone(),
        })])
    }

    fn summary(&self, net: &Network) -> Vec<(String, String)> {
        net.nodes_recursive()
            .into_iter()
            .filter_map(|(name, node)| {
                let cell = node.cell()?;
                let info = match downcast::<SlbConv2d>(cell.as_ref()) {
                    Some(s) => format!("Conv2dSlbQuant: {} values", s.values.len()),
                    None if cell.kind() == "FakeQuant" => format!("FakeQuant: {}", cell.summary()),
                    None => "NA".into(),
                };
                Some((name, info))
            })
            .collect()
    }
}

/// Sets every SLB conv's temperature at the start of each epoch and freezes the choices at the
/// schedule's end.
pub struct TemperatureScheduler {
    pub config: SlbConfig,
}

impl Callback for TemperatureScheduler {
    fn on_epoch_begin(&mut self, state: &mut TrainState) -> gstick_nn::Result<()> {
        let epoch = state.epoch as i64 + self.config.has_trained_epoch;
        let (t, hard) = self.config.temperature(epoch);
        let dev = Device::Cpu;
        let (t, h) = (
            Tensor::new(&[t as f32], &dev)?,
            Tensor::new(&[if hard { 1f32 } else { 0.0 }], &dev)?,
        );
        slb_cells(state.net, &mut |c| {
            c.temperature.set(&t)?;
            c.hard.set(&h)
        })
    }
}

/// BN re-calibration (spec §3.13): at the end of each epoch after the temperature starts rising,
/// BatchNorm running statistics are re-estimated on `batches` under the current weights.
pub struct BnCalibration {
    pub config: SlbConfig,
    pub batches: Vec<Tensor>,
}

impl Callback for BnCalibration {
    fn on_epoch_end(&mut self, state: &mut TrainState, _r: &EpochReport) -> gstick_nn::Result<()> {
        let epoch = state.epoch as i64 + self.config.has_trained_epoch;
        let t_start = (self.config.epoch_size as f64 * self.config.t_start_time) as i64;
        if !self.config.enable_bn_calibration || epoch <= t_start {
            return Ok(());
        }
        let has_bn = state.net.nodes_recursive().iter().any(|(_, n)| {
            n.cell()
                .is_some_and(|c| downcast::<BatchNorm2d>(c.as_ref()).is_some())
        });
        if !has_bn {
            return Ok(());
        }
        // Training-mode forwards update the running statistics; nothing is optimized.
        let mut exec = Executor::new(Mode::Train, 0);
        for x in &self.batches {
            exec.forward1(state.net, &x.detach())?;
        }
        Ok(())
    }
}
