//! `gstick quantize`: PTQ of a causal LM (weight-only, or with dynamic int8 activations) through the library's `Quantizer` (the
//! layer-wise pipeline, one decoder layer resident), exported as a Golden Stick directory, the
//! Hugging Face GPTQ format or GGUF, with an optional before/after perplexity check: the float
//! model evaluated layer by layer, the export loaded back onto the integer kernels.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use gstick::memory::peak_resident_bytes;
use gstick::ptq::config::WeightAlgo;
use gstick::ptq::records::LayerTiming;
use gstick::ptq::{PipelineOptions, PtqConfig, Recipe};
use gstick::{Calibration, Format, Quantizer, Source};

#[derive(Clone, Copy, ValueEnum)]
pub enum Algo {
    Rtn,
    Gptq,
    Awq,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ActArg {
    /// Int8 per token, scales computed at run time (dynamic A8W8; needs --bits 8, per channel).
    PerToken,
    /// Int8 per tensor, asymmetric, scale and zero point from the calibration windows (static
    /// A8W8; needs --bits 8, per channel, and --calib).
    PerTensor,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KvArg {
    /// Int8 rows with a scale each, computed as they are cached (dynamic C8).
    PerToken,
    /// Int8 with one calibrated scale per channel of the keys and of the values (static C8;
    /// needs --calib).
    PerChannel,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PruneArg {
    /// The smallest |w| of each matrix (or of each N:M run).
    Magnitude,
    /// The smallest |w| x input norm of each row (or run); needs --calib.
    Wanda,
    /// OBS pruning with error compensation, quantizing in the same pass; needs --calib.
    Sparsegpt,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// Golden Stick directory (msModelSlim names + quantization_description.json).
    Gs,
    /// Hugging Face GPTQ format (qweight/qzeros/scales/g_idx).
    Gptq,
    /// GGUF with Q8_0 / Q4_0 / Q4_1 tensors (needs a GGUF input for its metadata).
    Gguf,
    /// compressed-tensors (int-quantized / pack-quantized), as vLLM and llm-compressor.
    CompressedTensors,
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
    /// Also quantize each Linear's input: `per-token` is dynamic A8W8 (int8 activations, scale
    /// per token at run time), `per-tensor` static A8W8 (one calibrated scale and zero point per
    /// Linear); without it the model is weight-only.
    #[arg(long, value_enum, conflicts_with = "recipe")]
    pub act: Option<ActArg>,
    /// Store each attention's KV cache in int8 (keys after RoPE, and values); gs format only.
    #[arg(long, value_enum, conflicts_with = "recipe")]
    pub kv: Option<KvArg>,
    /// GPTQ: process columns by decreasing Hessian diagonal, with static groups (the default;
    /// `--act-order false` for the column order).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", conflicts_with = "recipe")]
    pub act_order: Option<bool>,
    /// GPTQ: dampening as a fraction of the mean Hessian diagonal (default 0.01).
    #[arg(long, conflicts_with = "recipe")]
    pub damp: Option<f64>,
    /// GPTQ: the least share of the Hessian that the calibration windows' first positions (the
    /// attention sink) get; 0 is plain GPTQ.
    #[arg(long, conflicts_with = "recipe")]
    pub sink_share: Option<f64>,
    /// Prune every Linear's weights (zeros in the --pattern) before or while quantizing them.
    #[arg(long, value_enum, conflicts_with = "recipe")]
    pub prune: Option<PruneArg>,
    /// With --prune: the share of weights set to zero (unstructured).
    #[arg(long, requires = "prune", conflicts_with = "recipe")]
    pub sparsity: Option<f64>,
    /// With --prune: `unstructured` (the default) or N:M, say 2:4 (at least N zeros in every M
    /// consecutive inputs of a row).
    #[arg(long, requires = "prune", conflicts_with = "recipe")]
    pub pattern: Option<String>,
    /// With --prune: keep the weights that survive in f32 (prune only, no quantization).
    #[arg(long, requires = "prune", conflicts_with = "recipe")]
    pub float_weights: bool,
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
    /// --group and --asym (--act-order, --damp and --sink-share are refused beside it: set
    /// `gptq` in the recipe).
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
    /// Evaluate perplexity on this text before quantizing and on the exported model after;
    /// repeat for several texts (say the calibration domain and another one).
    #[arg(long)]
    pub eval: Vec<PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub eval_windows: usize,
    #[arg(long, default_value_t = 2048)]
    pub eval_seqlen: usize,
    /// Print one JSON object with the results on stdout.
    #[arg(long)]
    pub json: bool,
}

fn config_from_flags(args: &QuantizeArgs) -> Result<PtqConfig> {
    let algo = match args.algo {
        Algo::Rtn => WeightAlgo::Rtn,
        Algo::Gptq => WeightAlgo::Gptq,
        Algo::Awq => WeightAlgo::Awq,
    };
    let mut c = PtqConfig::weight_only(algo, args.bits, args.group)
        .with_context(|| format!("--bits {} --group {}", args.bits, args.group))?;
    c.weight_symmetric = !args.asym;
    // GPTQ's settings would do nothing for another algorithm: refuse them rather than ignore.
    let gptq_flags = [
        ("--act-order", args.act_order.is_some()),
        ("--damp", args.damp.is_some()),
        ("--sink-share", args.sink_share.is_some()),
    ];
    if !matches!(args.algo, Algo::Gptq) {
        if let Some((flag, _)) = gptq_flags.iter().find(|(_, given)| *given) {
            bail!("{flag} is a GPTQ setting; it needs --algo gptq");
        }
    }
    if let Some(d) = args.damp {
        c.gptq.damp_percent = d;
    }
    if let Some(w) = args.sink_share {
        c.gptq.sink_share = w;
    }
    if let Some(act) = args.act {
        use gstick::ptq::config::QuantGranularity;
        c.act_quant_dtype = Some(gstick::ptq::config::QuantDtype::Int8);
        c.act_quant_granularity = match act {
            ActArg::PerToken => QuantGranularity::PerToken,
            ActArg::PerTensor => QuantGranularity::PerTensor,
        };
    }
    if let Some(method) = args.prune {
        use gstick::ptq::config::PruneMethod;
        c.prune.method = match method {
            PruneArg::Magnitude => PruneMethod::Magnitude,
            PruneArg::Wanda => PruneMethod::Wanda,
            PruneArg::Sparsegpt => PruneMethod::Sparsegpt,
        };
        if let Some(p) = &args.pattern {
            c.prune.pattern = gstick::ptq::sparsity::SparsityPattern::try_from(p.clone())
                .map_err(|e| anyhow::anyhow!("--pattern: {e}"))?;
        }
        if let Some(s) = args.sparsity {
            if c.prune.pattern != gstick::ptq::sparsity::SparsityPattern::Unstructured {
                bail!(
                    "--sparsity is for unstructured pruning; --pattern {} fixes its own share",
                    c.prune.pattern
                );
            }
            c.prune.sparsity = s;
        }
        if args.float_weights {
            if args.bits != 8 || args.group != 0 || args.asym || !matches!(args.algo, Algo::Rtn) {
                bail!("--float-weights keeps the weights in f32: it takes no --bits, --group, --asym or --algo");
            }
            c.weight_quant_dtype = None;
        }
    }
    if let Some(kv) = args.kv {
        use gstick::ptq::config::QuantGranularity;
        c.kvcache_quant_dtype = Some(gstick::ptq::config::QuantDtype::Int8);
        c.kvcache_quant_granularity = match kv {
            KvArg::PerToken => QuantGranularity::PerToken,
            KvArg::PerChannel => QuantGranularity::PerChannel,
        };
    }
    c.validate()
        .context("the flags ask for an impossible combination")?;
    Ok(match args.act_order {
        Some(on) => c.with_act_order(on),
        None => c,
    })
}

/// Perplexity on each evaluation text: `eval` evaluates token ids.
fn ppl_of(
    texts: &[PathBuf],
    source: &Source,
    mut eval: impl FnMut(&[u32]) -> gstick::nn::Result<gstick::eval::PplReport>,
) -> Result<Vec<f64>> {
    texts
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let ids = source.tokenizer.encode(&text)?;
            Ok(eval(&ids)
                .with_context(|| format!("perplexity on {}", path.display()))?
                .ppl)
        })
        .collect()
}

pub fn quantize(args: QuantizeArgs) -> Result<()> {
    let started = Instant::now();
    if args.out.exists() {
        bail!(
            "{} already exists; choose a new output directory",
            args.out.display()
        );
    }
    let recipe = match &args.recipe {
        Some(path) => Recipe::load(path)?,
        None => Recipe::from(config_from_flags(&args)?),
    };
    let format = match args.format {
        FormatArg::Gs => Format::Gs,
        FormatArg::Gptq => Format::Gptq,
        FormatArg::Gguf => Format::Gguf,
        FormatArg::CompressedTensors => Format::CompressedTensors,
    };
    // Everything that can be refused is refused before the run: the recipe, the source.
    let quantizer = Quantizer::new(recipe)?.with_options(PipelineOptions {
        feed_quantized: !args.fp_inputs,
        ..PipelineOptions::default()
    });
    let source = Source::open(&args.model)?;
    if format == Format::Gguf && source.gguf().is_none() {
        bail!(
            "--format gguf copies the tokenizer metadata from a GGUF input; {} is a directory",
            args.model.display()
        );
    }
    let calibration = match &args.calib {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Calibration::from_text(&source, &text, args.nsamples, args.seqlen, args.seed)?
        }
        None if quantizer.recipe().needs_calibration() => {
            bail!("--calib is required for GPTQ, AWQ, SmoothQuant, OSL, Wanda, SparseGPT and static activation or KV-cache scales (they learn from calibration data)")
        }
        // RTN needs no data; one short window still measures each layer's output error.
        None => Calibration::probe(&source)?,
    };
    let network = quantizer.recipe().network.summary();
    let layers = source.config.layers;
    eprintln!(
        "{}: {layers} layers, {network} ({} windows x {} tokens)",
        args.model.display(),
        calibration.windows.len(),
        calibration.seqlen()
    );
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
    let mut calibrated = quantizer
        .calibrate(&source, &calibration)
        .on_layer(|rec| match &bar {
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
        });
    if !args.eval.is_empty() {
        calibrated = calibrated.with_evaluation(args.eval_windows, args.eval_seqlen);
    }
    eprintln!("{}", calibrated.preflight()?.describe());
    // The float model's perplexity first, one layer resident at a time, while nothing else is.
    let fp32_ppl = ppl_of(&args.eval, &source, |ids| {
        gstick::eval::perplexity_layerwise(
            &mut source
                .layerwise()
                .map_err(|e| gstick::nn::Error::Config(e.to_string()))?,
            ids,
            args.eval_seqlen,
            Some(args.eval_windows),
            |_, _| {},
        )
    })?;
    let t = Instant::now();
    let quantized = calibrated.run()?;
    let calibration_seconds = t.elapsed().as_secs_f64();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    eprint!("{}", quantized.summary_table());

