//! The SimQAT fake quantizer against hand-computed nudging cases, its straight-through gradient,
//! range tracking, and each BatchNorm treatment in training and evaluation.

use candle_core::{Device, Tensor, Var};
use gstick_nn::cells::{BatchNorm2d, Conv2d, Conv2dConfig};
use gstick_nn::{Cell, CellCtx, Mode};
use gstick_qat::cells::{BnFold, ConvBn, QuantConvBn};
use gstick_qat::fake_quant::{fake_quantize_value, nudge, FakeQuantConfig, FakeQuantizer};

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + b.abs())
}

#[test]
fn nudging_matches_hand_computed_ranges() {
    let asym = FakeQuantConfig::activation();
    // [-1, 3] on [0, 255]: scale 4/255, zero point 63.75 -> 64, range (-64 s, 191 s).
    let n = nudge(-1.0, 3.0, &asym);
    let s = 4.0f32 / 255.0;
    assert!(close(n.scale, s) && n.zero_point == 64.0);
    assert!(close(n.min, -64.0 * s) && close(n.max, 191.0 * s), "{n:?}");

    // Symmetric widens to [-3, 3]: scale 6/255, zero point 127.5 rounds away from zero to 128.
    let sym = FakeQuantConfig {
        symmetric: true,
        ..asym
    };
    let n = nudge(-1.0, 3.0, &sym);
    let s = 6.0f32 / 255.0;
    assert!(close(n.scale, s) && n.zero_point == 128.0, "{n:?}");
    assert!(close(n.min, -128.0 * s) && close(n.max, 127.0 * s));

    // Narrow symmetric: grid [1, 255], scale 6/254, zero point exactly 128, range exactly [-3, 3].
    let narrow = FakeQuantConfig {
        narrow: true,
        ..sym
    };
    let n = nudge(-1.0, 3.0, &narrow);
    assert!(close(n.scale, 6.0 / 254.0) && n.zero_point == 128.0);
    assert!(close(n.min, -3.0) && close(n.max, 3.0), "{n:?}");

    // A range above zero: the zero point is clamped to the grid's bottom, so 0 stays exact.
    let n = nudge(0.5, 1.0, &asym);
    assert!(
        n.zero_point == 0.0 && n.min == 0.0 && close(n.max, 0.5),
        "{n:?}"
    );
    // 4 bits: [-1, 3] on [0, 15]: scale 4/15, zero point 3.75 -> 4.
    let n = nudge(-1.0, 3.0, &FakeQuantConfig { bits: 4, ..asym });
    assert!(n.zero_point == 4.0 && close(n.min, -16.0 / 15.0) && close(n.max, 44.0 / 15.0));
    // An empty range represents only 0.
    let n = nudge(0.0, 0.0, &asym);
    assert_eq!(fake_quantize_value(1.5, &n), 0.0);

    // Values: clamped, then snapped to the grid (half steps go up).
    let n = nudge(-1.0, 3.0, &asym);
    let s = n.scale;
    assert!(close(fake_quantize_value(0.5, &n), 96.0 * s + n.min));
    assert_eq!(fake_quantize_value(5.0, &n), n.max);
    assert_eq!(fake_quantize_value(-2.0, &n), n.min);
    assert_eq!(fake_quantize_value(0.0, &n), 0.0, "zero is exact");
    // With range [0, 255] the step is exactly 1: halves round up, not to even.
    let unit = nudge(0.0, 255.0, &asym);
    assert_eq!((unit.scale, unit.min), (1.0, 0.0));
    assert_eq!(fake_quantize_value(10.5, &unit), 11.0);
    assert_eq!(fake_quantize_value(11.5, &unit), 12.0);
    assert_eq!(fake_quantize_value(11.49, &unit), 11.0);
}

