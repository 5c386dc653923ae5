//! `gstick train` and `gstick eval`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gstick_data::Split;
use gstick_nn::optim::{AdamW, Optimizer, Sgd};
use gstick_nn::schedule::{Decay, LrSchedule};
use gstick_nn::train::{evaluate, Progress, Trainer};
use gstick_nn::{checkpoint, Network};

use crate::cli::datasets::{self, DatasetName};
use crate::cli::models::{self, ModelName};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptimizerName {
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleName {
    Constant,
    Cosine,
    /// Multiply the rate by --gamma every --step-epochs epochs.
    Step,
}

#[derive(Args)]
pub struct TrainArgs {
    #[arg(long, value_enum, default_value = "lenet5")]
    pub model: ModelName,
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub dataset: DatasetName,
    /// Folder of the dataset files (default: the asset cache).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "adamw")]
    pub optimizer: OptimizerName,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Use Nesterov momentum (SGD).
    #[arg(long)]
    pub nesterov: bool,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleName,
    /// Linear warm-up steps before the schedule.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 10)]
    pub step_epochs: usize,
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// Seed of initialization, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training samples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the trained weights here (safetensors).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the final metrics as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long, value_enum, default_value = "lenet5")]
    pub model: ModelName,
    /// Weights to evaluate: a safetensors checkpoint from `gstick train --out`, or for
    /// ccexam-mnist its mnist.pth (default: the asset cache).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub dataset: DatasetName,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Evaluate on every sample of the dataset (mnist-5k: all 5000), not only the test split.
    #[arg(long)]
    pub all: bool,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn train(args: TrainArgs) -> Result<()> {
    if args.epochs == 0 || args.batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        bail!("--lr must be a positive number, got {}", args.lr);
    }
    if args.model == ModelName::CcexamMnist {
        bail!("ccexam-mnist is pretrained; train `mnistnet` for the same architecture");
    }
    let mut train_set = datasets::load(args.dataset, Split::Train, args.data_dir.as_ref())?;
    if let Some(n) = args.limit {
        train_set = train_set.take(n);
    }
    let test_set = datasets::load(args.dataset, Split::Test, args.data_dir.as_ref())?;
    models::check_input(args.model, train_set.height, train_set.width)?;
    let classes = train_set.classes().max(test_set.classes());
    let mut net = models::build(args.model, train_set.channels, classes, args.seed, None)?;

    let optimizer: Box<dyn Optimizer> = match args.optimizer {
        OptimizerName::Adamw => Box::new(AdamW::new(args.weight_decay)),
        OptimizerName::Sgd => Box::new(Sgd::new(args.momentum, args.nesterov, args.weight_decay)),
    };
    let decay = match args.schedule {
        ScheduleName::Constant => Decay::Constant,
        ScheduleName::Cosine => Decay::Cosine { min_lr: 0.0 },
        ScheduleName::Step => Decay::Step {
            every_epochs: args.step_epochs,
            gamma: args.gamma,
        },
    };
    let schedule = LrSchedule {
        base_lr: args.lr,
        warmup_steps: args.warmup_steps,
        decay,
    };
    let mut trainer = Trainer::new(optimizer, schedule);
    trainer.seed = args.seed;
    trainer.progress = Progress::Auto;
    let steps = train_set.num_batches(args.batch_size);
    let started = std::time::Instant::now();
    let reports = trainer.fit(&mut net, args.epochs, steps, |epoch| {
        train_set
            .batches(args.batch_size, Some((args.seed, epoch)))
            .map(|b| b.map_err(data_error))
    })?;
    let train_seconds = started.elapsed().as_secs_f64();
    let test = evaluate(
        &net,
        test_set.batches(256, None).map(|b| b.map_err(data_error)),
    )?;
    if let Some(out) = &args.out {
        checkpoint::save(&net, out).with_context(|| format!("saving {}", out.display()))?;
    }
    let samples_trained: usize = reports.iter().map(|r| r.samples).sum();
    let summary = serde_json::json!({
        "model": value_name(args.model),
        "dataset": value_name(args.dataset),
        "accuracy": test.accuracy,
        "samples": test.samples,
        "loss": test.loss,
        "epochs": reports.len(),
        "train_seconds": train_seconds,
        "train_images_per_s": samples_trained as f64 / train_seconds.max(1e-9),
        "final_train_loss": reports.last().map(|r| r.loss),
        "checkpoint": args.out.as_ref().map(|p| p.display().to_string()),
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "test accuracy {:.2}% on {} samples after {} epochs ({:.1} s, {:.0} images/s)",
            test.accuracy * 100.0,
            test.samples,
            reports.len(),
            train_seconds,
            summary["train_images_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let data = if args.all {
        datasets::load_all(args.dataset, args.data_dir.as_ref())?
    } else {
        datasets::load(args.dataset, Split::Test, args.data_dir.as_ref())?
    };
    models::check_input(args.model, data.height, data.width)?;
    let net: Network = if args.model == ModelName::CcexamMnist {
        models::build(args.model, data.channels, 10, 0, args.checkpoint.as_ref())?
    } else {
        let Some(path) = &args.checkpoint else {
            bail!(
                "--checkpoint is required for {:?} (write one with `gstick train --out`)",
                args.model
            );
        };
        let net = models::build(args.model, data.channels, data.classes(), 0, None)?;
        checkpoint::load(&net, path)?;
        net
    };
    let report = evaluate(
        &net,
        data.batches(args.batch_size.max(1), None)
            .map(|b| b.map_err(data_error)),
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"accuracy": report.accuracy, "samples": report.samples, "loss": report.loss, "seconds": report.seconds})
        );
    } else {
        println!(
            "accuracy {:.2}% on {} samples (loss {:.4})",
            report.accuracy * 100.0,
            report.samples,
            report.loss
        );
    }
    Ok(())
}

/// The name a value has on the command line (`fashion-mnist`).
pub fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

pub fn data_error(e: gstick_data::Error) -> gstick_nn::Error {
    match e {
        gstick_data::Error::Tensor(t) => gstick_nn::Error::Tensor(t),
        other => gstick_nn::Error::Config(other.to_string()),
    }
}