    let export = quantized.save(format, &args.out)?;
    for note in &export.notes {
        eprintln!("note: {note}");
    }
    let plan = quantized.plan.clone();
    let (model_layers, linears) = (quantized.layers.clone(), quantized.model.linears.len());
    drop(quantized);
    let quant_ppl = if args.eval.is_empty() {
        Vec::new()
    } else {
        // What a user of the output gets: the export loaded back, on the integer kernels.
        let lm = match format {
            Format::Gs | Format::Gptq | Format::CompressedTensors => gstick::load(&args.out)?,
            Format::Gguf => gstick::load_gguf_on_kernels(&args.out.join("model.gguf"))?,
        };
        if let Some(d) = &lm.deploy {
            eprintln!("{}", crate::cli::llm_cmd::deploy_line(d));
        }
        ppl_of(&args.eval, &source, |ids| {
            gstick::eval::perplexity(
                &lm.net,
                ids,
                args.eval_seqlen,
                Some(args.eval_windows),
                |_, _| {},
            )
        })?
    };
    let evaluations: Vec<serde_json::Value> = args
        .eval
        .iter()
        .zip(fp32_ppl.iter().zip(&quant_ppl))
        .map(|(text, (a, b))| {
            serde_json::json!({"text": text.display().to_string(), "fp32_ppl": a, "quant_ppl": b})
        })
        .collect();

