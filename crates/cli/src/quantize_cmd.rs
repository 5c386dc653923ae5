//! `gstick quantize`: weight-only PTQ of a causal LM through the layer-wise pipeline, exported
//! as a Golden Stick directory, the Hugging Face GPTQ format or GGUF, with an optional
//! before/after perplexity check of the exported model loaded back.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gstick_algo::export::{gguf::write_gguf, gs, hf_gptq, ExportReport, Format};
use gstick_algo::pipeline::{quantize_lm, summary_table, PipelineOptions, QuantizedLm};
use gstick_algo::ptq_config::{
    OutliersSuppression, PrecisionRecovery, QuantDtype, QuantGranularity,
};
use gstick_algo::{PtqConfig, Recipe};
use gstick_models::gguf::Gguf;
use gstick_models::hf::HfCheckpoint;
use gstick_models::layerwise::{calibration_windows, LayerwiseLm};
use gstick_models::llama::{GgufWeights, LlamaConfig, WeightSource};
use gstick_models::tokenizer::{tokenizer_from_gguf, tokenizer_from_hf, TextTokenizer};
use gstick_nn::Network;

use crate::llm_cmd::load_lm;

#[derive(Clone, Copy, ValueEnum)]
pub enum Algo {
    Rtn,
    Gptq,
    Awq,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// Golden Stick directory (msModelSlim names + quantization_description.json).
    Gs,
    /// Hugging Face GPTQ format (qweight/qzeros/scales/g_idx).
    Gptq,
    /// GGUF with Q8_0 / Q4_0 / Q4_1 tensors (needs a GGUF input for its metadata).
    Gguf,
}

#[derive(Args)]
pub struct QuantizeArgs {
    /// A GGUF file or Hugging Face checkpoint directory (Llama, SmolLM2, Qwen2, Mistral).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value = "rtn")]
    pub algo: Algo,
    /// Weight bits: 8, 4, 3 or 2.
    #[arg(long, default_value_t = 8)]
    pub bits: u32,
    /// Input channels per group (32, 64, 128, 256); 0 for per-channel.
    #[arg(long, default_value_t = 0)]
    pub group: usize,
    /// Asymmetric weights (a zero point per group).
    #[arg(long)]
    pub asym: bool,
    /// GPTQ: process columns by decreasing Hessian diagonal (with static groups).
    #[arg(long)]
    pub act_order: bool,
    /// GPTQ: dampening as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01)]
    pub damp: f64,
    /// Calibration text (the asset script writes wiki/calib.txt).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    pub nsamples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A TOML or YAML (.yaml/.yml) recipe (network configuration and layer policies); replaces --algo, --bits,
    /// --group and --asym.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "gs")]
    pub format: FormatArg,
    /// Output directory; must not exist.
    #[arg(long)]
    pub out: PathBuf,
    /// Write the per-layer JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Feed each layer the float outputs of the previous one instead of the quantized ones.
    #[arg(long)]
    pub fp_inputs: bool,
    /// Evaluate perplexity on this text before quantizing and on the exported model after.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub eval_windows: usize,
    #[arg(long, default_value_t = 2048)]
    pub eval_seqlen: usize,
    /// Print one JSON object with the results on stdout.
    #[arg(long)]
    pub json: bool,
}

fn config_from_flags(args: &QuantizeArgs) -> Result<PtqConfig> {
    let dtype = match args.bits {
        8 => QuantDtype::Int8,
        4 => QuantDtype::Int4,
        3 => QuantDtype::Int3,
        2 => QuantDtype::Int2,
        b => bail!("--bits {b} is not supported (8, 4, 3 or 2)"),
    };
    let mut c = PtqConfig {
        weight_quant_dtype: Some(dtype),
        weight_symmetric: !args.asym,
        ..PtqConfig::default()
    };
    if args.group > 0 {
        c.weight_quant_granularity = QuantGranularity::PerGroup;
        c.group_size = args.group;
    }
    match args.algo {
        Algo::Rtn => {}
        Algo::Gptq => {
            c.precision_recovery = PrecisionRecovery::Gptq;
            c.gptq.damp_percent = args.damp;
            c.gptq.desc_act = args.act_order;
            c.gptq.static_groups = args.act_order && args.group > 0;
        }
        Algo::Awq => c.outliers_suppression = OutliersSuppression::Awq,
    }
    Ok(c)
}

