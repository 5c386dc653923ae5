use candle_core::{Device, Tensor, Var, DType};
use std::time::Instant;
use gstick_nn::{Cell, CellCtx, Mode};
use gstick_nn::cells::*;
fn t<F: FnMut()>(name: &str, n: usize, mut f: F) { f(); let s=Instant::now(); for _ in 0..n { f() } println!("{name}: {:.3} ms", s.elapsed().as_secs_f64()*1e3/n as f64); }
fn main() {
    let d = Device::Cpu;
    let mut rng = gstick_nn::rng(0);
    let mut r2 = gstick_nn::rng(0);
    let mut ctx = CellCtx { mode: Mode::Train, rng: &mut r2 };
    let conv1 = Conv2d::new(1, 6, 5, Conv2dConfig{padding:2, ..Default::default()}, true, &mut rng).unwrap();
    let conv1nb = Conv2d::new(1, 6, 5, Conv2dConfig{padding:2, ..Default::default()}, false, &mut rng).unwrap();
    let x = Var::randn(0f32, 1., (64,1,28,28), &d).unwrap();
    let a = Var::randn(0f32, 1., (64,6,28,28), &d).unwrap();
    let relu = Activation(ActivationKind::Relu);
    let pool = Pool2d::max(2,2);
    let fc = Linear::new(400, 120, true, &mut rng).unwrap();
    let f = Var::randn(0f32, 1., (64,400), &d).unwrap();
    for _ in 0..2 {
    t("conv1 cell fwd+bwd", 30, || { conv1.forward(&[x.as_tensor().clone()], &mut ctx).unwrap().sum_all().unwrap().backward().unwrap(); });
    t("conv1 nobias fwd+bwd", 30, || { conv1nb.forward(&[x.as_tensor().clone()], &mut ctx).unwrap().sum_all().unwrap().backward().unwrap(); });
    t("sum_all fwd+bwd", 30, || { a.as_tensor().sum_all().unwrap().backward().unwrap(); });
    t("relu fwd+bwd", 30, || { relu.forward(&[a.as_tensor().clone()], &mut ctx).unwrap().sum_all().unwrap().backward().unwrap(); });
    t("pool fwd+bwd", 30, || { pool.forward(&[a.as_tensor().clone()], &mut ctx).unwrap().sum_all().unwrap().backward().unwrap(); });
    t("fc fwd+bwd", 30, || { fc.forward(&[f.as_tensor().clone()], &mut ctx).unwrap().sum_all().unwrap().backward().unwrap(); });
    }
    let net = gstick_models::lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    let mut ex = gstick_nn::Executor::new(gstick_nn::Mode::Train, 0);
    let xi = Tensor::randn(0f32,1.,(64,1,28,28),&d).unwrap();
    let yl = Tensor::zeros(64, DType::U32, &d).unwrap();
    t("lenet fwd", 30, || { ex.forward1(&net, &xi).unwrap(); });
    t("lenet fwd+bwd", 30, || { let l = gstick_nn::loss::cross_entropy(&ex.forward1(&net, &xi).unwrap(), &yl).unwrap(); l.backward().unwrap(); });
    let mut opt = gstick_nn::optim::AdamW::new(0.0);
    use gstick_nn::optim::Optimizer;
    let l = gstick_nn::loss::cross_entropy(&ex.forward1(&net, &xi).unwrap(), &yl).unwrap(); let g = l.backward().unwrap();
    t("adamw", 30, || { opt.step(&gstick_nn::named_params(&net), &g, 1e-3).unwrap(); });
}
