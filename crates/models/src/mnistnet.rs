//! The pretrained MNIST classifier of the `ccexam` package: conv 32@3x3 (pad 1) - ReLU - max pool 2 -
//! conv 64@3x3 (pad 1) - ReLU - max pool 2 - flatten (64x7x7) - fc 128 - ReLU - fc 10. Node names
//! follow its PyTorch modules (`features.0`, `classifier.2`) so the state dict loads by name.

use std::collections::HashMap;
use std::path::Path;

use gstick_nn::cells::{Activation, ActivationKind, Conv2d, Conv2dConfig, Flatten, Linear, Pool2d};
use gstick_nn::{checkpoint, Network, Rng};

use crate::{boxed, Error, Result};

/// The input normalization ccexam uses: (x / 255 - MNIST_MEAN) / MNIST_STD.
pub const MNIST_MEAN: f32 = 0.1307;
pub const MNIST_STD: f32 = 0.3081;

/// The MNISTNet architecture with fresh weights.
pub fn mnistnet(rng: &mut Rng) -> Result<Network> {
    let relu = || boxed(Activation(ActivationKind::Relu));
    let same = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let mut g = Network::new();
    let x = g.add_input("x");
    let c0 = g.add_cell(
        "features.0",
        boxed(Conv2d::new(1, 32, 3, same, true, rng)?),
        &[x],
    )?;
    let r1 = g.add_cell("features.1", relu(), &[c0])?;
    let p2 = g.add_cell("features.2", boxed(Pool2d::max(2, 2)), &[r1])?;
    let c3 = g.add_cell(
        "features.3",
        boxed(Conv2d::new(32, 64, 3, same, true, rng)?),
        &[p2],
    )?;
    let r4 = g.add_cell("features.4", relu(), &[c3])?;
    let p5 = g.add_cell("features.5", boxed(Pool2d::max(2, 2)), &[r4])?;
    let f = g.add_cell("flatten", boxed(Flatten::default()), &[p5])?;
    let l0 = g.add_cell(
        "classifier.0",
        boxed(Linear::new(64 * 7 * 7, 128, true, rng)?),
        &[f],
    )?;
    let r = g.add_cell("classifier.1", relu(), &[l0])?;
    let l2 = g.add_cell(
        "classifier.2",
        boxed(Linear::new(128, 10, true, rng)?),
        &[r],
    )?;
    g.set_outputs(&[l2])?;
    Ok(g)
}

/// Loads MNISTNet from ccexam's `mnist.pth` (a `torch.save` zip of the state dict).
pub fn load_mnistnet(path: &Path) -> Result<Network> {
    let load_error = |message: String| Error::Load {
        path: path.display().to_string(),
        message,
    };
    if !path.is_file() {
        return Err(load_error(
            "file not found (run scripts/fetch-assets.sh)".into(),
        ));
    }
    // The pickle reader is third-party code; a malformed file must not take the process down.
    let read = std::panic::catch_unwind(|| candle_core::pickle::read_all(path));
    let tensors = match read {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return Err(load_error(format!(
                "not a readable PyTorch checkpoint: {e}"
            )))
        }
        Err(_) => return Err(load_error("malformed PyTorch checkpoint".into())),
    };
    let tensors: HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, t)| t.to_dtype(candle_core::DType::F32).map(|t| (k, t)))
        .collect::<candle_core::Result<_>>()?;
    let net = mnistnet(&mut gstick_nn::rng(0))?;
    checkpoint::load_tensors(&net, &tensors).map_err(load_error)?;
    Ok(net)
}
