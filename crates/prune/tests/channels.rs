//! Channel groups of ResNet-20, a bottleneck ResNet and a MobileNet-like chain, and physical
//! pruning of one group at a time: the smaller network must give exactly what the masked
//! full-width network gives.

use candle_core::{Device, Tensor};
use gstick_models::{resnet, BlockKind, ResNetConfig, Stem};
use gstick_nn::cell::downcast;
use gstick_nn::cells::{
    Activation, ActivationKind, BatchNorm2d, Concat, Conv2d, Conv2dConfig, GlobalAvgPool, Linear,
};
use gstick_nn::{Executor, Mode, Network};
use gstick_prune::{analyze, mask_channels, prune_channels, ChannelGroup, Member, Role};

fn rng() -> gstick_nn::Rng {
    gstick_nn::rng(11)
}

/// Gives every BatchNorm non-trivial statistics and affine parameters, so that a masked
/// channel is zero only because of the mask.
fn randomize_batch_norms(net: &Network) {
    let mut k = 0u32;
    let mut next = |n: usize, lo: f32, hi: f32| -> Tensor {
        let v: Vec<f32> = (0..n)
            .map(|i| {
                k = k.wrapping_mul(1664525).wrapping_add(1013904223 + i as u32);
                lo + (hi - lo) * (k >> 8) as f32 / (1u32 << 24) as f32
            })
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    };
    for (_, node) in net.nodes_recursive() {
        if let Some(bn) = node
            .cell()
            .and_then(|c| downcast::<BatchNorm2d>(c.as_ref()))
        {
            let c = bn.channels();
            bn.weight.set(&next(c, 0.5, 1.5)).unwrap();
            bn.bias.set(&next(c, 0.1, 0.6)).unwrap(); // positive: ReLUs stay open
            bn.running_mean.set(&next(c, -0.2, 0.2)).unwrap();
            bn.running_var.set(&next(c, 0.5, 2.0)).unwrap();
        }
    }
}

fn input(channels: usize, side: usize) -> Tensor {
    let n = 2 * channels * side * side;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (2, channels, side, side), &Device::Cpu).unwrap()
}

fn forward(net: &Network, x: &Tensor) -> Vec<f32> {
    Executor::new(Mode::Eval, 0)
        .forward1(net, x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn params(net: &Network) -> usize {
    gstick_nn::param::named_params(net)
        .iter()
        .map(|(_, p)| p.tensor().elem_count())
        .sum()
}

fn group_with<'g>(groups: &'g [ChannelGroup], member: &str, role: Role) -> &'g ChannelGroup {
    groups
        .iter()
        .find(|g| g.members.iter().any(|m| m.name == member && m.role == role))
        .unwrap_or_else(|| panic!("no group has {member} as {role:?}"))
}

/// Prunes every other channel of `group` and checks the pruned network against the masked one.
fn prune_matches_mask(net: &Network, group: &ChannelGroup, x: &Tensor) {
    let keep: Vec<usize> = (0..group.channels).filter(|k| k % 2 == 0).collect();
    let dropped: Vec<usize> = (0..group.channels).filter(|k| k % 2 == 1).collect();
    let mut masked = net.clone();
    mask_channels(&mut masked, group, &dropped).unwrap();
    let mut pruned = net.clone();
    prune_channels(&mut pruned, group, &keep).unwrap();
    let (a, b, full) = (forward(&masked, x), forward(&pruned, x), forward(net, x));
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-4,
        "{}: pruned vs masked differ by {worst}",
        group.name()
    );
    assert_ne!(a, full, "{}: the mask changed nothing", group.name());
    assert!(params(&pruned) < params(net), "{}", group.name());
    // The pruned network is a valid graph that analyzes again, with the group narrower.
    let again = analyze(&pruned).unwrap();
    let first = group.of(Role::Producer).next().unwrap();
    let g = group_with(&again, &first.name, Role::Producer);
    assert_eq!(g.channels, keep.len());
    // The network it came from is untouched.
    assert_eq!(forward(net, x), full);
}

