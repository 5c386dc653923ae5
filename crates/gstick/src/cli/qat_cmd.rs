//! `gstick qat` (quantization-aware training) and `gstick ptq-cnn` (static int8 calibration) for
//! CNNs: float accuracy, fake-quantized accuracy, then the int8 deploy network's accuracy.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gstick::export::{write_dir_atomically, ExportReport};
use gstick::nn::CompAlgo;
use gstick::qat::{calibrate, CalibMethod, SimQat, SimQatConfig, Slb, SlbBits, SlbConfig};
use gstick_data::{Dataset, Split};
use gstick_nn::optim::AdamW;
use gstick_nn::schedule::{Decay, LrSchedule};
use gstick_nn::train::{evaluate, Progress, Trainer};
use gstick_nn::{checkpoint, Network};

use crate::cli::datasets::{self, DatasetName};
use crate::cli::models::{self, ModelName};
use crate::cli::train_cmd::data_error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QatAlgo {
    /// Simulated quantization-aware training (int8 activations and weights).
    Simqat,
    /// Learned step size quantization (int8, trained ranges; weights narrow symmetric).
    Lsq,
    /// Searching for low-bit weights: conv weights on a 1, 2 or 4-bit set (--weight-bits).
    Slb,
}

/// SLB's configuration from a TOML or YAML file.
fn load_slb_config(path: &Path) -> Result<SlbConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: SlbConfig = match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => serde_yaml_ng::from_str(&text)
            .map_err(|e| anyhow::anyhow!("recipe {}: {e}", path.display()))?,
        _ => {
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("recipe {}: {e}", path.display()))?
        }
    };
    config.validate()?;
    Ok(config)
}

#[derive(Args)]
pub struct QatArgs {
    #[arg(long, value_enum, default_value = "lenet5")]
    pub model: ModelName,
    #[arg(long, value_enum, default_value = "simqat")]
    pub algo: QatAlgo,
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub dataset: DatasetName,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Float weights to start from (safetensors from `gstick train --out`); without it the float
    /// model is trained first for --fp32-epochs.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub fp32_epochs: usize,
    /// Quantization-aware training epochs.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Learning rate of the quantization-aware epochs (default 1e-4 for simqat and lsq, which
    /// fine-tune; 1e-3 for slb, which trains its weight choices from scratch). The float epochs
    /// use 1e-3.
    #[arg(long)]
    pub lr: Option<f64>,
    /// SLB weight width: 1, 2 or 4 bits.
    #[arg(long, default_value_t = 2)]
    pub weight_bits: u32,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Train on the first N training samples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// The algorithm's configuration file (TOML or YAML, the original's keys): SimQAT's for
    /// simqat and lsq, SLB's for slb; flags below override it. Without one, SLB's temperature
    /// factor is scaled so a run of --epochs ends at the temperature of the original's 100-epoch
    /// schedule.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Fuse Conv2d+BatchNorm2d and fold the BN (one-conv fold).
    #[arg(long)]
    pub bn_fold: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (must not exist): float and fake-quantized checkpoints, the int8 network
    /// as ONNX QDQ (model.onnx), report.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    Minmax,
    Percentile,
}

