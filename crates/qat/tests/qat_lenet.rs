//! SimQAT on the real Fashion-MNIST data: a float LeNet-5, then a short quantization-aware
//! fine-tune, then convert: the int8 deploy network keeps the float accuracy within a point.

use std::time::Instant;

#[path = "../../export/tests/common/mod.rs"]
mod common;

use gstick_data::{assets_dir, load_fashion_mnist, Dataset, Split};
use gstick_models::lenet5;
use gstick_nn::optim::AdamW;
use gstick_nn::schedule::{Decay, LrSchedule};
use gstick_nn::train::{evaluate, Progress, Trainer};
use gstick_nn::CompAlgo;
use gstick_nn::Network;
use gstick_qat::{SimQat, SimQatConfig};

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

    // The ONNX QDQ export passes onnx.checker and ONNX Runtime predicts as our int8 network does.
    let dir = std::env::temp_dir().join(format!("gstick-onnx-lenet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("lenet5-int8.onnx");
    let report = gstick_export::onnx::export_onnx(&net, 1, 28, 28, &model).unwrap();
    assert!(report.nodes > 10, "{report:?}");
    let mut images = Vec::new();
    let mut ours = Vec::new();
    let mut exec = gstick_nn::Executor::new(gstick_nn::Mode::Eval, 0);
    for batch in batches(&test_set, 500, None) {
        let (x, _) = batch.unwrap();
        images.extend(x.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let logits = exec.forward1(&net, &x).unwrap();
        ours.extend(
            logits
                .argmax(1)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap()
                .into_iter()
                .map(|c| c as i64),
        );
    }
    common::write_f32(&dir.join("images.f32"), &images);
    common::write_i64(&dir.join("ours.i64"), &ours);
    let n = ours.len().to_string();
    let v = common::python(
        "onnx_run.py",
        &[
            &model,
            &dir.join("images.f32"),
            &n,
            &"1",
            &"28",
            &"28",
            &dir.join("ours.i64"),
        ],
    );
    eprintln!("ONNX Runtime vs our int8 LeNet-5: {v}");
    assert_eq!(v["checker"], "ok");
    assert!(v["opset"].as_i64().unwrap() >= 19);
    assert!(v["agreement"].as_f64().unwrap() >= 0.999, "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
}
