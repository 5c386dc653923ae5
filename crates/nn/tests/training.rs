//! Executor, hooks, checkpoints, optimizers, schedules and the training loop, on small networks
//! and data generated here.

use std::cell::RefCell;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};
use gstick_nn::cells::{Activation, ActivationKind, Dropout, Linear};
use gstick_nn::optim::{AdamW, Optimizer, Sgd};
use gstick_nn::schedule::{Decay, LrSchedule};
use gstick_nn::train::{evaluate, Callback, EpochReport, Progress, TrainState, Trainer};
use gstick_nn::{checkpoint, named_params, Cell, Error, Executor, Mode, Network, Param};
use rand::Rng as _;

/// x -> fc1 -> relu -> (dropout) -> fc2
fn mlp(seed: u64, dropout: bool) -> Network {
    let mut rng = gstick_nn::rng(seed);
    let mut g = Network::new();
    let x = g.add_input("x");
    let h = g
        .add_cell(
            "fc1",
            Box::new(Linear::new(2, 16, true, &mut rng).unwrap()),
            &[x],
        )
        .unwrap();
    let mut h = g
        .add_cell("relu", Box::new(Activation(ActivationKind::Relu)), &[h])
        .unwrap();
    if dropout {
        h = g
            .add_cell("drop", Box::new(Dropout::new(0.2).unwrap()), &[h])
            .unwrap();
    }
    let y = g
        .add_cell(
            "fc2",
            Box::new(Linear::new(16, 3, true, &mut rng).unwrap()),
            &[h],
        )
        .unwrap();
    g.set_outputs(&[y]).unwrap();
    g
}

/// Three Gaussian blobs in the plane, labelled by blob.
fn blobs(n: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = gstick_nn::rng(seed);
    let centers = [(-2.0f32, 0.0f32), (2.0, 0.0), (0.0, 2.5)];
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for i in 0..n {
        let c = i % 3;
        xs.push(centers[c].0 + rng.random_range(-1.0..1.0));
        xs.push(centers[c].1 + rng.random_range(-1.0..1.0));
        ys.push(c as u32);
    }
    (
        Tensor::from_vec(xs, (n, 2), &Device::Cpu).unwrap(),
        Tensor::from_vec(ys, n, &Device::Cpu).unwrap(),
    )
}

fn batches(x: &Tensor, y: &Tensor, size: usize) -> Vec<gstick_nn::Result<(Tensor, Tensor)>> {
    let n = x.dims()[0];
    (0..n)
        .step_by(size)
        .map(|s| {
            Ok((
                x.narrow(0, s, size.min(n - s))?,
                y.narrow(0, s, size.min(n - s))?,
            ))
        })
        .collect()
}

fn train(net: &mut Network, optimizer: Box<dyn Optimizer>, epochs: usize) -> Vec<EpochReport> {
    let (x, y) = blobs(300, 1);
    let mut trainer = Trainer::new(optimizer, LrSchedule::constant(0.05));
    trainer.progress = Progress::Quiet;
    trainer
        .fit(net, epochs, 10, |_| batches(&x, &y, 30).into_iter())
        .unwrap()
}