#[derive(Args)]
pub struct PtqCnnArgs {
    #[arg(long, value_enum, default_value = "ccexam-mnist")]
    pub model: ModelName,
    /// Float weights (required unless the model is pretrained).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "mnist5k")]
    pub dataset: DatasetName,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Calibration images, spread evenly over the training split.
    #[arg(long, default_value_t = 500)]
    pub calib: usize,
    #[arg(long, value_enum, default_value = "minmax")]
    pub method: MethodArg,
    /// Percentile of the percentile method.
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f64,
    /// Fuse Conv2d+BatchNorm2d and fold the BN.
    #[arg(long)]
    pub bn_fold: bool,
    /// Evaluate on every sample (mnist5k: all 5000), not only the test split.
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

fn accuracy(net: &Network, data: &Dataset) -> Result<f64> {
    Ok(evaluate(net, data.batches(256, None).map(|b| b.map_err(data_error)))?.accuracy)
}

/// SLB's temperature factor for a run of `config.epoch_size` epochs. The original trains for 100
/// epochs, so its default factor 1.2 compounds 40 times (from 20% to 60% of the run) to a final
/// temperature of 1.2^40, about 1470, which makes the softmax nearly one-hot before the choice
/// freezes. A shorter run keeps that final temperature with a larger factor; without it a
/// 10-epoch run would freeze near temperature 2, where the relaxed weights are still far from
/// the discrete ones they become.
fn scaled_t_factor(config: &SlbConfig) -> f64 {
    let rises = (config.epoch_size as f64 * config.t_end_time) as i64
        - (config.epoch_size as f64 * config.t_start_time) as i64;
    if rises <= 0 {
        return config.t_factor;
    }
    // The original's run: its defaults over 100 epochs, at the last one.
    let original = SlbConfig {
        epoch_size: 100,
        has_trained_epoch: 0,
        ..SlbConfig::default()
    };
    let target = original.temperature(99).0;
    (target / config.t_start_val).powf(1.0 / rises as f64)
}

/// One training run's data and settings.
struct Fit<'a> {
    data: &'a Dataset,
    epochs: usize,
    lr: f64,
    batch: usize,
    seed: u64,
}

/// Trains the float network with cross-entropy.
fn train(net: &mut Network, fit: Fit) -> Result<()> {
    train_with(
        net,
        fit,
        Vec::new(),
        Box::new(gstick_nn::loss::cross_entropy),
    )
}

fn train_with(
    net: &mut Network,
    fit: Fit,
    callbacks: Vec<Box<dyn gstick_nn::train::Callback>>,
    loss: gstick_nn::train::LossFn,
) -> Result<()> {
    if fit.epochs == 0 {
        return Ok(());
    }
    let schedule = LrSchedule {
        base_lr: fit.lr,
        warmup_steps: 0,
        decay: Decay::Cosine { min_lr: 0.0 },
    };
    let mut trainer = Trainer::new(Box::new(AdamW::new(0.0)), schedule);
    trainer.seed = fit.seed;
    trainer.progress = Progress::Auto;
    trainer.callbacks = callbacks;
    trainer.loss = loss;
    let (data, batch, seed) = (fit.data, fit.batch, fit.seed);
    trainer.fit(net, fit.epochs, data.num_batches(batch), |epoch| {
        data.batches(batch, Some((seed, epoch)))
            .map(|b| b.map_err(data_error))
    })?;
    Ok(())
}

/// Copies every parameter value of `src` into the same-named parameter of `dst`.
fn copy_params(src: &Network, dst: &Network) -> Result<()> {
    let values: std::collections::HashMap<String, gstick_nn::Param> =
        gstick_nn::named_params(src).into_iter().collect();
    for (name, p) in gstick_nn::named_params(dst) {
        let v = values
            .get(&name)
            .with_context(|| format!("no parameter {name} to copy"))?;
        p.set(&v.tensor().copy()?)?;
    }
    Ok(())
}

fn simqat_config(recipe: Option<&Path>, bn_fold: bool) -> Result<SimQatConfig> {
    let mut config = match recipe {
        Some(p) => SimQatConfig::load(p)?,
        None => SimQatConfig::default(),
    };
    if bn_fold {
        config.set_enable_fusion(true);
        config.set_bn_fold(true);
    }
    Ok(config)
}

