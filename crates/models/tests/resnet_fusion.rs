//! ResNet topologies, and Conv2d + BatchNorm2d fusion through the pattern engine.

use candle_core::{DType, Device, Tensor};
use gstick_models::{resnet, BlockKind, ResNetConfig, Stem};
use gstick_nn::fuse::fuse_conv_bn;
use gstick_nn::{named_params, Executor, Mode, Network};
use rand::Rng as _;

fn input(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = gstick_nn::rng(seed);
    let v: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn count_kind(net: &Network, kind: &str) -> usize {
    net.nodes_recursive()
        .iter()
        .filter(|(_, n)| n.kind() == kind)
        .count()
}

fn trainable_count(net: &Network) -> usize {
    named_params(net)
        .iter()
        .filter(|(_, p)| !p.is_buffer())
        .map(|(_, p)| p.tensor().elem_count())
        .sum()
}

#[test]
fn torchvision_parameter_counts_and_names() {
    let r18 = resnet(&ResNetConfig::resnet18(3, 1000), &mut gstick_nn::rng(0)).unwrap();
    assert_eq!(trainable_count(&r18), 11_689_512, "torchvision resnet18");
    let names: Vec<String> = named_params(&r18).into_iter().map(|(n, _)| n).collect();
    for expected in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.bias",
        "fc.weight",
    ] {
        assert!(names.iter().any(|n| n == expected), "missing {expected}");
    }
    let r50 = resnet(&ResNetConfig::resnet50(3, 1000), &mut gstick_nn::rng(0)).unwrap();
    assert_eq!(trainable_count(&r50), 25_557_032, "torchvision resnet50");
    let mut exec = Executor::new(Mode::Eval, 0);
    let y = exec.forward1(&r50, &input(&[1, 3, 64, 64], 1)).unwrap();
    assert_eq!(y.dims(), &[1, 1000]);
    // ResNet-20 with 1x1 projection shortcuts, 1 input channel, 10 classes.
    let r20 = resnet(&ResNetConfig::resnet20(1, 10), &mut gstick_nn::rng(0)).unwrap();
    assert_eq!(
        r20.nodes()
            .filter(|(_, n)| n.kind() == "BasicBlock")
            .count(),
        9
    );
    assert_eq!(trainable_count(&r20), 272_186); // counted by hand from the layer shapes
}

#[test]
fn bad_configuration_is_an_error() {
    let cfg = ResNetConfig {
        block: BlockKind::Basic,
        layers: vec![2, 2],
        widths: vec![16],
        stem: Stem::Small,
        in_channels: 1,
        classes: 10,
    };
    let err = resnet(&cfg, &mut gstick_nn::rng(0)).unwrap_err();
    assert!(err.to_string().contains("one width per stage"), "{err}");
}

/// Gives every BatchNorm non-trivial running statistics by running training-mode batches.
fn warm_up_statistics(net: &Network, shape: &[usize]) {
    let mut exec = Executor::new(Mode::Train, 0);
    for seed in 0..3 {
        let x = (input(shape, 10 + seed) * 2.0).unwrap();
        exec.forward1(net, &x).unwrap();
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn fusing_conv_bn_in_resnets_preserves_eval_outputs() {
    for (config, shape) in [
        (ResNetConfig::resnet20(1, 10), [4, 1, 28, 28]),
        (
            ResNetConfig {
                layers: vec![1, 1],
                widths: vec![8, 16],
                ..ResNetConfig::resnet50(3, 5)
            },
            [2, 3, 32, 32],
        ),
    ] {
        let mut net = resnet(&config, &mut gstick_nn::rng(3)).unwrap();
        warm_up_statistics(&net, &shape);
        let x = input(&shape, 77);
        let mut exec = Executor::new(Mode::Eval, 0);
        let before = exec.forward1(&net, &x).unwrap();
        let convs = count_kind(&net, "Conv2d");
        let bns = count_kind(&net, "BatchNorm2d");
        assert_eq!(convs, bns, "every conv is followed by a batch norm");

        assert!(fuse_conv_bn(&mut net).unwrap());
        assert_eq!(count_kind(&net, "BatchNorm2d"), 0, "{config:?}");
        assert_eq!(count_kind(&net, "Conv2d"), convs);
        // Fused convolutions keep their names, so parameters keep torchvision's paths.
        assert!(named_params(&net)
            .iter()
            .any(|(n, _)| n == "layer1.0.conv1.bias"));
        let after = exec.forward1(&net, &x).unwrap();
        let diff = max_abs_diff(&before, &after);
        assert!(
            diff < 1e-5,
            "{:?}: fused network differs by {diff}",
            config.block
        );
        // A second application finds nothing left.
        assert!(!fuse_conv_bn(&mut net).unwrap());
    }
}

#[test]
fn conv_read_elsewhere_is_not_fused() {
    // conv -> bn, and the conv output also feeds the residual add: fusing would lose it.
    use gstick_nn::cells::{Add, BatchNorm2d, Conv2d, Conv2dConfig};
    let mut rng = gstick_nn::rng(0);
    let mut g = Network::new();
    let x = g.add_input("x");
    let c = g
        .add_cell(
            "conv",
            Box::new(
                Conv2d::new(
                    2,
                    2,
                    3,
                    Conv2dConfig {
                        padding: 1,
                        ..Default::default()
                    },
                    false,
                    &mut rng,
                )
                .unwrap(),
            ),
            &[x],
        )
        .unwrap();
    let b = g
        .add_cell("bn", Box::new(BatchNorm2d::new(2).unwrap()), &[c])
        .unwrap();
    let a = g.add_cell("add", Box::new(Add), &[b, c]).unwrap();
    g.set_outputs(&[a]).unwrap();
    assert!(!fuse_conv_bn(&mut g).unwrap());
    assert_eq!(count_kind(&g, "BatchNorm2d"), 1);
}