fn weights(net: &Network) -> Vec<Vec<f32>> {
    named_params(net)
        .iter()
        .map(|(_, p)| p.tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn sgd_and_adamw_learn_the_blobs() {
    for (name, opt) in [
        (
            "sgd",
            Box::new(Sgd::new(0.9, false, 1e-4)) as Box<dyn Optimizer>,
        ),
        ("nesterov", Box::new(Sgd::new(0.9, true, 0.0))),
        ("adamw", Box::new(AdamW::new(0.01))),
    ] {
        let mut net = mlp(0, false);
        let reports = train(&mut net, opt, 15);
        assert!(
            reports.last().unwrap().loss < reports[0].loss * 0.5,
            "{name}: {reports:?}"
        );
        let (x, y) = blobs(150, 2);
        let eval = evaluate(&net, batches(&x, &y, 50).into_iter()).unwrap();
        assert!(eval.accuracy > 0.9, "{name}: accuracy {}", eval.accuracy);
        assert_eq!(eval.samples, 150);
    }
}

#[test]
fn sgd_momentum_matches_the_formula() {
    // One weight, loss = w * 3 => gradient 3. v1 = 3, w1 = 1 - 0.1*3; v2 = 0.9*3 + 3, w2 = w1 - 0.1*v2.
    let p = Param::weight(Tensor::new(&[1.0f64], &Device::Cpu).unwrap()).unwrap();
    let params = vec![("w".to_string(), p.clone())];
    let mut sgd = Sgd::new(0.9, false, 0.0);
    for _ in 0..2 {
        let grads = (p.tensor() * 3.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        sgd.step(&params, &grads, 0.1).unwrap();
    }
    let w: Vec<f64> = p.tensor().to_vec1().unwrap();
    assert!((w[0] - (1.0 - 0.3 - 0.1 * 5.7)).abs() < 1e-12, "{w:?}");
    // AdamW's first step moves by lr (m_hat / sqrt(v_hat) = 1) plus the decoupled decay.
    let q = Param::weight(Tensor::new(&[2.0f64], &Device::Cpu).unwrap()).unwrap();
    let mut adam = AdamW::new(0.1);
    let grads = (q.tensor() * 3.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    adam.step(&[("q".into(), q.clone())], &grads, 0.01).unwrap();
    let v: Vec<f64> = q.tensor().to_vec1().unwrap();
    assert!(
        (v[0] - (2.0 * (1.0 - 0.01 * 0.1) - 0.01)).abs() < 1e-7,
        "{v:?}"
    );
}

#[test]
fn frozen_parameters_do_not_move() {
    let mut net = mlp(0, false);
    assert_eq!(gstick_nn::param::set_trainable(&net, &["fc1."], false), 2);
    let before = weights(&net);
    train(&mut net, Box::new(Sgd::new(0.0, false, 0.0)), 2);
    let after = weights(&net);
    assert_eq!(before[0], after[0], "fc1.weight is frozen");
    assert_eq!(before[1], after[1], "fc1.bias is frozen");
    assert_ne!(before[2], after[2], "fc2.weight trains");
}

#[test]
fn training_is_deterministic_for_a_seed_and_thread_count() {
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut net = mlp(5, true);
            train(&mut net, Box::new(AdamW::new(0.0)), 3);
            weights(&net)
        })
    };
    let one = run(1);
    assert_eq!(one, run(1), "same seed, same result");
    assert_eq!(one, run(2), "thread count does not change the result");
    let mut other = mlp(6, true);
    train(&mut other, Box::new(AdamW::new(0.0)), 3);
    assert_ne!(one, weights(&other), "another seed gives other weights");
}

#[test]
fn schedules() {
    let s = LrSchedule {
        base_lr: 1.0,
        warmup_steps: 4,
        decay: Decay::Cosine { min_lr: 0.0 },
    };
    assert_eq!(s.lr(0, 104, 10), 0.25);
    assert_eq!(s.lr(3, 104, 10), 1.0);
    assert!((s.lr(54, 104, 10) - 0.5).abs() < 1e-12);
    assert!(s.lr(103, 104, 10) < 1e-3);
    let step = LrSchedule {
        base_lr: 1.0,
        warmup_steps: 0,
        decay: Decay::Step {
            every_epochs: 2,
            gamma: 0.1,
        },
    };
    assert_eq!(step.lr(19, 100, 10), 1.0);
    assert!((step.lr(20, 100, 10) - 0.1).abs() < 1e-12);
    assert!((step.lr(45, 100, 10) - 0.01).abs() < 1e-12);
}

/// Records callback events in order.
struct Recorder(Rc<RefCell<Vec<String>>>);

impl Callback for Recorder {
    fn on_epoch_begin(&mut self, s: &mut TrainState) -> gstick_nn::Result<()> {
        self.0.borrow_mut().push(format!("epoch_begin {}", s.epoch));
        Ok(())
    }
    fn on_step_begin(&mut self, s: &mut TrainState) -> gstick_nn::Result<()> {
        self.0.borrow_mut().push(format!("step_begin {}", s.step));
        Ok(())
    }
    fn on_step_end(&mut self, s: &mut TrainState) -> gstick_nn::Result<()> {
        assert!(s.loss.is_some());
        self.0.borrow_mut().push(format!("step_end {}", s.step));
        s.stop = s.step == 4; // stop early in the second epoch
        Ok(())
    }
    fn on_epoch_end(&mut self, s: &mut TrainState, r: &EpochReport) -> gstick_nn::Result<()> {
        self.0
            .borrow_mut()
            .push(format!("epoch_end {} {}", s.epoch, r.samples));
        Ok(())
    }
}

#[test]
fn callbacks_fire_in_order_and_can_stop() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let mut net = mlp(0, false);
    let (x, y) = blobs(90, 1);
    let mut trainer = Trainer::new(
        Box::new(Sgd::new(0.0, false, 0.0)),
        LrSchedule::constant(0.01),
    );
    trainer.progress = Progress::Quiet;
    trainer.callbacks.push(Box::new(Recorder(log.clone())));
    let reports = trainer
        .fit(&mut net, 5, 3, |_| batches(&x, &y, 30).into_iter())
        .unwrap();
    assert_eq!(reports.len(), 2);
    let log = log.borrow();
    assert_eq!(
        log.as_slice(),
        [
            "epoch_begin 0",
            "step_begin 0",
            "step_end 0",
            "step_begin 1",
            "step_end 1",
            "step_begin 2",
            "step_end 2",
            "epoch_end 0 90",
            "epoch_begin 1",
            "step_begin 3",
            "step_end 3",
            "step_begin 4",
            "step_end 4",
            "epoch_end 1 60",
        ]
    );
}

