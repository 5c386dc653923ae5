//! `gstick bench cnn-int8`: inference of the int8 deploy network against our f32 network (same
//! weights, eval mode) on one batch of Fashion-MNIST test images, measured in the same run.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use gstick_algo::qat::{calibrate, CalibMethod, SimQat, SimQatConfig};
use gstick_algo::CompAlgo;
use gstick_data::Split;
use gstick_nn::{Executor, Mode, Network};

use crate::datasets::{self, DatasetName};
use crate::models::{self, ModelName};

#[derive(Args)]
pub struct CnnBenchArgs {
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Timed repetitions per network (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub repeats: usize,
}

fn median_seconds(net: &Network, x: &candle_core::Tensor, repeats: usize) -> Result<f64> {
    let mut exec = Executor::new(Mode::Eval, 0);
    exec.forward1(net, x)?; // warm-up
    let mut t = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        std::hint::black_box(exec.forward1(net, x)?);
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

pub fn run(args: CnnBenchArgs) -> Result<()> {
    let test = datasets::load(DatasetName::FashionMnist, Split::Test, None)?;
    let batch = test.take(args.batch);
    let (x, _) = batch
        .batches(args.batch, None)
        .next()
        .ok_or_else(|| anyhow::anyhow!("no test images"))??;
    println!("| model | batch | f32 ms | int8 ms | int8 speedup | int8 images/s |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for model in [ModelName::Lenet5, ModelName::Resnet20] {
        // Random weights are enough for speed; the ranges come from real images.
        let float = models::build(model, 1, 10, 0, None)?;
        let mut quant = float.clone();
        let mut config = SimQatConfig::default();
        if model == ModelName::Resnet20 {
            config.set_enable_fusion(true);
            config.set_bn_fold(true);
        }
        let algo = SimQat::new(config)?;
        let mut algo = algo;
        algo.apply(&mut quant)?;
        calibrate(
            &mut quant,
            std::iter::once(Ok(x.clone())),
            CalibMethod::MinMax,
        )?;
        algo.convert(&mut quant)?;
        let f = median_seconds(&float, &x, args.repeats)?;
        let q = median_seconds(&quant, &x, args.repeats)?;
        let name = crate::train_cmd::value_name(model);
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2}x | {:.0} |",
            args.batch,
            f * 1e3,
            q * 1e3,
            f / q,
            args.batch as f64 / q
        );
        rows.push(
            serde_json::json!({"model": name, "batch": args.batch, "f32_ms": f * 1e3,
            "int8_ms": q * 1e3, "int8_speedup": f / q}),
        );
    }
    println!(
        "{}",
        serde_json::json!({"bench": "cnn-int8", "int_isa": gstick_quant::int8::IntIsa::detect().name(),
            "threads": gstick_nn::kernels::kernel_threads(), "models": rows})
    );
    Ok(())
}
