//! `gstick bench`: training throughput of LeNet-5 on Fashion-MNIST, ours against PyTorch's
//! measured in the same run when a Python with torch is available.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use gstick_data::Split;
use gstick_nn::loss::cross_entropy;
use gstick_nn::optim::{AdamW, Optimizer};
use gstick_nn::{named_params, Executor, Mode};

use crate::cli::datasets::{self, DatasetName};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchCommand {
    #[command(subcommand)]
    pub kind: Option<BenchKind>,
    #[command(flatten)]
    pub lenet: BenchArgs,
}

#[derive(clap::Subcommand)]
pub enum BenchKind {
    /// LeNet-5 training throughput (the default).
    Lenet5(BenchArgs),
    /// Peak memory and time of a layer-wise pass over every decoder layer of an LLM.
    Layerwise(LlmBenchArgs),
    /// Peak memory and time of the same windows through the fully loaded LLM.
    Forward(LlmBenchArgs),
    /// Batch-1 greedy decode tokens/s on the decoder, against llama.cpp in the same run when
    /// llama-cpp-python is installed.
    Decode(crate::cli::decode_bench::DecodeBenchArgs),
    /// Prompt processing (prefill) tokens/s, against llama.cpp in the same run when installed.
    Prefill(crate::cli::decode_bench::PrefillBenchArgs),
    /// GPTQ pipeline seconds, against llm-compressor on the same windows when installed.
    Gptq(crate::cli::gptq_bench::GptqBenchArgs),
    /// Perplexity throughput (tokens/s), against transformers in the same run when installed.
    Ppl(PplBenchArgs),
    /// Int8 and int4 deploy kernels against the f32 Linear path (GEMV and GEMM).
    Kernels(crate::cli::kernel_bench::KernelBenchArgs),
    /// Int8 deploy inference of LeNet-5 and ResNet-20 against our f32 networks.
    CnnInt8(crate::cli::cnn_bench::CnnBenchArgs),
}

#[derive(Args)]
pub struct PplBenchArgs {
    /// A GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub text: PathBuf,
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    #[arg(long, default_value_t = 4)]
    pub windows: usize,
    /// Python interpreter with torch and transformers (default: python3).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip the transformers baseline.
    #[arg(long)]
    pub no_transformers: bool,
    /// Also report the seconds spent in each cell kind (profiling adds no measurable cost).
    #[arg(long)]
    pub profile: bool,
    /// Arithmetic of our Linear layers, comma-separated; each is measured in the same run (bf16:
    /// AMX tiles where present) and reported with its perplexity change from the first.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    pub compute: Vec<crate::cli::llm_cmd::ComputeArg>,
}

