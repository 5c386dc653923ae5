//! The models the CLI can build or load.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use gstick_models::{lenet5, load_mnistnet, mnistnet, resnet, ResNetConfig};
use gstick_nn::Network;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModelName {
    /// LeNet-5 (1x28x28 input).
    Lenet5,
    /// ccexam's MNISTNet architecture (1x28x28 input).
    Mnistnet,
    /// ccexam's pretrained MNISTNet, loaded from its mnist.pth.
    CcexamMnist,
    /// ResNet-20 (3 stages of basic blocks, widths 16/32/64).
    Resnet20,
    /// ResNet-18 topology.
    Resnet18,
    /// ResNet-50 topology.
    Resnet50,
}

/// Builds (or, for pretrained models, loads) the network.
pub fn build(
    name: ModelName,
    in_channels: usize,
    classes: usize,
    seed: u64,
    weights: Option<&PathBuf>,
) -> Result<Network> {
    let mut rng = gstick_nn::rng(seed);
    Ok(match name {
        ModelName::Lenet5 => lenet5(classes, &mut rng)?,
        ModelName::Mnistnet => mnistnet(&mut rng)?,
        ModelName::CcexamMnist => {
            let path = weights
                .cloned()
                .unwrap_or_else(|| gstick_data::assets_dir().join("ccexam/mnist.pth"));
            load_mnistnet(&path)
                .with_context(|| format!("loading the ccexam MNISTNet from {}", path.display()))?
        }
        ModelName::Resnet20 => resnet(&ResNetConfig::resnet20(in_channels, classes), &mut rng)?,
        ModelName::Resnet18 => resnet(&ResNetConfig::resnet18(in_channels, classes), &mut rng)?,
        ModelName::Resnet50 => resnet(&ResNetConfig::resnet50(in_channels, classes), &mut rng)?,
    })
}

/// Fails unless the model accepts images of this size.
pub fn check_input(name: ModelName, height: usize, width: usize) -> Result<()> {
    if matches!(
        name,
        ModelName::Lenet5 | ModelName::Mnistnet | ModelName::CcexamMnist
    ) && (height, width) != (28, 28)
    {
        bail!("{name:?} takes 28x28 images, the dataset has {height}x{width}; use resnet20 for other sizes");
    }
    Ok(())
}