    let timing = LayerTiming::total_of(&model_layers);
    let result = serde_json::json!({
        "model": args.model.display().to_string(),
        "config": network,
        "format": format.name(),
        "out": args.out.display().to_string(),
        "calibration": {"windows": calibration.windows.len(), "seqlen": calibration.seqlen()},
        "quantized_linears": linears,
        "seconds": {"pipeline": calibration_seconds, "forward": timing.forward, "statistics": timing.statistics,
                    "search": timing.search, "quantize": timing.quantize, "total": started.elapsed().as_secs_f64()},
        "memory": {"plan": plan, "peak_rss": peak_resident_bytes()},
        "peak_rss_mib": peak_resident_bytes().map(|b| b as f64 / 1048576.0),
        "fp32_ppl": fp32_ppl.first(),
        "quant_ppl": quant_ppl.first(),
        "evaluations": evaluations,
        "export": export,
        "layers": model_layers,
    });
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&result)?;
        gstick::nn::atomic::write_bytes(path, text.as_bytes())?;
    }
    if !quant_ppl.is_empty() {
        let names: Vec<String> = args
            .eval
            .iter()
            .map(|p| {
                p.file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned())
            })
            .collect();
        let row = |ppl: &[f64], base: Option<&[f64]>| -> String {
            ppl.iter()
                .enumerate()
                .map(|(i, p)| match base {
                    Some(b) => format!(" {p:.4} ({:+.2}%) |", (p / b[i] - 1.0) * 100.0),
                    None => format!(" {p:.4} |"),
                })
                .collect()
        };
        eprintln!(
            "\n| model |{} \n|---|{}\n| fp32 |{}\n| {network} |{}",
            names.iter().map(|n| format!(" {n} |")).collect::<String>(),
            "---|".repeat(names.len()),
            row(&fp32_ppl, None),
            row(&quant_ppl, Some(&fp32_ppl)),
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
