//! `gstick eval ppl`, `gstick generate` and `gstick convert`: causal language models.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use gstick_models::bert::load_bert_embedder;
use gstick_models::generate::{generate_with, GraphLm, Sampling, TokenLogits};
use gstick_models::hf::HfCheckpoint;
use gstick_models::hf_export::export_hf;
use gstick_models::llama::LlamaConfig;
use gstick_models::tokenizer::{tokenizer_from_hf, TextTokenizer};
use gstick_nn::Network;

#[derive(Args)]
pub struct PplArgs {
    /// A GGUF file (Llama, SmolLM2, Qwen2).
    #[arg(long)]
    pub model: PathBuf,
    /// Plain-text evaluation file (the asset script writes wiki/eval.txt).
    #[arg(long)]
    pub text: PathBuf,
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    /// Number of windows (default: every whole window of the text).
    #[arg(long)]
    pub windows: Option<usize>,
    #[arg(long)]
    pub json: bool,
    /// Arithmetic of the float Linear layers: f32, or bf16 operands with f32 sums (AMX tiles
    /// where the CPU has them).
    #[arg(long, value_enum, default_value_t = ComputeArg::F32)]
    pub compute: ComputeArg,
}

/// `--compute`: the arithmetic of inference matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ComputeArg {
    F32,
    Bf16,
}

impl ComputeArg {
    /// The flag's value as the user writes it.
    pub fn name(self) -> &'static str {
        match self {
            ComputeArg::F32 => "f32",
            ComputeArg::Bf16 => "bf16",
        }
    }

    /// Makes this the process's arithmetic and says where it runs.
    pub fn apply(self) -> &'static str {
        let compute = match self {
            ComputeArg::F32 => gstick_nn::kernels::Compute::F32,
            ComputeArg::Bf16 => gstick_nn::kernels::Compute::Bf16,
        };
        gstick_nn::kernels::set_compute(compute);
        compute.engine()
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Recompute the whole sequence for every token instead of using the KV cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// Loads a causal LM and its tokenizer (see `gstick::load`), saying what runs on the kernels.
pub fn load_lm(path: &Path) -> Result<(Network, LlamaConfig, TextTokenizer)> {
    load_lm_computing(path, ComputeArg::F32)
}

/// [`load_lm`] for a run in `compute` arithmetic: bf16 applies to float Linear layers, so a
/// model whose Linears run on the integer kernels is refused rather than run in f32 unasked.
pub fn load_lm_computing(
    path: &Path,
    compute: ComputeArg,
) -> Result<(Network, LlamaConfig, TextTokenizer)> {
    let lm = gstick::load(path).with_context(|| format!("loading {}", path.display()))?;
    if let Some(d) = &lm.deploy {
        if compute != ComputeArg::F32 {
            bail!(
                "--compute {} applies to float models; {} runs {} Linear layers on the integer kernels (use --compute f32)",
                compute.name(),
                path.display(),
                d.layers
            );
        }
        eprintln!("{}", deploy_line(d));
    }
    Ok((lm.net, lm.config, lm.tokenizer))
}

/// What runs on the integer kernels, in one line.
pub fn deploy_line(d: &gstick::deploy::DeployReport) -> String {
    format!(
        "deploy: {} Linear layers on {} kernels, {:.1} MiB of weights instead of {:.1} MiB in f32",
        d.layers,
        gstick_quant::kernels::Isa::detect().name(),
        d.packed_bytes as f64 / 1048576.0,
        d.f32_bytes as f64 / 1048576.0
    )
}