#[test]
fn hooks_see_every_node_in_order() {
    let net = mlp(0, false);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let mut exec = Executor::new(Mode::Eval, 0);
    let s = seen.clone();
    exec.add_hook_all(move |call| {
        s.borrow_mut().push((
            call.name.to_string(),
            call.kind.to_string(),
            call.output.dims().to_vec(),
        ));
        Ok(())
    });
    let captured = Rc::new(RefCell::new(None));
    let c = captured.clone();
    exec.add_hook("fc2", move |call| {
        *c.borrow_mut() = Some(call.inputs[0].clone());
        Ok(())
    });
    let (x, _) = blobs(4, 0);
    exec.forward1(&net, &x).unwrap();
    {
        let seen = seen.borrow();
        let names: Vec<&str> = seen.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["x", "fc1", "relu", "fc2"]);
        assert_eq!(seen[3].2, vec![4, 3]);
    }
    assert_eq!(
        captured.borrow().as_ref().unwrap().dims(),
        &[4, 16],
        "fc2's input is the relu output"
    );
    // A hook error stops the run and is reported.
    exec.add_hook("relu", |_| Err(Error::Config("stop here".into())));
    assert!(exec
        .forward1(&net, &x)
        .unwrap_err()
        .to_string()
        .contains("stop here"));
}

#[test]
fn non_finite_values_are_reported_with_the_layer_name() {
    let net = mlp(0, false);
    let fc1 = net.find("fc1").unwrap();
    let w = net.node(fc1).unwrap().cell().unwrap().params()[0].1.clone();
    let mut values: Vec<f32> = w.tensor().flatten_all().unwrap().to_vec1().unwrap();
    values[0] = f32::NAN;
    w.set(&Tensor::from_vec(values, (16, 2), &Device::Cpu).unwrap())
        .unwrap();
    let mut exec = Executor::new(Mode::Eval, 0);
    exec.check_finite = true;
    let (x, y) = blobs(6, 0);
    let err = exec.forward1(&net, &x).unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite { node, .. } if node == "fc1"),
        "{err}"
    );
    // The trainer locates it too, instead of training on garbage.
    let mut net = net;
    let mut trainer = Trainer::new(
        Box::new(Sgd::new(0.0, false, 0.0)),
        LrSchedule::constant(0.1),
    );
    trainer.progress = Progress::Quiet;
    let err = trainer
        .fit(&mut net, 1, 1, |_| {
            vec![Ok((x.clone(), y.clone()))].into_iter()
        })
        .unwrap_err();
    assert!(err.to_string().contains("`fc1`"), "{err}");
}