/// Writes the output directory atomically: checkpoints, the int8 deploy network as ONNX QDQ
/// (`model.onnx`) and the report.
fn write_out(
    out: &Path,
    files: &[(&str, &Network)],
    deploy: &Network,
    input: (usize, usize, usize),
    report: &serde_json::Value,
) -> Result<()> {
    write_dir_atomically(out, |dir| {
        let mut written = Vec::new();
        let (c, h, w) = input;
        gstick::export::onnx::export_onnx(deploy, c, h, w, &dir.join("model.onnx"))?;
        written.push("model.onnx".to_string());
        for (name, net) in files {
            checkpoint::save(net, &dir.join(name)).map_err(gstick::export::Error::Nn)?;
            written.push(name.to_string());
        }
        let text = serde_json::to_string_pretty(report).unwrap_or_default();
        gstick_nn::atomic::write_bytes(&dir.join("report.json"), text.as_bytes())
            .map_err(gstick::export::Error::Nn)?;
        written.push("report.json".into());
        Ok(ExportReport {
            files: written,
            notes: Vec::new(),
            max_abs_deviation: 0.0,
        })
    })?;
    Ok(())
}

fn print(report: &serde_json::Value, json: bool) {
    if json {
        println!("{report}");
    } else {
        let pct = |k: &str| report[k].as_f64().unwrap_or(f64::NAN) * 100.0;
        println!(
            "| model | accuracy |\n|---|---|\n| fp32 | {:.2}% |\n| fake-quant | {:.2}% |\n| int8 deploy | {:.2}% |",
            pct("fp32_accuracy"),
            pct("quant_accuracy"),
            pct("deploy_accuracy")
        );
    }
}

