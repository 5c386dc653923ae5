//! Integration tests on the real assets fetched by `scripts/fetch-assets.sh` (CI fetches them
//! first). A missing asset fails the test with the command that fetches it.

use std::path::PathBuf;
use std::time::Instant;

use gstick_data::{assets_dir, load_csv_images, load_fashion_mnist, Dataset, Split};
use gstick_models::{lenet5, load_mnistnet, MNIST_MEAN, MNIST_STD};
use gstick_nn::optim::AdamW;
use gstick_nn::schedule::{Decay, LrSchedule};
use gstick_nn::train::{evaluate, Progress, Trainer};

fn asset(relative: &str) -> PathBuf {
    let path = assets_dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-assets.sh",
        path.display()
    );
    path
}

fn batches(
    d: &Dataset,
    size: usize,
    shuffle: Option<(u64, usize)>,
) -> impl Iterator<Item = gstick_nn::Result<(candle_core::Tensor, candle_core::Tensor)>> + '_ {
    d.batches(size, shuffle)
        .map(|b| b.map_err(|e| gstick_nn::Error::Config(e.to_string())))
}

#[test]
fn ccexam_mnistnet_scores_99_percent_on_mnist_5k() {
    let net = load_mnistnet(&asset("ccexam/mnist.pth")).unwrap();
    let mut data = load_csv_images(&asset("mnist_5k.csv.gz"), 28, 28).unwrap();
    assert_eq!(data.len(), 5000);
    data.normalize(1.0 / 255.0, MNIST_MEAN, MNIST_STD);
    let report = evaluate(&net, batches(&data, 500, None)).unwrap();
    eprintln!(
        "ccexam MNISTNet on mnist_5k: accuracy {:.4} over {} samples",
        report.accuracy, report.samples
    );
    assert_eq!(report.samples, 5000);
    assert!(report.accuracy >= 0.99, "accuracy {}", report.accuracy);
}

#[test]
fn corrupt_pytorch_checkpoint_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("gstick-pth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let original = std::fs::read(asset("ccexam/mnist.pth")).unwrap();
    for (name, bytes) in [
        ("truncated.pth", original[..original.len() / 2].to_vec()),
        ("garbage.pth", b"not a zip at all".to_vec()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = load_mnistnet(&path).unwrap_err().to_string();
        assert!(err.contains(name), "error should name the file: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lenet5_reaches_89_percent_on_fashion_mnist() {
    let dir = asset("fashion-mnist");
    let mut train = load_fashion_mnist(&dir, Split::Train).unwrap();
    let mut test = load_fashion_mnist(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    for d in [&mut train, &mut test] {
        d.normalize(1.0 / 255.0, 0.2860, 0.3530);
    }
    let mut net = lenet5(10, &mut gstick_nn::rng(0)).unwrap();
    let epochs = 8;
    let schedule = LrSchedule {
        base_lr: 1e-3,
        warmup_steps: 0,
        decay: Decay::Cosine { min_lr: 0.0 },
    };
    let mut trainer = Trainer::new(Box::new(AdamW::new(0.0)), schedule);
    trainer.progress = Progress::JsonLines;
    let started = Instant::now();
    let steps = train.num_batches(64);
    trainer
        .fit(&mut net, epochs, steps, |epoch| {
            batches(&train, 64, Some((0, epoch)))
        })
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let report = evaluate(&net, batches(&test, 500, None)).unwrap();
    eprintln!(
        "LeNet-5 on Fashion-MNIST: test accuracy {:.4} after {epochs} epochs in {seconds:.1} s",
        report.accuracy
    );
    assert!(report.accuracy >= 0.89, "test accuracy {}", report.accuracy);
}