#[derive(Args)]
pub struct ConvertArgs {
    /// A GGUF file or Hugging Face checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Output Hugging Face directory (config.json, f32 model.safetensors, tokenizer.json); must
    /// not exist yet.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn convert(args: ConvertArgs) -> Result<()> {
    let (net, config, tokenizer) = load_lm(&args.model)?;
    export_hf(&net, &config, &tokenizer, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

pub fn ppl(args: PplArgs) -> Result<()> {
    let engine = args.compute.apply();
    if args.compute != ComputeArg::F32 {
        eprintln!("compute: {engine}");
    }
    let (net, _, tokenizer) = load_lm_computing(&args.model, args.compute)?;
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let ids = tokenizer.encode(&text)?;
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| indicatif::ProgressBar::new(0));
    let report = gstick_eval::perplexity(&net, &ids, args.seqlen, args.windows, |done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["text_tokens"] = ids.len().into();
        v["compute"] = engine.into();
        println!("{v}");
    } else {
        println!(
            "perplexity {:.4} over {} windows of {} tokens ({:.1} s, {:.0} tokens/s)",
            report.ppl, report.windows, report.seqlen, report.seconds, report.tokens_per_s
        );
    }
    Ok(())
}

/// What generation runs on: the batch-1 decoder when the network is a plain Llama-family graph
/// and the KV cache is wanted, the graph executor otherwise (the reason is printed).
pub fn token_model(net: &Network, use_cache: bool) -> Box<dyn TokenLogits + '_> {
    if use_cache {
        match gstick_deploy::decoder::Decoder::new(net, 0) {
            Ok(decoder) => return Box::new(decoder),
            Err(e) => eprintln!("decoding through the graph executor: {e}"),
        }
    }
    Box::new(GraphLm::new(net, use_cache))
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let (net, _, tokenizer) = load_lm(&args.model)?;
    let prompt = tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let sampling = match args.temperature {
        None => Sampling::Greedy,
        Some(t) if t > 0.0 => Sampling::Temperature {
            temperature: t,
            seed: args.seed,
        },
        Some(t) => bail!("--temperature must be positive, got {t}"),
    };
    print!("{}", args.prompt);
    let mut out = std::io::stdout();
    let mut shown = String::new();
    let mut new_ids = Vec::new();
    let mut lm = token_model(&net, !args.no_cache);
    generate_with(
        lm.as_mut(),
        &prompt,
        args.max_tokens,
        sampling,
        tokenizer.eos,
        |id| {
            // Decode the whole continuation each time so multi-byte characters print whole.
            new_ids.push(id);
            if let Ok(text) = tokenizer.decode(&new_ids) {
                if let Some(fresh) = text.strip_prefix(shown.as_str()) {
                    print!("{fresh}");
                    let _ = out.flush();
                }
                shown = text;
            }
        },
    )?;
    println!();
    Ok(())
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Sentence-embedding model (a BERT checkpoint directory such as the MiniLM asset).
    #[arg(long)]
    pub model: PathBuf,
    /// Reference model to compare with.
    #[arg(long = "ref")]
    pub reference: PathBuf,
    /// Text file: one sentence per non-empty line.
    #[arg(long)]
    pub text: PathBuf,
    /// Quantize --model in memory with this recipe first (round to nearest, no calibration:
    /// weight-only or dynamic per-token A8W8, e.g. examples/recipes/w8a8_dynamic.yaml).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// Quantizes the encoder layers of `net` with `recipe` by RTN (the Linears inside its
/// sub-graphs; embeddings and pooling stay float). Recipes that need calibration or quantize
/// the KV cache are refused, naming why: an encoder has no cache, and this path has no data.
fn quantize_encoder(net: &mut Network, recipe: &Path) -> Result<Vec<String>> {
    let recipe = gstick::ptq::Recipe::load(recipe)?;
    if recipe.needs_calibration() {
        bail!(
            "the recipe ({}) needs calibration data: eval embed quantizes by round to nearest without calibration (GPTQ, AWQ, SmoothQuant, OSL and static activations are not available here)",
            recipe.network.summary()
        );
    }
    if recipe
        .configs()
        .any(|(_, c)| c.kvcache_quant_dtype.is_some())
    {
        bail!("kvcache_quant_dtype: an encoder keeps no KV cache; remove it from the recipe");
    }
    let reports = gstick::ptq::rtn::apply_rtn(net, &recipe.network, Some(&recipe.layers))?;
    let labels: Vec<String> = reports
        .into_iter()
        .filter(|r| r.summary != "NA")
        .map(|r| r.summary)
        .collect();
    if labels.is_empty() {
        bail!("the recipe quantized no Linear of the encoder");
    }
    Ok(labels)
}

/// `gstick eval embed`: mean and minimum cosine between two models' sentence embeddings.
pub fn embed(args: EmbedArgs) -> Result<()> {
    let (mut model, _) = load_bert_embedder(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let quantized = match &args.recipe {
        Some(recipe) => quantize_encoder(&mut model, recipe)
            .with_context(|| format!("quantizing with {}", recipe.display()))?,
        None => Vec::new(),
    };
    let (reference, _) = load_bert_embedder(&args.reference)
        .with_context(|| format!("loading {}", args.reference.display()))?;
    let tokenizer = tokenizer_from_hf(&HfCheckpoint::open(&args.reference)?)?;
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let sentences: Vec<Vec<u32>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| tokenizer.encode_with_special(l))
        .collect::<Result<_, _>>()?;
    let report = gstick_eval::embedding_fidelity(&model, &reference, &sentences)?;
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        if !quantized.is_empty() {
            v["quantized_linears"] = quantized.len().into();
            let mut kinds = quantized.clone();
            kinds.sort();
            kinds.dedup();
            v["quantization"] = kinds.into();
        }
        println!("{v}");
    } else {
        if !quantized.is_empty() {
            println!("{} Linears quantized ({})", quantized.len(), quantized[0]);
        }
        println!(
            "cosine to the reference over {} sentences: mean {:.6}, minimum {:.6}",
            report.sentences, report.mean_cosine, report.min_cosine
        );
    }
    Ok(())
}
