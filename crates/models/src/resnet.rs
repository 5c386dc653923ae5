//! Configurable ResNets. Each residual block is a sub-graph node (`layer1.0`, kind `BasicBlock`
//! or `Bottleneck`), so parameters get torchvision's names (`layer1.0.conv1.weight`,
//! `layer2.0.downsample.0.weight`) and passes can enter and edit one block at a time.

use gstick_nn::cells::{
    Activation, ActivationKind, Add, BatchNorm2d, Conv2d, Conv2dConfig, GlobalAvgPool, Linear,
    Pool2d, PoolKind,
};
use gstick_nn::{Network, Rng};
use gstick_rewrite::NodeId;

use crate::{boxed, Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34, ResNet-20).
    Basic,
    /// 1x1 - 3x3 - 1x1 with 4x expansion (ResNet-50 and up).
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// One 3x3 convolution, stride 1, no pooling: small inputs (28x28, 32x32).
    Small,
    /// 7x7 stride-2 convolution and 3x3 stride-2 max pooling: ImageNet-sized inputs.
    ImageNet,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResNetConfig {
    pub block: BlockKind,
    /// Blocks per stage.
    pub layers: Vec<usize>,
    /// Base width per stage (before expansion); stages after the first halve the resolution.
    pub widths: Vec<usize>,
    pub stem: Stem,
    pub in_channels: usize,
    pub classes: usize,
}

impl ResNetConfig {
    /// ResNet-20 (He et al., CIFAR variant): 3 stages of 3 basic blocks, widths 16/32/64.
    pub fn resnet20(in_channels: usize, classes: usize) -> Self {
        ResNetConfig {
            block: BlockKind::Basic,
            layers: vec![3, 3, 3],
            widths: vec![16, 32, 64],
            stem: Stem::Small,
            in_channels,
            classes,
        }
    }

    /// ResNet-18 topology (torchvision).
    pub fn resnet18(in_channels: usize, classes: usize) -> Self {
        ResNetConfig {
            block: BlockKind::Basic,
            layers: vec![2, 2, 2, 2],
            widths: vec![64, 128, 256, 512],
            stem: Stem::ImageNet,
            in_channels,
            classes,
        }
    }

    /// ResNet-50 topology (torchvision, stride on the 3x3 convolution).
    pub fn resnet50(in_channels: usize, classes: usize) -> Self {
        ResNetConfig {
            block: BlockKind::Bottleneck,
            layers: vec![3, 4, 6, 3],
            ..Self::resnet18(in_channels, classes)
        }
    }
}

fn conv(
    i: usize,
    o: usize,
    k: usize,
    stride: usize,
    rng: &mut Rng,
) -> Result<Box<dyn gstick_nn::Cell>> {
    let config = Conv2dConfig {
        stride,
        padding: k / 2,
        ..Default::default()
    };
    Ok(boxed(Conv2d::new(i, o, k, config, false, rng)?))
}

fn bn(c: usize) -> Result<Box<dyn gstick_nn::Cell>> {
    Ok(boxed(BatchNorm2d::new(c)?))
}

fn relu() -> Box<dyn gstick_nn::Cell> {
    boxed(Activation(ActivationKind::Relu))
}

/// One residual block as a graph with one input and one output.
fn block(
    kind: BlockKind,
    inp: usize,
    width: usize,
    stride: usize,
    rng: &mut Rng,
) -> Result<Network> {
    let out = width * kind.expansion();
    let mut g = Network::new();
    let x = g.add_input("x");
    let mut h: NodeId = x;
    let convs: Vec<(usize, usize, usize, usize)> = match kind {
        BlockKind::Basic => vec![(inp, width, 3, stride), (width, width, 3, 1)],
        BlockKind::Bottleneck => vec![
            (inp, width, 1, 1),
            (width, width, 3, stride),
            (width, out, 1, 1),
        ],
    };
    let last = convs.len();
    for (i, (ci, co, k, s)) in convs.into_iter().enumerate() {
        let n = i + 1;
        h = g.add_cell(&format!("conv{n}"), conv(ci, co, k, s, rng)?, &[h])?;
        h = g.add_cell(&format!("bn{n}"), bn(co)?, &[h])?;
        if n < last {
            h = g.add_cell(&format!("relu{n}"), relu(), &[h])?;
        }
    }
    let shortcut = if stride != 1 || inp != out {
        let d = g.add_cell("downsample.0", conv(inp, out, 1, stride, rng)?, &[x])?;
        g.add_cell("downsample.1", bn(out)?, &[d])?
    } else {
        x
    };
    let sum = g.add_cell("add", boxed(Add), &[h, shortcut])?;
    let y = g.add_cell("relu", relu(), &[sum])?;
    g.set_outputs(&[y])?;
    Ok(g)
}

/// Builds a ResNet from its configuration with seeded initialization.
pub fn resnet(config: &ResNetConfig, rng: &mut Rng) -> Result<Network> {
    if config.layers.is_empty()
        || config.layers.len() != config.widths.len()
        || config.layers.contains(&0)
    {
        return Err(Error::Config(format!(
            "ResNet needs one width per stage and at least one block per stage (layers {:?}, widths {:?})",
            config.layers, config.widths
        )));
    }
    let mut g = Network::new();
    let x = g.add_input("x");
    let stem_width = config.widths[0];
    let mut h = match config.stem {
        Stem::Small => g.add_cell(
            "conv1",
            conv(config.in_channels, stem_width, 3, 1, rng)?,
            &[x],
        )?,
        Stem::ImageNet => g.add_cell(
            "conv1",
            conv(config.in_channels, stem_width, 7, 2, rng)?,
            &[x],
        )?,
    };
    h = g.add_cell("bn1", bn(stem_width)?, &[h])?;
    h = g.add_cell("relu", relu(), &[h])?;
    if config.stem == Stem::ImageNet {
        h = g.add_cell("maxpool", boxed(Pool2d::new(PoolKind::Max, 3, 2, 1)?), &[h])?;
    }
    let kind_name = match config.block {
        BlockKind::Basic => "BasicBlock",
        BlockKind::Bottleneck => "Bottleneck",
    };
    let mut channels = stem_width;
    for (stage, (&blocks, &width)) in config.layers.iter().zip(&config.widths).enumerate() {
        for b in 0..blocks {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let sub = block(config.block, channels, width, stride, rng)?;
            h = g.add_subgraph(&format!("layer{}.{b}", stage + 1), kind_name, sub, &[h])?;
            channels = width * config.block.expansion();
        }
    }
    h = g.add_cell("avgpool", boxed(GlobalAvgPool), &[h])?;
    h = g.add_cell(
        "fc",
        boxed(Linear::new(channels, config.classes, true, rng)?),
        &[h],
    )?;
    g.set_outputs(&[h])?;
    Ok(g)
}