pub fn qat(args: QatArgs) -> Result<()> {
    if args.out.exists() {
        bail!(
            "{} already exists; choose a new output directory",
            args.out.display()
        );
    }
    if args.epochs == 0 || args.batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    if args.model == ModelName::CcexamMnist {
        bail!("ccexam-mnist is pretrained; use `gstick ptq-cnn` for it, or `--model mnistnet`");
    }
    // A recipe is SimQAT's (simqat, lsq) or SLB's configuration.
    let config = match args.algo {
        QatAlgo::Slb => SimQatConfig::default(),
        _ => simqat_config(args.recipe.as_deref(), args.bn_fold)?,
    };
    let mut train_set = datasets::load(args.dataset, Split::Train, args.data_dir.as_ref())?;
    if let Some(n) = args.limit {
        train_set = train_set.take(n);
    }
    let test_set = datasets::load(args.dataset, Split::Test, args.data_dir.as_ref())?;
    models::check_input(args.model, train_set.height, train_set.width)?;
    let classes = train_set.classes().max(test_set.classes());
    let mut net = models::build(args.model, train_set.channels, classes, args.seed, None)?;
    let started = Instant::now();
    match &args.checkpoint {
        Some(path) => {
            checkpoint::load(&net, path).with_context(|| format!("loading {}", path.display()))?
        }
        None => train(
            &mut net,
            Fit {
                data: &train_set,
                epochs: args.fp32_epochs,
                lr: 1e-3,
                batch: args.batch_size,
                seed: args.seed,
            },
        )?,
    }
    let fp32_seconds = started.elapsed().as_secs_f64();
    let fp32 = accuracy(&net, &test_set)?;
    // Cloning a network shares its parameters; the float checkpoint needs copies.
    let float = models::build(args.model, train_set.channels, classes, args.seed, None)?;
    copy_params(&net, &float)?;

    // The algorithm and the network it trains: SimQAT and LSQ fine-tune the float network; SLB
    // searches its discrete weights from a fresh network (choice scores replace the weights).
    let (mut algo, config_json, mut callbacks): (
        Box<dyn CompAlgo<Error = gstick::qat::Error>>,
        serde_json::Value,
        _,
    ) = match args.algo {
        QatAlgo::Simqat => {
            let algo = SimQat::new(config)?;
            let json = serde_json::to_value(&algo.config).unwrap_or_default();
            (Box::new(algo), json, Vec::new())
        }
        QatAlgo::Lsq => {
            let mut config = config;
            config.set_weight_narrow_range(true);
            let algo = SimQat::lsq(config)?;
            let json = serde_json::to_value(&algo.config).unwrap_or_default();
            (Box::new(algo), json, Vec::new())
        }
        QatAlgo::Slb => {
            let mut config = match &args.recipe {
                Some(p) => load_slb_config(p)?,
                None => SlbConfig::default(),
            };
            config.weight_quant_dtype = match args.weight_bits {
                1 => SlbBits::Int1,
                2 => SlbBits::Int2,
                4 => SlbBits::Int4,
                b => bail!("--weight-bits {b}: SLB searches 1, 2 or 4-bit weights"),
            };
            config.epoch_size = args.epochs as i64;
            config.has_trained_epoch = 0;
            config.seed = args.seed;
            if args.recipe.is_none() {
                config.t_factor = scaled_t_factor(&config);
            }
            let algo = Slb::new(config.clone())?;
            let mut callbacks = algo.callbacks()?;
            if config.enable_bn_calibration {
                // BN statistics are re-estimated on the first 8 training batches.
                let batches = train_set
                    .batches(args.batch_size, None)
                    .take(8)
                    .map(|b| b.map(|(x, _)| x))
                    .collect::<Result<Vec<_>, _>>()?;
                callbacks.push(Box::new(gstick::qat::slb::BnCalibration {
                    config: config.clone(),
                    batches,
                }));
            }
            net = models::build(args.model, train_set.channels, classes, args.seed, None)?;
            (
                Box::new(algo),
                serde_json::to_value(&config).unwrap_or_default(),
                callbacks,
            )
        }
    };
    algo.apply(&mut net)?;
    let lr = args.lr.unwrap_or(if args.algo == QatAlgo::Slb {
        1e-3
    } else {
        1e-4
    });
    let t = Instant::now();
    train_with(
        &mut net,
        Fit {
            data: &train_set,
            epochs: args.epochs,
            lr,
            batch: args.batch_size,
            seed: args.seed,
        },
        std::mem::take(&mut callbacks),
        algo.loss(Box::new(gstick_nn::loss::cross_entropy)),
    )?;
    let qat_seconds = t.elapsed().as_secs_f64();
    let quant = accuracy(&net, &test_set)?;
    eprint!(
        "{}",
        gstick::nn::comp_algo::summary_table(algo.name(), &algo.summary(&net))
    );
    let mut deploy = net.clone();
    algo.convert(&mut deploy)?;
    let t = Instant::now();
    let deployed = accuracy(&deploy, &test_set)?;
    let report = serde_json::json!({
        "model": crate::cli::train_cmd::value_name(args.model),
        "algo": crate::cli::train_cmd::value_name(args.algo),
        "dataset": crate::cli::train_cmd::value_name(args.dataset),
        "fp32_accuracy": fp32,
        "quant_accuracy": quant,
        "deploy_accuracy": deployed,
        "fp32_epochs": if args.checkpoint.is_some() { 0 } else { args.fp32_epochs },
        "qat_epochs": args.epochs,
        "seconds": {"fp32": fp32_seconds, "qat": qat_seconds, "deploy_eval": t.elapsed().as_secs_f64()},
        "config": config_json,
        "lr": lr,
        "out": args.out.display().to_string(),
    });
    write_out(
        &args.out,
        &[("fp32.safetensors", &float), ("qat.safetensors", &net)],
        &deploy,
        (test_set.channels, test_set.height, test_set.width),
        &report,
    )?;
    print(&report, args.json);
    Ok(())
}