#[test]
fn checkpoint_round_trip_and_errors() {
    let dir = std::env::temp_dir().join(format!("gstick-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mlp.safetensors");
    let trained = mlp(0, false);
    checkpoint::save(&trained, &path).unwrap();
    let fresh = mlp(1, false);
    assert_ne!(weights(&trained), weights(&fresh));
    checkpoint::load(&fresh, &path).unwrap();
    assert_eq!(weights(&trained), weights(&fresh));

    // A different architecture: every problem is listed and nothing is changed.
    let mut rng = gstick_nn::rng(0);
    let mut other = Network::new();
    let x = other.add_input("x");
    let a = other
        .add_cell(
            "fc1",
            Box::new(Linear::new(2, 8, true, &mut rng).unwrap()),
            &[x],
        )
        .unwrap();
    let b = other
        .add_cell(
            "head",
            Box::new(Linear::new(8, 3, false, &mut rng).unwrap()),
            &[a],
        )
        .unwrap();
    other.set_outputs(&[b]).unwrap();
    let before = weights(&other);
    let err = checkpoint::load(&other, &path).unwrap_err().to_string();
    for part in [
        "`fc1.weight` has shape [16, 2] in the file but [8, 2]",
        "missing `head.weight`",
        "unexpected `fc2.bias`",
    ] {
        assert!(err.contains(part), "{err}");
    }
    assert_eq!(before, weights(&other));

    // A truncated file is a clear error, not a panic.
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.join("truncated.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let err = checkpoint::load(&fresh, &bad).unwrap_err().to_string();
    assert!(err.contains("truncated.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dropout_is_seeded_and_off_in_eval() {
    let d = Dropout::new(0.5).unwrap();
    let x = Tensor::ones((4, 100), DType::F32, &Device::Cpu).unwrap();
    let run = |seed: u64, mode: Mode| {
        let mut rng = gstick_nn::rng(seed);
        let y = d
            .forward(
                std::slice::from_ref(&x),
                &mut gstick_nn::CellCtx::new(mode, &mut rng),
            )
            .unwrap();
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let a = run(1, Mode::Train);
    assert_eq!(a, run(1, Mode::Train));
    assert_ne!(a, run(2, Mode::Train));
    let kept = a.iter().filter(|&&v| v == 2.0).count();
    assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
    assert!((150..250).contains(&kept), "{kept} of 400 kept");
    assert!(run(1, Mode::Eval).iter().all(|&v| v == 1.0));
    assert!(Dropout::new(1.0).is_err());
}

#[test]
fn the_trainer_optimizes_the_loss_it_is_given() {
    // A loss scaled to zero has zero gradients: plain SGD must leave every weight where it was,
    // and the reported loss is the given loss's value, not cross-entropy's.
    let (x, y) = blobs(90, 1);
    let mut net = mlp(0, false);
    let before = weights(&net);
    let mut trainer = Trainer::new(
        Box::new(Sgd::new(0.0, false, 0.0)),
        LrSchedule::constant(0.1),
    );
    trainer.progress = Progress::Quiet;
    trainer.loss =
        Box::new(|logits, labels| Ok((gstick_nn::loss::cross_entropy(logits, labels)? * 0.0)?));
    let reports = trainer
        .fit(&mut net, 2, 3, |_| batches(&x, &y, 30).into_iter())
        .unwrap();
    assert_eq!(weights(&net), before);
    assert_eq!(reports[1].loss, 0.0);
}
