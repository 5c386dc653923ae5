use candle_core::Tensor;

use crate::error::expect_inputs;
use crate::init::{default_bound, uniform};
use crate::kernels::channel_bias::add_channel_bias;
use crate::kernels::conv2d::{conv2d, ConvGeom};
use crate::{Cell, CellCtx, Error, Param, Result, Rng};

/// Geometry of a 2-D convolution (symmetric padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Conv2dConfig {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

/// 2-D convolution over NCHW input; the weight is (out, in / groups, kh, kw). A depthwise
/// convolution is `groups == in == out`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Param,
    pub bias: Option<Param>,
    pub config: Conv2dConfig,
}

impl Conv2d {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        config: Conv2dConfig,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        if config.groups == 0
            || !in_channels.is_multiple_of(config.groups)
            || !out_channels.is_multiple_of(config.groups)
        {
            return Err(Error::Config(format!(
                "Conv2d: groups {} must divide in_channels {in_channels} and out_channels {out_channels}",
                config.groups
            )));
        }
        if config.stride == 0 || config.dilation == 0 {
            return Err(Error::Config(
                "Conv2d: stride and dilation must be at least 1".into(),
            ));
        }
        let fan_in = in_channels / config.groups * kernel * kernel;
        let bound = default_bound(fan_in);
        let weight = uniform(
            &[out_channels, in_channels / config.groups, kernel, kernel],
            bound,
            rng,
        )?;
        let bias = if bias {
            Some(Param::weight(uniform(&[out_channels], bound, rng)?)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight: Param::weight(weight)?,
            bias,
            config,
        })
    }

    pub fn from_tensors(
        weight: Tensor,
        bias: Option<Tensor>,
        config: Conv2dConfig,
    ) -> Result<Self> {
        if weight.rank() != 4 {
            return Err(Error::Config(format!(
                "Conv2d weight must be 4-D, got shape {:?}",
                weight.dims()
            )));
        }
        Ok(Conv2d {
            weight: Param::weight(weight)?,
            bias: bias.map(Param::weight).transpose()?,
            config,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.weight.tensor().dims()[0]
    }
}

impl Cell for Conv2d {
    fn kind(&self) -> &'static str {
        "Conv2d"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> Result<Tensor> {
        expect_inputs("Conv2d", inputs, 1)?;
        let c = self.config;
        let geom = ConvGeom {
            stride: c.stride,
            padding: c.padding,
            dilation: c.dilation,
            groups: c.groups,
        };
        let y = conv2d(&inputs[0], &self.weight.value(ctx.mode), geom)?;
        Ok(match &self.bias {
            Some(b) => add_channel_bias(&y, &b.value(ctx.mode))?,
            None => y,
        })
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        let mut p = vec![("weight", &self.weight)];
        p.extend(self.bias.as_ref().map(|b| ("bias", b)));
        p
    }

    fn summary(&self) -> String {
        let d = self.weight.tensor().dims();
        let c = self.config;
        format!(
            "{}->{} k{}x{} s{} p{} d{} g{}{}",
            d[1] * c.groups,
            d[0],
            d[2],
            d[3],
            c.stride,
            c.padding,
            c.dilation,
            c.groups,
            if self.bias.is_some() { "" } else { " no bias" }
        )
    }
}
