//! `gstick bench gptq`: the time of our GPTQ pipeline against llm-compressor's GPTQ on the same
//! model and the same calibration windows, in the same run (through
//! `bench/gptq_llmcompressor.py` when a Python with llmcompressor is given).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use gstick::ptq::config::WeightAlgo;
use gstick::ptq::PtqConfig;
use gstick::{Calibration, Quantizer, Source};

use crate::cli::bench::{cpu_name, python_json};

#[derive(Args)]
pub struct GptqBenchArgs {
    /// A GGUF file or float Hugging Face directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Calibration text (windows are drawn from it as `quantize` draws them).
    #[arg(long)]
    pub calib: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub nsamples: usize,
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    #[arg(long, default_value_t = 64)]
    pub group: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Python interpreter with the llmcompressor package.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip the llm-compressor baseline.
    #[arg(long)]
    pub no_llm_compressor: bool,
}

pub fn run(args: GptqBenchArgs) -> Result<()> {
    let source = Source::open(&args.model)?;
    let text = std::fs::read_to_string(&args.calib)
        .with_context(|| format!("reading {}", args.calib.display()))?;
    let calib = Calibration::from_text(&source, &text, args.nsamples, args.seqlen, args.seed)?;
    // The same GPTQ as `gstick quantize --algo gptq` with these bits and group.
    let config = PtqConfig::weight_only(WeightAlgo::Gptq, args.bits, args.group)?;
    let started = Instant::now();
    Quantizer::new(config)?.calibrate(&source, &calib).run()?;
    let ours = started.elapsed().as_secs_f64();
    eprintln!("gstick GPTQ: {ours:.1} s");
    let mut report = serde_json::json!({
        "bench": "gptq",
        "cpu": cpu_name(),
        "threads": gstick_nn::kernels::kernel_threads(),
        "windows": args.nsamples,
        "seqlen": args.seqlen,
        "bits": args.bits,
        "group": args.group,
        "gstick_seconds": ours,
    });
    if !args.no_llm_compressor {
        match llm_compressor_seconds(&args, &calib.windows) {
            Ok(theirs) => {
                let seconds = theirs["seconds"].as_f64().unwrap_or(f64::NAN);
                report["llm_compressor_seconds"] = seconds.into();
                report["speedup_over_llm_compressor"] = (seconds / ours).into();
                report["llm_compressor"] = theirs;
            }
            Err(e) => eprintln!("llm-compressor baseline skipped: {e:#}"),
        }
    }
    println!("{report}");
    Ok(())
}

/// Writes the float model as a Hugging Face directory and the windows as JSON into a temporary
/// directory, and times llm-compressor's GPTQ on them.
fn llm_compressor_seconds(args: &GptqBenchArgs, windows: &[Vec<u32>]) -> Result<serde_json::Value> {
    let tmp = std::env::temp_dir().join(format!("gstick-gptq-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = (|| {
        let (net, config, tokenizer) = crate::cli::llm_cmd::load_lm(&args.model)?;
        let hf = tmp.join("model");
        gstick_models::hf_export::export_hf(&net, &config, &tokenizer, &hf)?;
        drop(net);
        let windows_path = tmp.join("windows.json");
        std::fs::write(&windows_path, serde_json::to_string(windows)?)?;
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/gptq_llmcompressor.py");
        python_json(
            Command::new(&args.python)
                .arg(&script)
                .arg(&hf)
                .arg(&windows_path)
                .arg(args.bits.to_string())
                .arg(args.group.to_string())
                .arg(gstick_nn::kernels::kernel_threads().to_string()),
            &args.python,
        )
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
