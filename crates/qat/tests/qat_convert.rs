//! Convert: the int8 deploy network against the fake-quantized network it comes from, on LeNet-5
//! and on ResNet-20 with each BatchNorm treatment (graphs and inputs built here).

use candle_core::{DType, Tensor};

#[path = "../../export/tests/common/mod.rs"]
mod common;
use gstick_models::{lenet5, resnet, ResNetConfig};
use gstick_nn::CompAlgo;
use gstick_nn::{Executor, Mode, Network};
use gstick_qat::{SimQat, SimQatConfig};

fn batch(seed: u64, n: usize) -> Tensor {
    // Image-like inputs: smooth positive blobs plus noise.
    let noise = gstick_nn::init::uniform(&[n, 1, 28, 28], 1.0, &mut gstick_nn::rng(seed)).unwrap();
    let ramp = Tensor::arange(0f32, 784.0, &candle_core::Device::Cpu)
        .unwrap()
        .affine(0.01, 0.0)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((1, 1, 28, 28))
        .unwrap();
    noise.broadcast_add(&ramp).unwrap()
}

/// A few training passes so every quantizer has seen real ranges and BatchNorms have statistics.
fn warm_up(net: &Network) {
    let mut exec = Executor::new(Mode::Train, 0);
    for s in 0..3 {
        exec.forward1(net, &batch(10 + s, 16)).unwrap();
    }
}

/// Values a node produces, as f32 (dequantizing u8 with `scale`/`min` when given).
fn captured(net: &Network, node: &str, x: &Tensor, quant: Option<(f32, f32)>) -> Vec<f32> {
    let slot = std::rc::Rc::new(std::cell::RefCell::new(None));
    let mut exec = Executor::new(Mode::Eval, 0);
    let s = slot.clone();
    exec.add_hook(node, move |call| {
        *s.borrow_mut() = Some(call.output.clone());
        Ok(())
    });
    exec.forward1(net, x).unwrap();
    let t = slot.borrow_mut().take().expect("hook ran");
    match (t.dtype(), quant) {
        (DType::U8, Some((scale, min))) => t
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap()
            .iter()
            .map(|&u| u as f32 * scale + min)
            .collect(),
        _ => t.flatten_all().unwrap().to_vec1().unwrap(),
    }
}

fn nudged(net: &Network, fq: &str) -> (f32, f32) {
    let id = net.resolve(fq).unwrap();
    let mut g = net;
    for (i, &n) in id.iter().enumerate() {
        if i + 1 < id.len() {
            g = g.subgraph(n).unwrap();
        } else {
            let cell = g.node(n).unwrap().cell().unwrap();
            let fq = gstick_nn::cell::downcast::<gstick_qat::FakeQuant>(cell.as_ref()).unwrap();
            let r = fq.quantizer.nudged().unwrap()[0];
            return (r.scale, r.min);
        }
    }
    unreachable!()
}

/// Share of values within one step of each other, and the largest difference.
fn agreement(a: &[f32], b: &[f32], step: f32) -> (f64, f32) {
    assert_eq!(a.len(), b.len());
    let within = a
        .iter()
        .zip(b)
        .filter(|(x, y)| (*x - *y).abs() <= step * 1.001)
        .count();
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    (within as f64 / a.len() as f64, worst)
}

fn kinds(net: &Network) -> Vec<String> {
    net.nodes_recursive()
        .into_iter()
        .map(|(_, n)| n.kind().to_string())
        .collect()
}

#[test]
fn lenet_int8_deploy_matches_fake_quant_within_one_step() {
    let mut net = lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    let mut algo = SimQat::new(SimQatConfig::default()).unwrap();
    algo.apply(&mut net).unwrap();
    warm_up(&net);
    let x = batch(99, 64);
    // The last quantized activation (fc3's input) and the logits of the fake-quantized network.
    let (scale, min) = nudged(&net, "relu4_quant");
    let fake_act = captured(&net, "relu4_quant", &x, None);
    let fake_logits = captured(&net, "fc3", &x, None);

    let mut deploy = net.clone();
    algo.convert(&mut deploy).unwrap();
    let k = kinds(&deploy);
    for gone in [
        "FakeQuant",
        "Conv2dQuant",
        "DenseQuant",
        "MaxPool2d",
        "ReLU",
    ] {
        assert!(!k.iter().any(|x| x == gone), "{gone} left: {k:?}");
    }
    assert_eq!(k.iter().filter(|x| *x == "Int8Conv2d").count(), 2, "{k:?}");
    assert_eq!(k.iter().filter(|x| *x == "Int8Linear").count(), 3, "{k:?}");
    assert_eq!(
        k.iter().filter(|x| *x == "Quantize").count(),
        1,
        "only the image: {k:?}"
    );
    // fc2, fused with relu4 and its quantizer, now produces relu4_quant's integers.
    let deploy_act = captured(&deploy, "relu4_quant", &x, Some((scale, min)));
    let (share, worst) = agreement(&deploy_act, &fake_act, scale);
    eprintln!(
        "LeNet fc3 input: {:.4}% within one step ({scale:.4e}), worst {worst:.3e}",
        share * 100.0
    );
    assert!(share >= 0.999, "{share}");
    let deploy_logits = captured(&deploy, "fc3", &x, None);
    let (_, worst) = agreement(&deploy_logits, &fake_logits, 0.0);
    let range = fake_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        worst < 0.05 * range,
        "logits differ by {worst} (range {range})"
    );
    // And the deploy network keeps working after the original is dropped.
    drop(net);
    let y = Executor::new(Mode::Eval, 0).forward1(&deploy, &x).unwrap();
    assert_eq!((y.dims(), y.dtype()), (&[64usize, 10][..], DType::F32));
}

