//! `gstick bench cnn-int8`: inference of the int8 deploy network against our f32 network (same
//! weights, eval mode) on one batch of Fashion-MNIST test images, measured in the same run.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use gstick::nn::CompAlgo;
use gstick::qat::{calibrate, CalibMethod, SimQat, SimQatConfig};
use gstick_data::Split;
use gstick_nn::{Executor, Mode, Network};

use crate::cli::datasets::{self, DatasetName};
use crate::cli::models::{self, ModelName};

#[derive(Args)]
pub struct CnnBenchArgs {
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Timed repetitions per network (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub repeats: usize,
    /// Python with onnxruntime for the ONNX Runtime baseline on the exported model (default:
    /// python3 with .cache/pytools when present); `none` skips it.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Also print where one forward pass spends its time, per cell kind.
    #[arg(long)]
    pub profile: bool,
}

/// Milliseconds per cell kind over one forward pass, largest first. A node's time is the time
/// since the previous node finished, so sub-graph nodes (which finish after their contents) add
/// almost nothing of their own.
fn profile(net: &Network, x: &candle_core::Tensor) -> Result<Vec<(String, f64)>> {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;
    let totals: Rc<RefCell<BTreeMap<String, f64>>> = Rc::default();
    let last = Rc::new(RefCell::new(Instant::now()));
    let mut exec = Executor::new(Mode::Eval, 0);
    exec.forward1(net, x)?; // warm-up
    {
        let (totals, last) = (totals.clone(), last.clone());
        exec.add_hook_all(move |call| {
            let ms = last.borrow().elapsed().as_secs_f64() * 1e3;
            *totals
                .borrow_mut()
                .entry(call.kind.to_string())
                .or_default() += ms;
            *last.borrow_mut() = Instant::now();
            Ok(())
        });
    }
    *last.borrow_mut() = Instant::now();
    exec.forward1(net, x)?;
    let mut rows: Vec<(String, f64)> = totals.take().into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(rows)
}

/// ONNX Runtime's median milliseconds for `model` on `x`, or why it could not run.
fn onnxruntime_ms(
    python: &str,
    model: &std::path::Path,
    x: &candle_core::Tensor,
    repeats: usize,
) -> Result<f64> {
    let dir = model.parent().unwrap_or(std::path::Path::new("."));
    let images = dir.join("images.f32");
    let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
    std::fs::write(
        &images,
        v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>(),
    )?;
    let dims = x.dims4()?;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cmd = std::process::Command::new(python);
    if root.join(".cache/pytools/.requirements").exists() {
        cmd.env("PYTHONPATH", root.join(".cache/pytools"));
    }
    let v = crate::cli::bench::python_json(
        cmd.arg(root.join("bench/ort_cnn.py"))
            .arg(model)
            .arg(&images)
            .args(
                [
                    dims.0,
                    dims.1,
                    dims.2,
                    dims.3,
                    repeats,
                    gstick_nn::kernels::kernel_threads(),
                ]
                .map(|d| d.to_string()),
            ),
        python,
    )?;
    v["ms"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("no ms from ort_cnn.py"))
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
    println!(
        "| model | batch | f32 ms | int8 ms | int8 speedup | int8 images/s | onnxruntime int8 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    let tmp = std::env::temp_dir().join(format!("gstick-cnn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
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
        let name = crate::cli::train_cmd::value_name(model);
        let ort = if args.python == "none" {
            None
        } else {
            let path = tmp.join(format!("{name}.onnx"));
            let _ = std::fs::remove_file(&path);
            gstick::export::onnx::export_onnx(&quant, 1, 28, 28, &path)?;
            match onnxruntime_ms(&args.python, &path, &x, args.repeats) {
                Ok(ms) => Some(ms),
                Err(e) => {
                    eprintln!("onnxruntime baseline skipped: {e}");
                    None
                }
            }
        };
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2}x | {:.0} | {} |",
            args.batch,
            f * 1e3,
            q * 1e3,
            f / q,
            args.batch as f64 / q,
            ort.map_or("-".into(), |ms| format!("{ms:.2}"))
        );
        if args.profile {
            for (label, net) in [("f32", &float), ("int8", &quant)] {
                let cells = profile(net, &x)?
                    .iter()
                    .map(|(kind, ms)| format!("{kind} {ms:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                eprintln!("{name} {label} ms per cell kind: {cells}");
            }
        }
        rows.push(
            serde_json::json!({"model": name, "batch": args.batch, "f32_ms": f * 1e3,
            "int8_ms": q * 1e3, "int8_speedup": f / q, "onnxruntime_int8_ms": ort,
            "ratio_int8_over_onnxruntime": ort.map(|ms| ms / (q * 1e3))}),
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "{}",
        serde_json::json!({"bench": "cnn-int8", "cpu": crate::cli::bench::cpu_name(),
            "int_isa": gstick_quant::int8::IntIsa::detect().name(),
            "threads": gstick_nn::kernels::kernel_threads(), "models": rows})
    );
    Ok(())
}
