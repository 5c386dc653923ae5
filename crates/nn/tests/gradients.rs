//! Gradient checks: central finite differences (f64) against autodiff through the cells,
//! including our own conv2d / max-pool / ReLU / channel-bias kernels.

use candle_core::{DType, Device, Tensor, Var};
use gstick_nn::cells::{
    Activation, ActivationKind, BatchNorm2d, Conv2d, Conv2dConfig, Linear, Pool2d, PoolKind,
};
use gstick_nn::{Cell, CellCtx, Mode, Param};
use rand::Rng as _;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = gstick_nn::rng(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// loss = sum(cell(x) * r) for a fixed random r, so every output position matters differently.
fn loss(cell: &dyn Cell, x: &Tensor, r: &Tensor, mode: Mode) -> Tensor {
    let mut rng = gstick_nn::rng(0);
    let mut ctx = CellCtx::new(mode, &mut rng);
    let y = cell.forward(std::slice::from_ref(x), &mut ctx).unwrap();
    (y * r).unwrap().sum_all().unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Compares d loss / d v from autodiff with central differences, element by element.
fn check(name: &str, cell: &dyn Cell, x: &Var, wrt: &[(&str, &Var)], mode: Mode) {
    let out_shape = {
        let mut rng = gstick_nn::rng(0);
        let mut ctx = CellCtx::new(mode, &mut rng);
        cell.forward(&[x.as_tensor().clone()], &mut ctx)
            .unwrap()
            .dims()
            .to_vec()
    };
    let r = random(&out_shape, 99);
    let grads = loss(cell, x.as_tensor(), &r, mode).backward().unwrap();
    let eps = 1e-6;
    for (what, var) in wrt {
        let analytic: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for {what}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let original: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let shape = var.as_tensor().dims().to_vec();
        let mut worst = 0.0f64;
        for i in 0..original.len() {
            let probe = |delta: f64| {
                let mut v = original.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap())
                    .unwrap();
                scalar(&loss(cell, x.as_tensor(), &r, mode))
            };
            let numeric = (probe(eps) - probe(-eps)) / (2.0 * eps);
            let err = (numeric - analytic[i]).abs() / (1.0 + numeric.abs());
            worst = worst.max(err);
        }
        var.set(&Tensor::from_vec(original, shape.as_slice(), &Device::Cpu).unwrap())
            .unwrap();
        assert!(
            worst < 1e-6,
            "{name}: gradient of {what} disagrees, worst relative error {worst:e}"
        );
    }
}

fn var(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&random(shape, seed)).unwrap()
}

#[test]
fn linear_gradients() {
    let x = var(&[3, 5], 1);
    let cell = Linear::from_tensors(random(&[4, 5], 2), Some(random(&[4], 3))).unwrap();
    let (w, b) = (
        cell.weight.var().clone(),
        cell.bias.as_ref().unwrap().var().clone(),
    );
    check(
        "Linear",
        &cell,
        &x,
        &[("input", &x), ("weight", &w), ("bias", &b)],
        Mode::Train,
    );
    // Rank-3 input (batch, tokens, features) goes through the same path.
    let x3 = var(&[2, 3, 5], 4);
    check(
        "Linear rank 3",
        &cell,
        &x3,
        &[("input", &x3), ("weight", &w)],
        Mode::Train,
    );
}

#[test]
fn conv2d_gradients_with_groups_stride_padding_dilation() {
    let cases = [
        ("plain", 2, 4, 3, Conv2dConfig::default()),
        (
            "grouped, strided, padded",
            4,
            6,
            3,
            Conv2dConfig {
                stride: 2,
                padding: 1,
                dilation: 1,
                groups: 2,
            },
        ),
        (
            "depthwise, dilated",
            3,
            3,
            3,
            Conv2dConfig {
                stride: 1,
                padding: 2,
                dilation: 2,
                groups: 3,
            },
        ),
        ("pointwise", 4, 2, 1, Conv2dConfig::default()),
    ];
    for (i, (name, cin, cout, k, cfg)) in cases.into_iter().enumerate() {
        let x = var(&[2, cin, 6, 5], 10 + i as u64);
        let cell = Conv2d::from_tensors(
            random(&[cout, cin / cfg.groups, k, k], 20 + i as u64),
            Some(random(&[cout], 30)),
            cfg,
        )
        .unwrap();
        let (w, b) = (
            cell.weight.var().clone(),
            cell.bias.as_ref().unwrap().var().clone(),
        );
        check(
            &format!("Conv2d {name}"),
            &cell,
            &x,
            &[("input", &x), ("weight", &w), ("bias", &b)],
            Mode::Train,
        );
    }
}

