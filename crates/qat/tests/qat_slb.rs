//! SLB: the discrete value sets, the temperature schedule, its checks, and the rewrite, training
//! and convert of LeNet-5's convolutions (graph and inputs built here).

use candle_core::Tensor;
use gstick_models::lenet5;
use gstick_nn::cell::downcast;
use gstick_nn::CompAlgo;
use gstick_nn::{Executor, Mode};
use gstick_qat::slb::SlbConv2d;
use gstick_qat::{Slb, SlbBits, SlbConfig};

#[test]
fn value_sets_and_the_temperature_schedule() {
    assert_eq!(SlbBits::Int1.values(), vec![-1.0, 1.0]);
    let v2 = SlbBits::Int2.values();
    assert_eq!(v2.len(), 4);
    for (a, b) in v2.iter().zip([-1.0f32, -1.0 / 3.0, 1.0 / 3.0, 1.0]) {
        assert!((a - b).abs() < 1e-6, "{v2:?}");
    }
    assert_eq!(SlbBits::Int4.values().len(), 16);

    // 10 epochs: the temperature starts rising after epoch int(10 * 0.2) = 2 and stops (with the
    // choices frozen) at int(10 * 0.6) = 6.
    let c = SlbConfig {
        epoch_size: 10,
        has_trained_epoch: 0,
        ..Default::default()
    };
    let at = |e| c.temperature(e);
    assert_eq!(at(0), (1.0, false));
    assert_eq!(at(2), (1.0, false));
    assert!((at(3).0 - 1.2).abs() < 1e-12 && !at(3).1);
    assert!((at(6).0 - 1.2f64.powi(4)).abs() < 1e-12 && at(6).1);
    assert!((at(9).0 - 1.2f64.powi(4)).abs() < 1e-12 && at(9).1);

    // The schedule's checks name their field.
    let err = |c: SlbConfig| c.validate_schedule().unwrap_err().to_string();
    assert!(err(SlbConfig::default()).starts_with("epoch_size"));
    assert!(err(SlbConfig {
        epoch_size: 5,
        ..Default::default()
    })
    .starts_with("has_trained_epoch"));
    assert!(err(SlbConfig {
        epoch_size: 5,
        has_trained_epoch: 5,
        ..Default::default()
    })
    .starts_with("epoch_size"));
    assert!(err(SlbConfig {
        epoch_size: 5,
        has_trained_epoch: 0,
        t_end_time: 0.1,
        ..Default::default()
    })
    .starts_with("t_end_time"));
    assert!(Slb::new(SlbConfig {
        t_factor: 0.0,
        ..Default::default()
    })
    .err()
    .unwrap()
    .to_string()
    .starts_with("t_factor"));
    let yaml: SlbConfig =
        serde_yaml_ng::from_str("weight_quant_dtype: int2\nepoch_size: 8\n").unwrap();
    assert_eq!(yaml.weight_quant_dtype, SlbBits::Int2);
}