#[test]
fn resnet20_int8_deploy_matches_fake_quant_for_each_batchnorm_treatment() {
    for (bn_fold, one_conv) in [(false, true), (true, true), (true, false)] {
        let mut net = resnet(&ResNetConfig::resnet20(1, 10), &mut gstick_nn::rng(0)).unwrap();
        let mut config = SimQatConfig::default();
        config.set_enable_fusion(true);
        config.set_bn_fold(bn_fold);
        config.set_one_conv_fold(one_conv);
        config.set_freeze_bn(2);
        let mut algo = SimQat::new(config).unwrap();
        algo.apply(&mut net).unwrap();
        warm_up(&net);
        let x = batch(7, 8);
        let (scale, min) = nudged(&net, "avgpool_quant");
        let fake = captured(&net, "avgpool_quant", &x, None);
        let fake_logits = captured(&net, "fc", &x, None);
        let mut deploy = net.clone();
        algo.convert(&mut deploy).unwrap();
        let k = kinds(&deploy);
        assert!(
            !k.iter().any(|x| x == "BatchNorm2d" || x.ends_with("Quant")),
            "{k:?}"
        );
        assert_eq!(k.iter().filter(|x| *x == "Int8Conv2d").count(), 21);
        assert_eq!(k.iter().filter(|x| *x == "Int8Add").count(), 9);
        // Each block's Add -> ReLU -> Requantize runs as one composed table lookup.
        assert!(
            !k.iter().any(|x| x == "Int8ReLU" || x == "Requantize"),
            "{k:?}"
        );
        let got = captured(&deploy, "avgpool_quant", &x, Some((scale, min)));
        let (share, worst) = agreement(&got, &fake, scale);
        eprintln!(
            "ResNet-20 bn_fold {bn_fold} one_conv {one_conv}: pooled features {:.3}% within one step ({scale:.3e}), worst {worst:.3e}",
            share * 100.0
        );
        assert!(share >= 0.999, "{share}");

        // ONNX Runtime runs the QDQ export (residual Adds, kept or folded BN) to nearly the
        // same logits; its QuantizeLinear rounds ties to even, ours up, so allow a little.
        let dir = std::env::temp_dir().join(format!(
            "gstick-onnx-resnet-{}-{bn_fold}-{one_conv}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("resnet20.onnx");
        gstick_export::onnx::export_onnx(&deploy, 1, 28, 28, &model).unwrap();
        let ours_logits = captured(&deploy, "fc", &x, None);
        let ours: Vec<i64> = ours_logits
            .chunks(10)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                    .0 as i64
            })
            .collect();
        common::write_f32(
            &dir.join("x.f32"),
            &x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        common::write_i64(&dir.join("ours.i64"), &ours);
        let v = common::python(
            "onnx_run.py",
            &[
                &model,
                &dir.join("x.f32"),
                &"8",
                &"1",
                &"28",
                &"28",
                &dir.join("ours.i64"),
                &dir.join("theirs.f32"),
            ],
        );
        assert_eq!(v["checker"], "ok");
        let theirs = common::read_f32(&dir.join("theirs.f32"));
        let (_, worst) = agreement(&theirs, &ours_logits, 0.0);
        let range = ours_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("ONNX Runtime ResNet-20 logits: worst difference {worst:.3e} (range {range:.3e}), agreement {}", v["agreement"]);
        assert!(
            worst <= 0.05 * range.max(1e-3),
            "ORT logits differ by {worst} (range {range})"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let logits = captured(&deploy, "fc", &x, None);
        let (_, worst) = agreement(&logits, &fake_logits, 0.0);
        let range = fake_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            worst < 0.05 * range.max(1e-3),
            "logits differ by {worst} (range {range})"
        );
    }
}

#[test]
fn lsq_lenet_converts_to_int8_like_simqat() {
    let mut net = lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    let mut config = SimQatConfig::default();
    config.set_weight_narrow_range(true);
    let mut algo = SimQat::lsq(config).unwrap();
    assert_eq!(algo.name(), "LearnedStepSizeQuantizationAwareTraining");
    algo.apply(&mut net).unwrap();
    // The learned ranges are trainable parameters.
    let names: Vec<String> = gstick_nn::named_params(&net)
        .into_iter()
        .filter(|(_, p)| p.is_trainable())
        .map(|(n, _)| n)
        .collect();
    assert!(
        names.iter().any(|n| n == "conv1.weight_quant.maxq"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "relu1_quant.maxq"), "{names:?}");
    warm_up(&net);
    let x = batch(99, 64);
    let n = {
        let id = net.get("relu4_quant").unwrap();
        let cell = net.node(id).unwrap().cell().unwrap();
        let fq = gstick_nn::cell::downcast::<gstick_qat::FakeQuant>(cell.as_ref()).unwrap();
        fq.quantizer.nudged().unwrap()[0]
    };
    assert_eq!(n.min, 0.0, "ReLU outputs use the unsigned grid");
    let fake = captured(&net, "relu4_quant", &x, None);
    let mut deploy = net.clone();
    algo.convert(&mut deploy).unwrap();
    let got = captured(&deploy, "relu4_quant", &x, Some((n.scale, n.min)));
    let (share, _) = agreement(&got, &fake, n.scale);
    assert!(share >= 0.999, "{share}");
    // A non-narrow weight range is refused, naming the field.
    let e = SimQat::lsq(SimQatConfig::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("narrow_range"), "{e}");
}