fn ppl(args: PplBenchArgs) -> Result<()> {
    use crate::cli::llm_cmd::ComputeArg;
    // A model that any of the runs cannot compute as asked is refused before anything runs.
    let bf16 = args.compute.contains(&ComputeArg::Bf16);
    let (net, _, tokenizer) = crate::cli::llm_cmd::load_lm_computing(
        &args.model,
        if bf16 {
            ComputeArg::Bf16
        } else {
            ComputeArg::F32
        },
    )?;
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let ids = tokenizer.encode(&text)?;
    let mut runs = Vec::new();
    for compute in &args.compute {
        let engine = compute.apply();
        let (ours, profile) =
            gstick_eval::perplexity_profiled(&net, &ids, args.seqlen, Some(args.windows))?;
        let mut run = serde_json::json!({
            "compute": engine,
            "tokens_per_s": ours.tokens_per_s,
            "ppl": ours.ppl,
        });
        if args.profile {
            run["profile_seconds"] = profile
                .ranked()
                .into_iter()
                .map(|(kind, seconds, calls)| serde_json::json!({"kind": kind, "seconds": seconds, "calls": calls}))
                .collect();
        }
        runs.push((ours, run));
    }
    crate::cli::llm_cmd::ComputeArg::F32.apply();
    drop(net);
    let (ours, _) = &runs[0];
    let (first_ppl, ours_tps) = (ours.ppl, ours.tokens_per_s);
    let mut report = serde_json::json!({
        "bench": "llm-perplexity-throughput",
        "seqlen": args.seqlen,
        "windows": args.windows,
        "cpu": cpu_name(),
        "threads": gstick_nn::kernels::kernel_threads(),
        "gstick_tokens_per_s": ours_tps,
        "gstick_ppl": first_ppl,
    });
    if !args.no_transformers {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/ppl_transformers.py");
        let out = Command::new(&args.python)
            .arg(&script)
            .arg(&args.model)
            .arg(&args.text)
            .arg(args.seqlen.to_string())
            .arg(args.windows.to_string())
            .output()
            .with_context(|| format!("running {}", args.python))?;
        if out.status.success() {
            let v: serde_json::Value =
                serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())?;
            let theirs = v["tokens_per_s"]
                .as_f64()
                .context("no tokens_per_s from transformers")?;
            report["transformers_tokens_per_s"] = theirs.into();
            report["transformers_ppl"] = v["ppl"].clone();
            report["ratio_gstick_over_transformers"] = (ours_tps / theirs).into();
            for (_, run) in &mut runs {
                run["ratio_over_transformers"] =
                    (run["tokens_per_s"].as_f64().unwrap_or(0.0) / theirs).into();
            }
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            eprintln!(
                "transformers baseline skipped: {}",
                err.lines().last().unwrap_or("failed")
            );
        }
    }
    for (_, run) in &mut runs {
        let ppl = run["ppl"].as_f64().unwrap_or(f64::NAN);
        run["ppl_change_from_first"] = (ppl / first_ppl - 1.0).into();
    }
    report["runs"] = runs.into_iter().map(|(_, run)| run).collect();
    println!("{report}");
    Ok(())
}