#[test]
fn resnet20_has_a_group_per_stage_and_per_block_and_each_prunes_like_its_mask() {
    let net = resnet(&ResNetConfig::resnet20(1, 10), &mut rng()).unwrap();
    randomize_batch_norms(&net);
    let groups = analyze(&net).unwrap();
    let prunable: Vec<&ChannelGroup> = groups.iter().filter(|g| g.is_prunable()).collect();
    // Three residual stages plus the inside of each of the nine blocks.
    assert_eq!(prunable.len(), 12, "{groups:#?}");

    let stage1 = group_with(&groups, "conv1", Role::Producer);
    assert_eq!(stage1.channels, 16);
    for (name, role) in [
        ("bn1", Role::Carrier),
        ("layer1.0.conv2", Role::Producer),
        ("layer1.2.bn2", Role::Carrier),
        ("layer1.1.conv1", Role::Consumer),
        ("layer2.0.conv1", Role::Consumer),
        ("layer2.0.downsample.0", Role::Consumer),
    ] {
        assert!(
            stage1
                .members
                .iter()
                .any(|m| m.name == name && m.role == role),
            "stage 1 lacks {name} as {role:?}: {stage1:#?}"
        );
    }
    let stage3 = group_with(&groups, "fc", Role::Consumer);
    assert!(stage3.contains("layer3.0.downsample.1") && stage3.contains("layer3.2.bn2"));
    let inner = group_with(&groups, "layer2.1.conv1", Role::Producer);
    assert_eq!(inner.members.len(), 3, "{inner:#?}"); // conv1, bn1, conv2 (consumer)

    let x = input(1, 12);
    for g in [stage1, stage3, inner] {
        prune_matches_mask(&net, g, &x);
    }

    // A member that cannot be edited undoes the edits before it (one transaction).
    let mut broken = stage1.clone();
    broken.members.push(Member {
        name: "nowhere".into(),
        kind: "Conv2d".into(),
        role: Role::Consumer,
    });
    let mut untouched = net.clone();
    let e = prune_channels(&mut untouched, &broken, &[0, 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nowhere"), "{e}");
    assert_eq!(params(&untouched), params(&net));
    assert_eq!(forward(&untouched, &x), forward(&net, &x));

    // The classifier's output and the input image cannot be pruned.
    let out = group_with(&groups, "fc", Role::Producer);
    let e = prune_channels(&mut net.clone(), out, &[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("network's output"), "{e}");
    let e = prune_channels(&mut net.clone(), stage1, &[3, 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("ascending"), "{e}");
    let e = prune_channels(&mut net.clone(), stage1, &[0, 16])
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn bottleneck_blocks_prune_inside_and_across_the_residual() {
    let config = ResNetConfig {
        block: BlockKind::Bottleneck,
        layers: vec![2, 1],
        widths: vec![4, 8],
        stem: Stem::Small,
        in_channels: 3,
        classes: 5,
    };
    let net = resnet(&config, &mut rng()).unwrap();
    randomize_batch_norms(&net);
    let groups = analyze(&net).unwrap();
    // Two inner groups per block (after conv1, after conv2), plus the stem's own and the two
    // residual stages (widths x 4).
    let prunable = groups.iter().filter(|g| g.is_prunable()).count();
    assert_eq!(prunable, 2 * 3 + 3, "{groups:#?}");
    let residual = group_with(&groups, "layer1.0.conv3", Role::Producer);
    assert_eq!(residual.channels, 16);
    assert!(residual.contains("layer1.1.conv3") && residual.contains("layer1.0.downsample.0"));
    let x = input(3, 8);
    for g in [
        residual,
        group_with(&groups, "layer1.1.conv1", Role::Producer),
        group_with(&groups, "layer2.0.conv2", Role::Producer),
        group_with(&groups, "conv1", Role::Producer),
    ] {
        prune_matches_mask(&net, g, &x);
    }
}

fn conv(i: usize, o: usize, k: usize, groups: usize) -> Box<dyn gstick_nn::Cell> {
    let config = Conv2dConfig {
        padding: k / 2,
        groups,
        ..Default::default()
    };
    Box::new(Conv2d::new(i, o, k, config, true, &mut rng()).unwrap())
}

#[test]
fn depthwise_convolutions_carry_channels_and_unmodelled_ops_fix_them() {
    // MobileNet-like: conv -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 -> pointwise -> pool -> fc.
    let mut net = Network::new();
    let x = net.add_input("x");
    let relu6 = || Box::new(Activation(ActivationKind::Relu6)) as Box<dyn gstick_nn::Cell>;
    let mut h = net.add_cell("expand", conv(3, 8, 1, 1), &[x]).unwrap();
    h = net
        .add_cell("bn1", Box::new(BatchNorm2d::new(8).unwrap()), &[h])
        .unwrap();
    h = net.add_cell("act1", relu6(), &[h]).unwrap();
    h = net.add_cell("dw", conv(8, 8, 3, 8), &[h]).unwrap();
    h = net
        .add_cell("bn2", Box::new(BatchNorm2d::new(8).unwrap()), &[h])
        .unwrap();
    h = net.add_cell("act2", relu6(), &[h]).unwrap();
    let p = net.add_cell("project", conv(8, 6, 1, 1), &[h]).unwrap();
    let grouped = net.add_cell("grouped", conv(6, 6, 3, 2), &[p]).unwrap();
    let cat = net
        .add_cell("cat", Box::new(Concat { dim: 1 }), &[grouped, p])
        .unwrap();
    h = net
        .add_cell("pool", Box::new(GlobalAvgPool), &[cat])
        .unwrap();
    let fc = Linear::new(12, 2, true, &mut rng()).unwrap();
    h = net.add_cell("fc", Box::new(fc), &[h]).unwrap();
    net.set_outputs(&[h]).unwrap();
    randomize_batch_norms(&net);

    let groups = analyze(&net).unwrap();
    let g = group_with(&groups, "expand", Role::Producer);
    let roles: Vec<(&str, Role)> = g
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("expand", Role::Producer),
            ("bn1", Role::Carrier),
            ("dw", Role::Carrier),
            ("bn2", Role::Carrier),
            ("project", Role::Consumer),
        ]
    );
    prune_matches_mask(&net, g, &input(3, 6));
    let mut narrow = net.clone();
    prune_channels(&mut narrow, g, &[0, 2, 5]).unwrap();
    let dw = narrow
        .node(narrow.find("dw").unwrap())
        .unwrap()
        .cell()
        .and_then(|c| downcast::<Conv2d>(c.as_ref()))
        .map(|c| c.config.groups);
    assert_eq!(
        dw,
        Some(3),
        "the depthwise convolution keeps one group per channel"
    );

    // The projection's output feeds a grouped convolution and a concatenation: fixed, with why.
    let projected = group_with(&groups, "project", Role::Producer);
    let why = projected.fixed.clone().unwrap_or_default();
    assert!(why.contains("grouped") || why.contains("cat"), "{why}");
    let e = prune_channels(&mut net.clone(), projected, &[0, 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be pruned"), "{e}");
}