pub fn ptq_cnn(args: PtqCnnArgs) -> Result<()> {
    if args.out.exists() {
        bail!(
            "{} already exists; choose a new output directory",
            args.out.display()
        );
    }
    if args.calib == 0 {
        bail!("--calib must be at least 1");
    }
    let method = match args.method {
        MethodArg::Minmax => CalibMethod::MinMax,
        MethodArg::Percentile => CalibMethod::Percentile(args.percentile),
    };
    let train_set = datasets::load(args.dataset, Split::Train, args.data_dir.as_ref())?;
    let test_set = if args.all {
        datasets::load_all(args.dataset, args.data_dir.as_ref())?
    } else {
        datasets::load(args.dataset, Split::Test, args.data_dir.as_ref())?
    };
    models::check_input(args.model, test_set.height, test_set.width)?;
    let classes = train_set.classes().max(test_set.classes());
    let mut net = if args.model == ModelName::CcexamMnist {
        models::build(
            args.model,
            test_set.channels,
            10,
            0,
            args.checkpoint.as_ref(),
        )?
    } else {
        let Some(path) = &args.checkpoint else {
            bail!(
                "--checkpoint is required for {:?} (write one with `gstick train --out`)",
                args.model
            );
        };
        let net = models::build(args.model, test_set.channels, classes, 0, None)?;
        checkpoint::load(&net, path)?;
        net
    };
    let fp32 = accuracy(&net, &test_set)?;
    // Calibration images spread over the whole training split (files may be sorted by label).
    let every = (train_set.len() / args.calib).max(1);
    let calib = if every >= 2 {
        train_set.split_every(every).1.take(args.calib)
    } else {
        train_set.take(args.calib)
    };
    let mut algo = SimQat::new(simqat_config(None, args.bn_fold)?)?;
    algo.apply(&mut net)?;
    let t = Instant::now();
    calibrate(
        &mut net,
        calib
            .batches(100, None)
            .map(|b| b.map(|(x, _)| x).map_err(data_error)),
        method,
    )?;
    let calib_seconds = t.elapsed().as_secs_f64();
    let quant = accuracy(&net, &test_set)?;
    let mut deploy = net.clone();
    algo.convert(&mut deploy)?;
    let deployed = accuracy(&deploy, &test_set)?;
    let report = serde_json::json!({
        "model": crate::cli::train_cmd::value_name(args.model),
        "dataset": crate::cli::train_cmd::value_name(args.dataset),
        "calibration": {"images": calib.len(), "method": format!("{method:?}"), "seconds": calib_seconds},
        "fp32_accuracy": fp32,
        "quant_accuracy": quant,
        "deploy_accuracy": deployed,
        "samples": test_set.len(),
        "out": args.out.display().to_string(),
    });
    write_out(
        &args.out,
        &[("ptq.safetensors", &net)],
        &deploy,
        (test_set.channels, test_set.height, test_set.width),
        &report,
    )?;
    print(&report, args.json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slb_temperature_factor_reaches_the_original_final_temperature() {
        let final_temperature = |epochs: i64, factor: f64| {
            let config = SlbConfig {
                epoch_size: epochs,
                has_trained_epoch: 0,
                t_factor: factor,
                ..SlbConfig::default()
            };
            config.temperature(epochs - 1).0
        };
        for epochs in [5, 8, 24, 100] {
            let config = SlbConfig {
                epoch_size: epochs,
                has_trained_epoch: 0,
                ..SlbConfig::default()
            };
            let factor = scaled_t_factor(&config);
            let t = final_temperature(epochs, factor);
            assert!((t / 1.2f64.powi(40) - 1.0).abs() < 1e-6, "{epochs}: {t}");
        }
        // The original's own run length keeps its factor.
        let config = SlbConfig {
            epoch_size: 100,
            has_trained_epoch: 0,
            ..SlbConfig::default()
        };
        assert!((scaled_t_factor(&config) - 1.2).abs() < 1e-9);
        // Too short to rise: the factor is left alone.
        let config = SlbConfig {
            epoch_size: 1,
            has_trained_epoch: 0,
            ..SlbConfig::default()
        };
        assert_eq!(scaled_t_factor(&config), 1.2);
    }
}