/// Runs a baseline script (`python` names the interpreter in errors) and parses the JSON line
/// it prints last. A failed run is reported as the last line of its stderr: Python's exception.
pub fn python_json(cmd: &mut Command, python: &str) -> Result<serde_json::Value> {
    let out = cmd.output().with_context(|| format!("running {python}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("failed")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last.trim()).with_context(|| format!("parsing {last:?} from {python}"))
}

/// The CPU's model name (from /proc/cpuinfo on Linux), for reports of speed ratios.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[derive(Args)]
pub struct LlmBenchArgs {
    /// GGUF file or Hugging Face directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Text to draw calibration windows from.
    #[arg(long)]
    pub text: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub windows: usize,
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd.kind {
        None => bench(cmd.lenet),
        Some(BenchKind::Lenet5(args)) => bench(args),
        Some(BenchKind::Layerwise(args)) => llm_memory(args, true),
        Some(BenchKind::Forward(args)) => llm_memory(args, false),
        Some(BenchKind::Decode(args)) => crate::cli::decode_bench::decode(args),
        Some(BenchKind::Prefill(args)) => crate::cli::decode_bench::prefill(args),
        Some(BenchKind::Gptq(args)) => crate::cli::gptq_bench::run(args),
        Some(BenchKind::Ppl(args)) => ppl(args),
        Some(BenchKind::Kernels(args)) => crate::cli::kernel_bench::run(args),
        Some(BenchKind::CnnInt8(args)) => crate::cli::cnn_bench::run(args),
    }
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    gstick::memory::peak_resident_bytes().map(|b| b as f64 / 1048576.0)
}

fn llm_memory(args: LlmBenchArgs, layerwise: bool) -> Result<()> {
    use gstick_models::layerwise::{calibration_windows, run_layer, LayerwiseLm};
    let started = Instant::now();
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let gguf = gstick_models::gguf::Gguf::open(&args.model)?;
    let tokenizer = gstick_models::tokenizer::tokenizer_from_gguf(&gguf)?;
    let windows = calibration_windows(
        &tokenizer.encode(&text)?,
        args.windows,
        args.seqlen,
        args.seed,
    )?;
    let mut exec = Executor::new(Mode::Eval, 0);
    let config = gstick_models::llama::LlamaConfig::from_gguf(&gguf)?;
    if layerwise {
        let src = gstick_models::llama::GgufWeights::new(&gguf)?;
        let mut lm = LayerwiseLm::new(config.clone(), src)?;
        let mut hidden = lm.embed(&windows)?;
        for i in 0..config.layers {
            let layer = lm.layer(i)?;
            hidden = run_layer(&layer, &mut exec, &hidden)?;
        }
    } else {
        let (net, _) = gstick_models::llama::load_llama_gguf(&gguf)?;
        let body = gstick_eval::SplitLm::new(&net)?;
        for w in &windows {
            let input =
                candle_core::Tensor::from_vec(w.clone(), (1, w.len()), &candle_core::Device::Cpu)?;
            exec.forward1(body.body(), &input)?;
        }
    }
    let report = serde_json::json!({
        "bench": if layerwise { "llm-layerwise-pass" } else { "llm-full-forward" },
        "layers": config.layers,
        "windows": args.windows,
        "seqlen": args.seqlen,
        "seconds": started.elapsed().as_secs_f64(),
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{report}");
    Ok(())
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Timed steps (after 20 warm-up steps).
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Repeat the measurement and report the median.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Python interpreter with torch installed (default: python3).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip the PyTorch baseline.
    #[arg(long)]
    pub no_torch: bool,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let data = datasets::load(DatasetName::FashionMnist, Split::Train, None)?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..args.repeats.max(1) {
        ours.push(ours_images_per_s(&data, args.batch_size, args.steps)?);
        if !args.no_torch {
            match torch_images_per_s(&args) {
                Ok(v) => theirs.push(v),
                Err(e) => {
                    eprintln!("PyTorch baseline skipped: {e:#}");
                    break;
                }
            }
        }
    }
    let ours = median(&mut ours);
    let mut report = serde_json::json!({
        "bench": "lenet5-train-fashion-mnist",
        "batch": args.batch_size,
        "steps": args.steps,
        "gstick_images_per_s": ours,
    });
    if !theirs.is_empty() {
        let torch = median(&mut theirs);
        report["pytorch_images_per_s"] = torch.into();
        report["ratio_gstick_over_pytorch"] = (ours / torch).into();
    }
    println!("{report}");
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Same recipe as bench/lenet5_torch.py: AdamW (no decay) at 1e-3, 20 warm-up steps.
fn ours_images_per_s(data: &gstick_data::Dataset, batch: usize, steps: usize) -> Result<f64> {
    let mut net = gstick_models::lenet5(10, &mut gstick_nn::rng(0))?;
    let mut exec = Executor::new(Mode::Train, 0);
    let mut opt = AdamW::new(0.0);
    // Endless batches: epoch after epoch, each with its own shuffle.
    let mut batches = (0..).flat_map(|epoch| data.batches(batch, Some((0, epoch))));
    let mut run = |n: usize, net: &mut gstick_nn::Network| -> Result<()> {
        for _ in 0..n {
            let (x, y) = batches.next().context("no batch")??;
            let loss = cross_entropy(&exec.forward1(net, &x)?, &y)?;
            let grads = loss.backward()?;
            opt.step(&named_params(net), &grads, 1e-3)?;
        }
        Ok(())
    };
    run(20, &mut net)?;
    let t = Instant::now();
    run(steps, &mut net)?;
    Ok((steps * batch) as f64 / t.elapsed().as_secs_f64())
}

fn torch_images_per_s(args: &BenchArgs) -> Result<f64> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/lenet5_torch.py");
    let v = python_json(
        Command::new(&args.python)
            .arg(&script)
            .arg(args.batch_size.to_string())
            .arg(args.steps.to_string())
            .env("GSTICK_ASSETS", gstick_data::assets_dir()),
        &args.python,
    )
    .context("the PyTorch baseline")?;
    v["images_per_s"]
        .as_f64()
        .context("no images_per_s in the PyTorch result")
}