#[test]
fn per_channel_ranges_and_the_straight_through_gradient() {
    // Two output channels with ranges [-1, 1] and [-4, 4] (symmetric per-channel weights).
    let w = Tensor::new(&[[-1.0f32, 0.3, 1.0], [-4.0, 0.3, 4.0]], &Device::Cpu).unwrap();
    let q = FakeQuantizer::new(FakeQuantConfig::weight(), 2).unwrap();
    let var = Var::from_tensor(&w).unwrap();
    let y = q.forward(var.as_tensor(), Mode::Train).unwrap();
    assert_eq!(q.min.tensor().to_vec1::<f32>().unwrap(), vec![-1.0, -4.0]);
    assert_eq!(q.max.tensor().to_vec1::<f32>().unwrap(), vec![1.0, 4.0]);
    let got: Vec<Vec<f32>> = y.to_vec2().unwrap();
    for (c, m) in [(0usize, 1.0f32), (1, 4.0)] {
        let n = nudge(-m, m, &FakeQuantConfig::weight());
        assert!(close(n.scale, 2.0 * m / 255.0));
        assert!(close(got[c][1], fake_quantize_value(0.3, &n)), "{got:?}");
    }
    // The 0.3 entries land on different grids per channel.
    assert_ne!(got[0][1], got[1][1]);

    // Gradient: 1 inside the nudged range, 0 outside it. Per-tensor asymmetric range [-1, 3]
    // (set by a first batch), then inputs beyond both ends.
    let q = FakeQuantizer::new(FakeQuantConfig::activation(), 1).unwrap();
    let first = Tensor::new(&[-1.0f32, 3.0], &Device::Cpu).unwrap();
    q.forward(&first, Mode::Train).unwrap();
    let n = q.nudged().unwrap()[0];
    let x = Var::new(&[-1.5f32, -0.5, 0.0, 2.9, n.max, 3.5], &Device::Cpu).unwrap();
    let y = q.forward(x.as_tensor(), Mode::Eval).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let g: Vec<f32> = grads.get(&x).unwrap().to_vec1().unwrap();
    assert_eq!(g, vec![0.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
}

#[test]
fn ranges_track_batches_with_optional_ema_and_the_quant_delay() {
    let dev = Device::Cpu;
    let plain = FakeQuantizer::new(FakeQuantConfig::activation(), 1).unwrap();
    let a = Tensor::new(&[0.5f32, 2.0], &dev).unwrap();
    plain.forward(&a, Mode::Train).unwrap();
    // min is kept <= 0 so zero stays representable; without EMA the batch replaces the range.
    assert_eq!(plain.min.tensor().to_vec1::<f32>().unwrap(), vec![0.0]);
    assert_eq!(plain.max.tensor().to_vec1::<f32>().unwrap(), vec![2.0]);
    let b = Tensor::new(&[-1.0f32, 1.0], &dev).unwrap();
    plain.forward(&b, Mode::Train).unwrap();
    assert_eq!(plain.max.tensor().to_vec1::<f32>().unwrap(), vec![1.0]);
    // Evaluation reads the range without changing it.
    plain.forward(&a, Mode::Eval).unwrap();
    assert_eq!(plain.max.tensor().to_vec1::<f32>().unwrap(), vec![1.0]);

    // EMA: new = decay * batch + (1 - decay) * old, starting from [-6, 6].
    let ema = FakeQuantizer::new(
        FakeQuantConfig {
            ema: true,
            ema_decay: 0.9,
            ..FakeQuantConfig::activation()
        },
        1,
    )
    .unwrap();
    ema.forward(&a, Mode::Train).unwrap();
    let max = ema.max.tensor().to_vec1::<f32>().unwrap()[0];
    let min = ema.min.tensor().to_vec1::<f32>().unwrap()[0];
    assert!(
        close(max, 0.9 * 2.0 + 0.1 * 6.0) && close(min, 0.1 * -6.0),
        "{min} {max}"
    );

    // Quant delay 2: the first two training calls pass the input through, the third quantizes.
    let delayed = FakeQuantizer::new(
        FakeQuantConfig {
            quant_delay: 2,
            ..FakeQuantConfig::activation()
        },
        1,
    )
    .unwrap();
    let x = Tensor::new(&[-1.0f32, 0.123, 3.0], &dev).unwrap();
    for call in 1..=3 {
        let y: Vec<f32> = delayed.forward(&x, Mode::Train).unwrap().to_vec1().unwrap();
        let passed = y[1] == 0.123;
        assert_eq!(passed, call <= 2, "call {call}: {y:?}");
    }
    assert_eq!(delayed.steps().unwrap(), 3);
}

/// A conv (3 -> 4 channels) with a BatchNorm whose running statistics and affine are not trivial.
fn conv_bn(seed: u64) -> (Conv2d, BatchNorm2d) {
    let mut rng = gstick_nn::rng(seed);
    let conv = Conv2d::new(3, 4, 3, Conv2dConfig::default(), false, &mut rng).unwrap();
    let bn = BatchNorm2d::new(4).unwrap();
    let dev = Device::Cpu;
    bn.weight
        .set(&Tensor::new(&[1.5f32, 0.5, 2.0, 0.8], &dev).unwrap())
        .unwrap();
    bn.bias
        .set(&Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &dev).unwrap())
        .unwrap();
    bn.running_mean
        .set(&Tensor::new(&[0.05f32, -0.1, 0.2, 0.0], &dev).unwrap())
        .unwrap();
    bn.running_var
        .set(&Tensor::new(&[0.5f32, 1.2, 0.8, 2.0], &dev).unwrap())
        .unwrap();
    (conv, bn)
}

fn input(seed: u64) -> Tensor {
    let mut rng = gstick_nn::rng(seed);
    gstick_nn::init::uniform(&[8, 3, 6, 6], 1.0, &mut rng).unwrap()
}

fn run(cell: &dyn Cell, x: &Tensor, mode: Mode) -> Tensor {
    let mut rng = gstick_nn::rng(0);
    let mut ctx = CellCtx::new(mode, &mut rng);
    cell.forward(std::slice::from_ref(x), &mut ctx).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn channel_means(y: &Tensor) -> Vec<f32> {
    y.mean_keepdim(3)
        .unwrap()
        .mean_keepdim(2)
        .unwrap()
        .mean_keepdim(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn each_batchnorm_treatment_trains_and_evaluates_as_specified() {
    let x = input(1);
    let w8 = FakeQuantConfig::weight();
    for fold in [BnFold::None, BnFold::OneConv, BnFold::TwoConv] {
        // One training step before the freeze: the output is normalized with batch statistics
        // (each channel's batch mean is beta), and the running statistics move. The two-conv fold
        // takes its statistics from the float conv, so its mean is beta only up to the weight
        // quantization.
        let (conv, bn) = conv_bn(7);
        let q = QuantConvBn::new(conv, bn, fold, w8, 1_000).unwrap();
        let before: Vec<f32> = q.bn.running_mean.tensor().to_vec1().unwrap();
        let y = run(&q, &x, Mode::Train);
        let means = channel_means(&y);
        for (c, (&m, beta)) in means.iter().zip([0.1f32, -0.2, 0.3, 0.0]).enumerate() {
            let tol = if fold == BnFold::TwoConv { 2e-3 } else { 1e-4 };
            assert!(
                (m - beta).abs() < tol,
                "{fold:?} channel {c}: mean {m}, beta {beta}"
            );
        }
        let after: Vec<f32> = q.bn.running_mean.tensor().to_vec1().unwrap();
        assert_ne!(before, after, "{fold:?}: running mean not updated");
        // Gradients reach the conv weight and the BN affine.
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for p in [&q.conv.weight, &q.bn.weight] {
            let g = grads.get(p.var().as_tensor()).expect("gradient");
            assert!(
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            );
        }

        // Evaluation (weight ranges now observed): within 8-bit weight noise of the float
        // Conv2d+BatchNorm2d with the same parameters and statistics, but not equal to it.
        let float = ConvBn {
            conv: q.conv.clone(),
            bn: q.bn.clone(),
        };
        let float_eval = run(&float, &x, Mode::Eval);
        let eval = run(&q, &x, Mode::Eval);
        let scale = float_eval
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = max_diff(&eval, &float_eval);
        assert!(
            d > 0.0 && d < 0.02 * scale,
            "{fold:?}: eval differs by {d} (scale {scale})"
        );
    }

    // After the freeze the folded treatments use the running statistics in training too: the
    // training output equals the evaluation output and the statistics stay.
    for fold in [BnFold::OneConv, BnFold::TwoConv] {
        let (conv, bn) = conv_bn(7);
        let q = QuantConvBn::new(conv, bn, fold, w8, 0).unwrap();
        let stats: Vec<f32> = q.bn.running_var.tensor().to_vec1().unwrap();
        let train = run(&q, &x, Mode::Train);
        let eval = run(&q, &x, Mode::Eval);
        assert!(max_diff(&train, &eval) < 1e-5, "{fold:?}");
        assert_eq!(stats, q.bn.running_var.tensor().to_vec1::<f32>().unwrap());
    }

    // The two-conv fold before the freeze is BatchNorm in training mode on the float conv, up to
    // the weight quantization; its running statistics follow the float BN's exactly.
    let (conv, bn) = conv_bn(7);
    let float = ConvBn { conv, bn };
    let float_train = run(&float, &x, Mode::Train);
    let (conv_q, bn_q) = conv_bn(7);
    let q = QuantConvBn::new(conv_q, bn_q, BnFold::TwoConv, w8, 1_000).unwrap();
    let y = run(&q, &x, Mode::Train);
    let scale = float_train
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max_diff(&y, &float_train) < 0.02 * scale);
    let a: Vec<f32> = float.bn.running_var.tensor().to_vec1().unwrap();
    let b: Vec<f32> = q.bn.running_var.tensor().to_vec1().unwrap();
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5),
        "{a:?} {b:?}"
    );
}

#[test]
fn lsq_quantizes_with_its_learned_step_and_gets_the_paper_gradients() {
    let dev = Device::Cpu;
    let config = FakeQuantConfig {
        bits: 4,
        symmetric: true,
        narrow: true,
        learned_step: true,
        ..FakeQuantConfig::activation()
    };
    let q = FakeQuantizer::new(config, 1).unwrap();
    let l = q.learned.as_ref().unwrap();
    let x = Var::new(&[-3.0f32, -0.4, 0.2, 0.9, 5.0], &dev).unwrap();
    // The first training call initializes: signed values, so q_max = 7 and
    // maxq = 2 mean|x| sqrt(7).
    q.forward(x.as_tensor(), Mode::Train).unwrap();
    let mean_abs = (3.0 + 0.4 + 0.2 + 0.9 + 5.0) / 5.0f32;
    let maxq = l.maxq.tensor().to_vec1::<f32>().unwrap()[0];
    assert!(close(maxq, 2.0 * mean_abs * 7f32.sqrt()), "{maxq}");
    // Step 0.5: v = x / s = [-6, -0.8, 0.4, 1.8, 10] -> clamp to 7 -> round half up.
    l.maxq.set(&Tensor::new(&[3.5f32], &dev).unwrap()).unwrap();
    let y = q.forward(x.as_tensor(), Mode::Train).unwrap();
    assert_eq!(y.to_vec1::<f32>().unwrap(), vec![-3.0, -0.5, 0.0, 1.0, 3.5]);
    let grads = y.sum_all().unwrap().backward().unwrap();
    let gx: Vec<f32> = grads.get(&x).unwrap().to_vec1().unwrap();
    assert_eq!(
        gx,
        vec![1.0, 1.0, 1.0, 1.0, 0.0],
        "straight through inside the range"
    );
    // d out / d s = round(v) - v inside (0, -0.2, -0.4, 0.2) plus the bound 7 outside: 6.6;
    // scaled by g = 1 / sqrt(5 * 7) and by d s / d maxq = 1 / 7.
    let gm = grads
        .get(l.maxq.var().as_tensor())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let want = 6.6 / (35f32).sqrt() / 7.0;
    assert!((gm - want).abs() < 1e-5, "{gm} vs {want}");
    // Its grid for convert: narrow symmetric, zero point q_max + 1 on the unsigned grid.
    let n = q.nudged().unwrap()[0];
    assert_eq!((n.scale, n.zero_point, n.max, n.min), (0.5, 8.0, 3.5, -3.5));
    // Non-negative inputs switch to the unsigned grid (neg_trunc): q_max = 15.
    let u = FakeQuantizer::new(config, 1).unwrap();
    let pos = Tensor::new(&[0.0f32, 1.0, 2.0], &dev).unwrap();
    u.forward(&pos, Mode::Train).unwrap();
    let n = u.nudged().unwrap()[0];
    assert_eq!(n.min, 0.0);
    assert!(close(n.max / n.scale, 15.0));
}
