//! SimQAT's configuration and its rewrite of LeNet-5 and ResNet-20, on graphs built here; and a
//! short quantization-aware fine-tune of LeNet-5 on Fashion-MNIST.

use std::collections::BTreeMap;

use gstick_models::lenet5;
use gstick_models::{resnet, ResNetConfig};
use gstick_nn::CompAlgo;
use gstick_nn::{Executor, Mode, Network};
use gstick_qat::{LayerPolicy, SimQat, SimQatConfig};

fn kinds(net: &Network) -> Vec<(String, String)> {
    net.nodes_recursive()
        .into_iter()
        .map(|(n, node)| (n, node.kind().to_string()))
        .collect()
}

fn kind_of<'a>(k: &'a [(String, String)], name: &str) -> &'a str {
    &k.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no node {name}: {k:?}"))
        .1
}

/// Every fake quantizer reads something that is not itself fake-quantized.
fn no_double_quantization(g: &Network) {
    for id in g.node_ids() {
        let node = g.node(*id).unwrap();
        if let Some(sub) = node.subgraph() {
            no_double_quantization(sub);
        }
        if node.kind() == "FakeQuant" {
            let src = g.node(node.inputs()[0]).unwrap();
            assert_ne!(
                src.kind(),
                "FakeQuant",
                "{} quantizes {}",
                node.name(),
                src.name()
            );
        }
    }
}

#[test]
fn simqat_rewrites_lenet_with_one_quantizer_per_value() {
    let mut net = lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    let mut algo = SimQat::new(SimQatConfig::default()).unwrap();
    algo.apply(&mut net).unwrap();
    let k = kinds(&net);
    for (name, kind) in [
        ("conv1", "Conv2dQuant"),
        ("conv2", "Conv2dQuant"),
        ("fc1", "DenseQuant"),
        ("fc3", "DenseQuant"),
        ("x_quant", "FakeQuant"),
        ("relu1_quant", "FakeQuant"),
        ("pool1_quant", "FakeQuant"),
        ("flatten_quant", "FakeQuant"),
        ("relu4_quant", "FakeQuant"),
        ("pool1", "MaxPool2d"),
    ] {
        assert_eq!(kind_of(&k, name), kind, "{name}");
    }
    // conv1's input, each ReLU's output, and the pooled / flattened values conv2 and fc1 read
    // (max-pooling and flattening are not quantized cells, so their outputs are float).
    let fq: Vec<&String> = k
        .iter()
        .filter(|(_, k)| k == "FakeQuant")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(fq.len(), 7, "{fq:?}");
    no_double_quantization(&net);
    // fc2 reads relu3's quantized output directly.
    let fc2 = net.get("fc2").unwrap();
    let src = net.node(fc2).unwrap().inputs()[0];
    assert_eq!(net.name_of(src).unwrap(), "relu3_quant");

    let rows = algo.summary(&net);
    let row = |n: &str| rows.iter().find(|(name, _)| name == n).unwrap().1.clone();
    assert!(
        row("conv1").starts_with("Conv2dQuant: weight int8 per-channel symmetric"),
        "{rows:?}"
    );
    assert!(row("relu1_quant").contains("per-tensor asymmetric"));
    assert_eq!(row("pool1"), "NA");

    // It trains and evaluates.
    let x = gstick_nn::init::uniform(&[4, 1, 28, 28], 1.0, &mut gstick_nn::rng(1)).unwrap();
    let y = Executor::new(Mode::Train, 0).forward1(&net, &x).unwrap();
    assert_eq!(y.dims(), &[4, 10]);
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let conv1 = gstick_nn::named_params(&net)
        .into_iter()
        .find(|(n, _)| n == "conv1.weight")
        .unwrap()
        .1;
    assert!(grads.get(conv1.var().as_tensor()).is_some());
    Executor::new(Mode::Eval, 0).forward1(&net, &x).unwrap();
}

