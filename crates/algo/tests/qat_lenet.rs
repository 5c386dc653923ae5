//! SimQAT on the real Fashion-MNIST data: a float LeNet-5, then a short quantization-aware
//! fine-tune, then convert: the int8 deploy network keeps the float accuracy within a point.

use std::time::Instant;

use gstick_algo::qat::{SimQat, SimQatConfig};
use gstick_algo::CompAlgo;
use gstick_data::{assets_dir, load_fashion_mnist, Dataset, Split};
use gstick_models::lenet5;
use gstick_nn::optim::AdamW;
use gstick_nn::schedule::{Decay, LrSchedule};
use gstick_nn::train::{evaluate, Progress, Trainer};
use gstick_nn::Network;

fn batches(
    d: &Dataset,
    size: usize,
    shuffle: Option<(u64, usize)>,
) -> impl Iterator<Item = gstick_nn::Result<(candle_core::Tensor, candle_core::Tensor)>> + '_ {
    d.batches(size, shuffle)
        .map(|b| b.map_err(|e| gstick_nn::Error::Config(e.to_string())))
}

fn train(net: &mut Network, data: &Dataset, epochs: usize, lr: f64) {
    let schedule = LrSchedule {
        base_lr: lr,
        warmup_steps: 0,
        decay: Decay::Cosine { min_lr: 0.0 },
    };
    let mut trainer = Trainer::new(Box::new(AdamW::new(0.0)), schedule);
    trainer.progress = Progress::Quiet;
    let steps = data.num_batches(64);
    trainer
        .fit(net, epochs, steps, |epoch| {
            batches(data, 64, Some((0, epoch)))
        })
        .unwrap();
}

#[test]
fn simqat_lenet5_keeps_fashion_mnist_accuracy_within_a_point() {
    let dir = assets_dir().join("fashion-mnist");
    let mut train_set =
        load_fashion_mnist(&dir, Split::Train).expect("run scripts/fetch-assets.sh");
    let mut test_set = load_fashion_mnist(&dir, Split::Test).unwrap();
    for d in [&mut train_set, &mut test_set] {
        d.normalize(1.0 / 255.0, 0.2860, 0.3530);
    }
    let mut net = lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    let t = Instant::now();
    train(&mut net, &train_set, 3, 1e-3);
    let fp32 = evaluate(&net, batches(&test_set, 500, None))
        .unwrap()
        .accuracy;
    let fp32_seconds = t.elapsed().as_secs_f64();

    let mut algo = SimQat::new(SimQatConfig::default()).unwrap();
    algo.apply(&mut net).unwrap();
    let before_finetune = evaluate(&net, batches(&test_set, 500, None))
        .unwrap()
        .accuracy;
    let t = Instant::now();
    train(&mut net, &train_set, 1, 1e-4);
    let qat = evaluate(&net, batches(&test_set, 500, None))
        .unwrap()
        .accuracy;
    let qat_seconds = t.elapsed().as_secs_f64();
    algo.convert(&mut net).unwrap();
    let deploy = evaluate(&net, batches(&test_set, 500, None))
        .unwrap()
        .accuracy;
    eprintln!(
        "LeNet-5 Fashion-MNIST: fp32 {fp32:.4} (3 epochs, {fp32_seconds:.1} s); fake-quant before fine-tune {before_finetune:.4}; after 1 QAT epoch {qat:.4} ({qat_seconds:.1} s); int8 deploy {deploy:.4}"
    );
    assert!(fp32 > 0.85, "float training failed: {fp32}");
    assert!(qat >= fp32 - 0.01, "QAT {qat} vs fp32 {fp32}");
    assert!(deploy >= fp32 - 0.01, "int8 deploy {deploy} vs fp32 {fp32}");
    assert!(
        (deploy - qat).abs() <= 0.002,
        "deploy {deploy} vs fake quant {qat}"
    );
}