#[test]
fn conv2d_kernel_matches_candle() {
    let x = random(&[3, 4, 9, 7], 5).to_dtype(DType::F32).unwrap();
    for cfg in [
        Conv2dConfig::default(),
        Conv2dConfig {
            stride: 2,
            padding: 1,
            dilation: 1,
            groups: 2,
        },
        Conv2dConfig {
            stride: 3,
            padding: 2,
            dilation: 2,
            groups: 4,
        },
    ] {
        let w = random(&[8, 4 / cfg.groups, 3, 3], 6)
            .to_dtype(DType::F32)
            .unwrap();
        let ours = Conv2d::from_tensors(w.clone(), None, cfg).unwrap();
        let mut rng = gstick_nn::rng(0);
        let y = ours
            .forward(
                std::slice::from_ref(&x),
                &mut CellCtx::new(Mode::Eval, &mut rng),
            )
            .unwrap();
        let reference = x
            .conv2d(&w, cfg.padding, cfg.stride, cfg.dilation, cfg.groups)
            .unwrap();
        assert_eq!(y.dims(), reference.dims());
        let diff = (y - reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{cfg:?}: max difference {diff}");
    }
}

fn batch_norm_f64(c: usize) -> BatchNorm2d {
    let mut bn = BatchNorm2d::new(c).unwrap();
    bn.weight = Param::weight(random(&[c], 40)).unwrap();
    bn.bias = Param::weight(random(&[c], 41)).unwrap();
    bn.running_mean = Param::buffer(random(&[c], 42)).unwrap();
    bn.running_var = Param::buffer((random(&[c], 43).abs().unwrap() + 0.5).unwrap()).unwrap();
    bn
}

#[test]
fn batch_norm_gradients_train_and_eval() {
    let x = var(&[4, 3, 3, 2], 7);
    let cell = batch_norm_f64(3);
    let (w, b) = (cell.weight.var().clone(), cell.bias.var().clone());
    check(
        "BatchNorm2d Train",
        &cell,
        &x,
        &[("input", &x), ("weight", &w), ("bias", &b)],
        Mode::Train,
    );
    // Evaluation differentiates through the running statistics to the input only: parameters
    // are detached in eval mode, so no backward graph is kept for them.
    check("BatchNorm2d Eval", &cell, &x, &[("input", &x)], Mode::Eval);
    let r = random(&[4, 3, 3, 2], 1);
    let grads = loss(&cell, x.as_tensor(), &r, Mode::Eval)
        .backward()
        .unwrap();
    assert!(
        grads.get(w.as_tensor()).is_none(),
        "no parameter gradient in eval mode"
    );
}

#[test]
fn batch_norm_running_statistics_follow_pytorch() {
    let bn = batch_norm_f64(2);
    let before_mean: Vec<f64> = bn.running_mean.tensor().to_vec1().unwrap();
    let before_var: Vec<f64> = bn.running_var.tensor().to_vec1().unwrap();
    let x = random(&[3, 2, 2, 2], 8);
    let mut rng = gstick_nn::rng(0);
    bn.forward(
        std::slice::from_ref(&x),
        &mut CellCtx::new(Mode::Train, &mut rng),
    )
    .unwrap();
    let flat: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    for c in 0..2 {
        let vals: Vec<f64> = (0..3)
            .flat_map(|n| (0..4).map(move |k| (n, k)))
            .map(|(n, k)| flat[n * 8 + c * 4 + k])
            .collect();
        let mean = vals.iter().sum::<f64>() / 12.0;
        let unbiased = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 11.0;
        let rm: Vec<f64> = bn.running_mean.tensor().to_vec1().unwrap();
        let rv: Vec<f64> = bn.running_var.tensor().to_vec1().unwrap();
        assert!((rm[c] - (0.9 * before_mean[c] + 0.1 * mean)).abs() < 1e-12);
        assert!((rv[c] - (0.9 * before_var[c] + 0.1 * unbiased)).abs() < 1e-12);
    }
    // Evaluation leaves the running statistics alone.
    let rm: Vec<f64> = bn.running_mean.tensor().to_vec1().unwrap();
    bn.forward(&[x], &mut CellCtx::new(Mode::Eval, &mut rng))
        .unwrap();
    assert_eq!(rm, bn.running_mean.tensor().to_vec1::<f64>().unwrap());
}

#[test]
fn pooling_and_activation_gradients() {
    // Distinct values so that the maximum of each window is unique (finite differences are
    // only meaningful away from ties).
    let x = var(&[2, 2, 5, 6], 9);
    let cells: Vec<(&str, Box<dyn Cell>)> = vec![
        ("MaxPool2d k2 s2", Box::new(Pool2d::max(2, 2))),
        (
            "MaxPool2d k3 s2 p1",
            Box::new(Pool2d::new(PoolKind::Max, 3, 2, 1).unwrap()),
        ),
        (
            "AvgPool2d k3 s1 p1",
            Box::new(Pool2d::new(PoolKind::Avg, 3, 1, 1).unwrap()),
        ),
        ("ReLU", Box::new(Activation(ActivationKind::Relu))),
        ("HSwish", Box::new(Activation(ActivationKind::HSwish))),
        ("GELU", Box::new(Activation(ActivationKind::Gelu))),
        ("SiLU", Box::new(Activation(ActivationKind::Silu))),
        (
            "Softmax",
            Box::new(Activation(ActivationKind::Softmax { dim: 3 })),
        ),
    ];
    for (name, cell) in cells {
        check(name, cell.as_ref(), &x, &[("input", &x)], Mode::Train);
    }
}
