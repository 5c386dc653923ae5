use gstick_nn::cells::{Activation, ActivationKind, Conv2d, Conv2dConfig, Flatten, Linear, Pool2d};
use gstick_nn::{Network, Rng};

use crate::{boxed, Result};

/// LeNet-5 for 1x28x28 input (the first convolution pads by 2, as for 32x32 in the paper), with
/// ReLU and max pooling: conv 6@5x5 - pool - conv 16@5x5 - pool - fc 120 - fc 84 - fc `classes`.
pub fn lenet5(classes: usize, rng: &mut Rng) -> Result<Network> {
    let relu = || boxed(Activation(ActivationKind::Relu));
    let mut g = Network::new();
    let x = g.add_input("x");
    let pad2 = Conv2dConfig {
        padding: 2,
        ..Default::default()
    };
    let c1 = g.add_cell("conv1", boxed(Conv2d::new(1, 6, 5, pad2, true, rng)?), &[x])?;
    let r1 = g.add_cell("relu1", relu(), &[c1])?;
    let p1 = g.add_cell("pool1", boxed(Pool2d::max(2, 2)), &[r1])?;
    let c2 = g.add_cell(
        "conv2",
        boxed(Conv2d::new(6, 16, 5, Conv2dConfig::default(), true, rng)?),
        &[p1],
    )?;
    let r2 = g.add_cell("relu2", relu(), &[c2])?;
    let p2 = g.add_cell("pool2", boxed(Pool2d::max(2, 2)), &[r2])?;
    let f = g.add_cell("flatten", boxed(Flatten::default()), &[p2])?;
    let fc1 = g.add_cell("fc1", boxed(Linear::new(16 * 5 * 5, 120, true, rng)?), &[f])?;
    let r3 = g.add_cell("relu3", relu(), &[fc1])?;
    let fc2 = g.add_cell("fc2", boxed(Linear::new(120, 84, true, rng)?), &[r3])?;
    let r4 = g.add_cell("relu4", relu(), &[fc2])?;
    let fc3 = g.add_cell("fc3", boxed(Linear::new(84, classes, true, rng)?), &[r4])?;
    g.set_outputs(&[fc3])?;
    Ok(g)
}