/// The model source for the layer-wise pipeline.
enum Source {
    Gguf(Gguf),
    Hf(PathBuf),
}

fn tokenizer_and_config(src: &Source) -> Result<(TextTokenizer, LlamaConfig)> {
    Ok(match src {
        Source::Gguf(g) => (tokenizer_from_gguf(g)?, LlamaConfig::from_gguf(g)?),
        Source::Hf(dir) => {
            let ck = HfCheckpoint::open(dir)?;
            (tokenizer_from_hf(&ck)?, LlamaConfig::from_hf(&ck)?)
        }
    })
}

fn run_pipeline<S: WeightSource>(
    lm: &mut LayerwiseLm<S>,
    windows: &[Vec<u32>],
    config: &PtqConfig,
    recipe: Option<&Recipe>,
    options: &PipelineOptions,
) -> Result<QuantizedLm> {
    let inputs = lm.embed(windows)?;
    let layers = lm.config.layers;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(layers as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "quantizing {bar:30} layer {pos}/{len} [{elapsed} < {eta}] {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let started = Instant::now();
    let q = quantize_lm(
        lm,
        inputs,
        config,
        recipe.map(|r| &r.layers),
        options,
        &mut |rec| match &bar {
            Some(b) => {
                b.set_message(format!("layer error {:.2e}", rec.relative_output_error));
                b.inc(1);
            }
            None => eprintln!(
                "{}",
                serde_json::json!({"layer": rec.index, "of": layers,
                    "relative_output_error": rec.relative_output_error,
                    "seconds": rec.timing.total,
                    "elapsed": started.elapsed().as_secs_f64()})
            ),
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(q)
}

fn ppl_of(
    net: &Network,
    tokenizer: &TextTokenizer,
    text: &Path,
    args: &QuantizeArgs,
) -> Result<f64> {
    let text =
        std::fs::read_to_string(text).with_context(|| format!("reading {}", text.display()))?;
    let ids = tokenizer.encode(&text)?;
    let r = gstick_eval::perplexity(
        net,
        &ids,
        args.eval_seqlen,
        Some(args.eval_windows),
        |_, _| {},
    )?;
    Ok(r.ppl)
}

pub fn quantize(args: QuantizeArgs) -> Result<()> {
    let started = Instant::now();
    if args.out.exists() {
        bail!(
            "{} already exists; choose a new output directory",
            args.out.display()
        );
    }
    let (config, recipe) = match &args.recipe {
        Some(path) => {
            let r = Recipe::load(path)?;
            (r.network.clone(), Some(r))
        }
        None => (config_from_flags(&args)?, None),
    };
    config.validate()?;
    let format = match args.format {
        FormatArg::Gs => Format::Gs,
        FormatArg::Gptq => Format::Gptq,
        FormatArg::Gguf => Format::Gguf,
    };
    let source = if args.model.is_dir() {
        Source::Hf(args.model.clone())
    } else {
        Source::Gguf(Gguf::open(&args.model)?)
    };
    if format == Format::Gguf && !matches!(source, Source::Gguf(_)) {
        bail!(
            "--format gguf copies the tokenizer metadata from a GGUF input; {} is a directory",
            args.model.display()
        );
    }
    let needs_calibration = config.precision_recovery == PrecisionRecovery::Gptq
        || config.outliers_suppression == OutliersSuppression::Awq
        || recipe.is_some();
    let (tokenizer, lm_config) = tokenizer_and_config(&source)?;
    let windows = match &args.calib {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            calibration_windows(
                &tokenizer.encode(&text)?,
                args.nsamples,
                args.seqlen,
                args.seed,
            )?
        }
        None if needs_calibration => bail!("--calib is required for GPTQ and AWQ"),
        // RTN needs no data; one short window still measures each layer's output error.
        None => vec![tokenizer.encode("The quick brown fox jumps over the lazy dog.")?],
    };
    eprintln!(
        "{}: {} layers, {} ({} windows x {} tokens)",
        args.model.display(),
        lm_config.layers,
        config.summary(),
        windows.len(),
        windows.first().map_or(0, |w| w.len())
    );
    let options = PipelineOptions {
        feed_quantized: !args.fp_inputs,
        ..PipelineOptions::default()
    };
    let t = Instant::now();
    let q = match &source {
        Source::Gguf(g) => {
            let permuted_qk = g.require_str("general.architecture")? == "llama";
            let src = GgufWeights {
                gguf: g,
                config: lm_config.clone(),
                permuted_qk,
            };
            let mut lm = LayerwiseLm::new(lm_config.clone(), src)?;
            run_pipeline(&mut lm, &windows, &config, recipe.as_ref(), &options)?
        }
        Source::Hf(dir) => {
            let mut lm = LayerwiseLm::new(lm_config.clone(), HfCheckpoint::open(dir)?)?;
            run_pipeline(&mut lm, &windows, &config, recipe.as_ref(), &options)?
        }
    };
    let calibration_seconds = t.elapsed().as_secs_f64();
    eprint!("{}", summary_table(&q.layers));

    let (float, _, _) = load_lm(&args.model)?;
    let fp32_ppl = match &args.eval {
        Some(text) => Some(ppl_of(&float, &tokenizer, text, &args)?),
        None => None,
    };
    let export: ExportReport = match (&source, format) {
        (_, Format::Gs) => gs::write_gs(&float, &lm_config, &tokenizer, &q, &args.out)?,
        (_, Format::Gptq) => hf_gptq::write_gptq(&float, &lm_config, &tokenizer, &q, &args.out)?,
        (Source::Gguf(g), Format::Gguf) => write_gguf(g, &float, &lm_config, &q, &args.out)?,
        (Source::Hf(_), Format::Gguf) => unreachable!("refused above"),
    };
    drop(float);
    for note in &export.notes {
        eprintln!("note: {note}");
    }
    let quant_ppl = match &args.eval {
        Some(text) => {
            // What a user of the output gets: the gs and GPTQ directories on the integer kernels.
            let (net, _, _) = match format {
                Format::Gs | Format::Gptq => load_lm(&args.out)?,
                Format::Gguf => load_lm(&args.out.join("model.gguf"))?,
            };
            Some(ppl_of(&net, &tokenizer, text, &args)?)
        }
        None => None,
    };

    let timing = q.layers.iter().fold([0.0f64; 4], |mut a, l| {
        a[0] += l.timing.forward;
        a[1] += l.timing.statistics;
        a[2] += l.timing.search;
        a[3] += l.timing.quantize;
        a
    });
    let result = serde_json::json!({
        "model": args.model.display().to_string(),
        "config": config.summary(),
        "format": format!("{:?}", format).to_lowercase(),
        "out": args.out.display().to_string(),
        "calibration": {"windows": windows.len(), "seqlen": windows.first().map_or(0, |w| w.len())},
        "seconds": {"pipeline": calibration_seconds, "forward": timing[0], "statistics": timing[1],
                    "search": timing[2], "quantize": timing[3], "total": started.elapsed().as_secs_f64()},
        "peak_rss_mib": crate::bench::peak_rss_mib(),
        "fp32_ppl": fp32_ppl,
        "quant_ppl": quant_ppl,
        "export": export,
        "layers": q.layers,
    });
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&result)?;
        gstick_nn::atomic::write_bytes(path, text.as_bytes())?;
    }
    if let (Some(a), Some(b)) = (fp32_ppl, quant_ppl) {
        eprintln!(
            "\n| model | perplexity |\n|---|---|\n| fp32 | {a:.4} |\n| {} | {b:.4} ({:+.2}%) |",
            config.summary(),
            (b / a - 1.0) * 100.0
        );
    }
    eprintln!(
        "wrote {} in {:.1} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    if args.json {
        let mut brief = result.clone();
        brief.as_object_mut().map(|m| m.remove("layers"));
        println!("{brief}");
    }
    Ok(())
}