#[test]
fn simqat_fuses_and_folds_resnet20_blocks_and_quantizes_residual_adds() {
    let mut net = resnet(&ResNetConfig::resnet20(1, 10), &mut gstick_nn::rng(0)).unwrap();
    let mut config = SimQatConfig::default();
    config.set_enable_fusion(true);
    config.set_bn_fold(true);
    let mut algo = SimQat::new(config).unwrap();
    algo.apply(&mut net).unwrap();
    let k = kinds(&net);
    let count = |kind: &str| k.iter().filter(|(_, x)| x == kind).count();
    // 19 conv+BN pairs (stem and 2 per block) plus 2 shortcut projections, all folded.
    assert_eq!(count("Conv2dBnFoldQuantOneConv"), 21, "{k:?}");
    assert_eq!(count("BatchNorm2d"), 0);
    assert_eq!(count("DenseQuant"), 1);
    assert_eq!(kind_of(&k, "layer1.0.add_quant"), "FakeQuant");
    // The residual's block input arrives quantized (the previous block ends in a quantized
    // ReLU), so only the conv branch (the fused node keeps the conv's name) gets a quantizer
    // before the Add, and no block quantizes its input again.
    assert_eq!(kind_of(&k, "layer1.0.conv2_quant"), "FakeQuant");
    assert!(!k.iter().any(|(n, _)| n.ends_with(".x_quant")), "{k:?}");
    let add = |b: &str| {
        let block = net.subgraph(net.get(b).unwrap()).unwrap();
        let add = block.node(block.get("add").unwrap()).unwrap();
        add.inputs()
            .iter()
            .map(|&i| block.name_of(i).unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(add("layer1.1"), ["conv2_quant", "x"]);
    assert_eq!(add("layer2.0"), ["conv2_quant", "downsample.0_quant"]);
    no_double_quantization(&net);
    let x = gstick_nn::init::uniform(&[2, 1, 28, 28], 1.0, &mut gstick_nn::rng(1)).unwrap();
    let y = Executor::new(Mode::Train, 0).forward1(&net, &x).unwrap();
    assert_eq!(y.dims(), &[2, 10]);

    // Two-conv fold and no fold give the other cells.
    for (one_conv, bn_fold, kind) in [
        (false, true, "Conv2dBnFoldQuant"),
        (true, false, "Conv2dBnWithoutFoldQuant"),
    ] {
        let mut net = resnet(&ResNetConfig::resnet20(1, 10), &mut gstick_nn::rng(0)).unwrap();
        let mut config = SimQatConfig::default();
        config.set_enable_fusion(true);
        config.set_bn_fold(bn_fold);
        config.set_one_conv_fold(one_conv);
        SimQat::new(config).unwrap().apply(&mut net).unwrap();
        assert_eq!(
            kinds(&net).iter().filter(|(_, x)| x == kind).count(),
            21,
            "{kind}"
        );
    }
}

#[test]
fn custom_policies_win_and_a_failed_rewrite_changes_nothing() {
    let mut net = lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    let config = SimQatConfig {
        custom_policies: BTreeMap::from([("ReLU".to_string(), LayerPolicy::Skip)]),
        ..Default::default()
    };
    SimQat::new(config).unwrap().apply(&mut net).unwrap();
    let k = kinds(&net);
    // relu1 feeds a max-pool: nothing quantizes it now; fc2 reads relu3 in float, so fc2's own
    // input quantizer appears after relu3.
    assert!(!k.iter().any(|(n, _)| n == "relu1_quant"), "{k:?}");
    assert_eq!(kind_of(&k, "relu3_quant"), "FakeQuant");

    let mut net = lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    let before = kinds(&net);
    let config = SimQatConfig {
        custom_policies: BTreeMap::from([("ReLU".to_string(), LayerPolicy::Conv)]),
        ..Default::default()
    };
    let err = SimQat::new(config)
        .unwrap()
        .apply(&mut net)
        .unwrap_err()
        .to_string();
    assert!(err.contains("relu1") && err.contains("Conv2d"), "{err}");
    assert_eq!(
        kinds(&net),
        before,
        "the network was changed by a failed apply"
    );
}

#[test]
fn simqat_configuration_checks_name_their_field() {
    let mut c = SimQatConfig::default();
    assert_eq!((c.per_channel.act, c.per_channel.weight), (false, true));
    assert_eq!((c.symmetric.act, c.symmetric.weight), (false, true));
    assert!(c.one_conv_fold && !c.bn_fold && c.freeze_bn == 10_000_000);
    let e = c.set_act_per_channel(true).unwrap_err().to_string();
    assert!(e.starts_with("per_channel"), "{e}");
    let e = c
        .set_weight_quant_dtype(gstick_quant::QuantDtype::Int4)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("quant_dtype"), "{e}");

    let dir = std::env::temp_dir().join(format!("gstick-simqat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let load = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        SimQatConfig::load(&p)
    };
    // A scalar sets both, a pair sets (activation, weight).
    let c = load(
        "a.toml",
        "quant_delay = 900\nsymmetric = [true, false]\nbn_fold = true",
    )
    .unwrap();
    assert_eq!((c.quant_delay.act, c.quant_delay.weight), (900, 900));
    assert_eq!((c.symmetric.act, c.symmetric.weight), (true, false));
    let c = load(
        "b.yaml",
        "narrow_range: [false, true]\ncustom_policies:\n  ReLU: skip\n",
    )
    .unwrap();
    assert!(c.narrow_range.weight && c.custom_policies["ReLU"] == LayerPolicy::Skip);
    let e = load("c.toml", "symmetric = [true, false, true]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("c.toml") && e.contains("3 values"), "{e}");
    let e = load("d.toml", "per_channel = true")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("per_channel"), "{e}");
    let e = load("e.yaml", "quant_dtype: int4").unwrap_err().to_string();
    assert!(e.starts_with("quant_dtype"), "{e}");
    let e = load("f.yaml", "bn_fould: true").unwrap_err().to_string();
    assert!(e.contains("bn_fould"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn custom_transforms_run_after_fusion_and_before_the_policies() {
    use gstick_nn::cells::{Activation, ActivationKind};
    use gstick_rewrite::{Arg, NewNode};
    let mut net = lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    let mut algo = SimQat::new(SimQatConfig::default()).unwrap();
    // Swap relu1 for a ReLU6; the activation policy then quantizes its output too.
    algo.custom_transforms.push(Box::new(|g: &mut Network| {
        let id = g.get("relu1").unwrap();
        let input = g.node(id)?.inputs()[0];
        g.replace(
            id,
            vec![NewNode::cell(
                "relu1",
                Box::new(Activation(ActivationKind::Relu6)) as Box<dyn gstick_nn::Cell>,
                vec![Arg::Node(input)],
            )],
        )?;
        Ok(true)
    }));
    algo.apply(&mut net).unwrap();
    let k = kinds(&net);
    assert_eq!(kind_of(&k, "relu1"), "ReLU6");
    assert_eq!(kind_of(&k, "relu1_quant"), "FakeQuant");
}
