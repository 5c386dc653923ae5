//! Observers rewritten into a small graph: shared by Linears reading the same value, exact
//! statistics, and the graph restored after they are taken out.

use candle_core::{Device, Tensor};
use gstick_nn::cells::{Add, Linear};
use gstick_nn::{Executor, Mode, Network};
use gstick_ptq::observer::{ObserveSpec, Observers};

fn linear(rows: usize, cols: usize, seed: usize) -> Box<Linear> {
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| (((i + seed) * 7919 % 97) as f32 - 48.0) / 40.0)
        .collect();
    Box::new(
        Linear::from_tensors(
            Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap(),
            None,
        )
        .unwrap(),
    )
}

/// x -> a, b (both read x) -> a + b -> c
fn graph() -> Network {
    let mut g = Network::new();
    let x = g.add_input("x");
    let a = g.add_cell("a", linear(6, 4, 1), &[x]).unwrap();
    let b = g.add_cell("b", linear(6, 4, 2), &[x]).unwrap();
    let s = g.add_cell("sum", Box::new(Add), &[a, b]).unwrap();
    let c = g.add_cell("c", linear(3, 6, 3), &[s]).unwrap();
    g.set_outputs(&[c]).unwrap();
    g
}

#[test]
fn observers_share_inputs_measure_exactly_and_leave_no_trace() {
    let mut g = graph();
    let before = g.len();
    let xs: Vec<f32> = (0..2 * 5 * 4)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0)
        .collect();
    let x = Tensor::from_vec(xs.clone(), (2, 5, 4), &Device::Cpu).unwrap();
    let mut exec = Executor::new(Mode::Eval, 0);
    let reference = exec.forward1(&g, &x).unwrap();

    let spec = ObserveSpec {
        hessian: true,
        rows_per_call: 5,
    };
    let targets = ["a".to_string(), "b".to_string(), "c".to_string()];
    let obs = Observers::insert(&mut g, &targets, spec).unwrap();
    assert_eq!(
        g.len(),
        before + 2,
        "a and b share one observer, c has its own"
    );
    let observed = exec.forward1(&g, &x).unwrap();
    let stats = obs.remove(&mut g).unwrap();
    assert_eq!(g.len(), before);
    let again = exec.forward1(&g, &x).unwrap();
    for out in [&observed, &again] {
        let d = (out - &reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }
    assert!(std::sync::Arc::ptr_eq(&stats["a"], &stats["b"]));
    let s = &stats["a"];
    assert_eq!((s.rows_seen, s.cols, s.sample_rows), (10, 4, 5));
    // H = 2/n Σ weight(r) x xᵀ and mean |x|, computed here directly.
    let expected_h = |weight: &dyn Fn(usize) -> f64, i: usize, j: usize| {
        (0..10)
            .map(|r| weight(r) * xs[r * 4 + i] as f64 * xs[r * 4 + j] as f64)
            .sum::<f64>()
            * 2.0
            / 10.0
    };
    let h = s.hessian.as_ref().unwrap();
    for i in 0..4 {
        let mean_abs: f64 = (0..10).map(|r| xs[r * 4 + i].abs() as f64).sum::<f64>() / 10.0;
        assert!((s.abs_mean()[i] - mean_abs).abs() < 1e-12);
        for j in 0..4 {
            let e = expected_h(&|_| 1.0, i, j);
            assert!(
                (h.h[i * 4 + j] - e).abs() < 1e-5,
                "H[{i},{j}] {} vs {e}",
                h.h[i * 4 + j]
            );
        }
    }
    assert_eq!(stats["c"].cols, 6);

    // The first row of each of the two windows is kept apart; GPTQ's Hessian weighs those rows
    // up until they make the asked share of its trace, and leaves a share already reached.
    assert_eq!(s.first_rows, [&xs[0..4], &xs[20..24]].concat());
    assert_eq!(s.gptq_hessian(0.0).unwrap().h, h.h);
    let trace = |h: &[f64]| (0..4).map(|i| h[i * 5]).sum::<f64>();
    let sq = |r: usize| (0..4).map(|i| (xs[r * 4 + i] as f64).powi(2)).sum::<f64>();
    let sink = (sq(0) + sq(5)) * 2.0 / 10.0;
    let share = sink / trace(&h.h);
    assert!(share < 0.5, "{share}");
    let weighted = s.gptq_hessian(0.5).unwrap();
    let k = (0.5 * trace(&h.h) - sink) / (sink * 0.5);
    for i in 0..4 {
        for j in 0..4 {
            let e = expected_h(&|r| if r % 5 == 0 { 1.0 + k } else { 1.0 }, i, j);
            assert!(
                (weighted.h[i * 4 + j] - e).abs() < 1e-5,
                "weighted H[{i},{j}] {} vs {e}",
                weighted.h[i * 4 + j]
            );
        }
    }
    let first = (sq(0) + sq(5)) * (1.0 + k) * 2.0 / 10.0;
    assert!((first / trace(&weighted.h) - 0.5).abs() < 1e-9);
    assert_eq!(s.gptq_hessian(share / 2.0).unwrap().h, h.h);
}

#[test]
fn an_unknown_target_fails_and_changes_nothing() {
    let mut g = graph();
    let before = g.len();
    let spec = ObserveSpec {
        hessian: false,
        rows_per_call: 1,
    };
    assert!(Observers::insert(&mut g, &["a".to_string(), "nope".to_string()], spec).is_err());
    assert_eq!(g.len(), before);
}