#[test]
fn slb_searches_conv_weights_and_converts_to_the_discrete_ones() {
    let mut net = lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    let mut algo = Slb::new(SlbConfig {
        weight_quant_dtype: SlbBits::Int2,
        epoch_size: 4,
        has_trained_epoch: 0,
        ..Default::default()
    })
    .unwrap();
    algo.apply(&mut net).unwrap();
    let kinds: Vec<(String, String)> = net
        .nodes_recursive()
        .into_iter()
        .map(|(n, node)| (n, node.kind().to_string()))
        .collect();
    let slb: Vec<&String> = kinds
        .iter()
        .filter(|(_, k)| k == "Conv2dSlbQuant")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(slb, ["conv1", "conv2"], "convs only");
    let conv1 = net.node(net.get("conv1").unwrap()).unwrap().cell().unwrap();
    let conv1 = downcast::<SlbConv2d>(conv1.as_ref()).unwrap().clone();
    assert_eq!(conv1.logits.tensor().dims(), &[6, 1, 5, 5, 4]);

    // Evaluation uses one of the four values per weight; the search uses a softmax mean.
    let hard: Vec<f32> = conv1
        .weight(Mode::Eval)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let values = SlbBits::Int2.values();
    assert!(hard
        .iter()
        .all(|w| values.iter().any(|v| (v - w).abs() < 1e-6)));
    let soft = conv1.weight(Mode::Train).unwrap();
    let soft_v: Vec<f32> = soft.flatten_all().unwrap().to_vec1().unwrap();
    assert!(soft_v.iter().zip(&hard).any(|(a, b)| (a - b).abs() > 1e-3));
    // A high temperature makes the softmax choose: the soft weights approach the hard ones
    // (all but near-ties of the scores).
    conv1
        .temperature
        .set(&Tensor::new(&[1e6f32], &candle_core::Device::Cpu).unwrap())
        .unwrap();
    let sharp: Vec<f32> = conv1
        .weight(Mode::Train)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let close = sharp
        .iter()
        .zip(&hard)
        .filter(|(a, b)| (*a - *b).abs() < 1e-2)
        .count();
    assert!(
        close as f64 >= 0.99 * hard.len() as f64,
        "{close} of {}",
        hard.len()
    );
    conv1
        .temperature
        .set(&Tensor::new(&[1f32], &candle_core::Device::Cpu).unwrap())
        .unwrap();

    // Training reaches the scores; the callbacks set temperatures per epoch.
    let x = gstick_nn::init::uniform(&[4, 1, 28, 28], 1.0, &mut gstick_nn::rng(1)).unwrap();
    let y = Executor::new(Mode::Train, 0).forward1(&net, &x).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(conv1.logits.var().as_tensor()).is_some());
    let mut callbacks = algo.callbacks().unwrap();
    let mut state = gstick_nn::train::TrainState {
        net: &mut net,
        epoch: 3,
        epochs: 4,
        step: 0,
        lr: 1e-3,
        loss: None,
        stop: false,
    };
    callbacks[0].on_epoch_begin(&mut state).unwrap();
    // epoch 3 of 4: t_start = 0, t_end = 2 -> frozen at 1.2^2.
    assert!((conv1.temperature.tensor().to_vec1::<f32>().unwrap()[0] - 1.44).abs() < 1e-6);
    assert_eq!(conv1.hard.tensor().to_vec1::<f32>().unwrap()[0], 1.0);

    // Convert: plain convs with the discrete weights, same outputs as the evaluated SLB network.
    let before = Executor::new(Mode::Eval, 0).forward1(&net, &x).unwrap();
    let mut deploy = net.clone();
    algo.convert(&mut deploy).unwrap();
    let conv = deploy.node(deploy.get("conv1").unwrap()).unwrap();
    assert_eq!(conv.kind(), "Conv2d");
    let after = Executor::new(Mode::Eval, 0).forward1(&deploy, &x).unwrap();
    let diff = (before - after)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}

#[test]
fn bn_recalibration_reestimates_running_statistics_after_the_search_starts() {
    use gstick_models::{resnet, ResNetConfig};
    use gstick_qat::slb::BnCalibration;
    let mut net = resnet(&ResNetConfig::resnet20(1, 10), &mut gstick_nn::rng(0)).unwrap();
    let config = SlbConfig {
        weight_quant_dtype: SlbBits::Int4,
        enable_bn_calibration: true,
        epoch_size: 10,
        has_trained_epoch: 0,
        ..Default::default()
    };
    Slb::new(config.clone()).unwrap().apply(&mut net).unwrap();
    let mean = |net: &gstick_nn::Network| -> Vec<f32> {
        gstick_nn::named_params(net)
            .into_iter()
            .find(|(n, _)| n == "bn1.running_mean")
            .unwrap()
            .1
            .tensor()
            .to_vec1()
            .unwrap()
    };
    let x = gstick_nn::init::uniform(&[8, 1, 28, 28], 1.0, &mut gstick_nn::rng(2)).unwrap();
    let mut cb = BnCalibration {
        config,
        batches: vec![x],
    };
    let report = gstick_nn::train::EpochReport {
        epoch: 1,
        loss: 0.0,
        train_accuracy: 0.0,
        lr: 0.0,
        samples: 0,
        seconds: 0.0,
        images_per_s: 0.0,
    };
    use gstick_nn::train::Callback;
    let before = mean(&net);
    for (epoch, moves) in [(1usize, false), (3, true)] {
        let mut state = gstick_nn::train::TrainState {
            net: &mut net,
            epoch,
            epochs: 10,
            step: 0,
            lr: 0.0,
            loss: None,
            stop: false,
        };
        cb.on_epoch_end(&mut state, &report).unwrap();
        assert_eq!(mean(&net) != before, moves, "epoch {epoch}");
    }
}
