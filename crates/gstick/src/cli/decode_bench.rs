//! `gstick bench decode` and `gstick bench prefill`: batch-1 generation speed on the decoder and
//! prompt-processing speed, each against llama.cpp on the same model and token ids in the same
//! run (through `bench/llama_cpp_speed.py` when a Python with llama-cpp-python is given).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use gstick_deploy::decoder::Decoder;
use gstick_models::generate::{generate_with, GraphLm, Sampling, TokenLogits};

use crate::cli::bench::{cpu_name, python_json};

/// A 16-token prompt (SmolLM2's tokenizer), the length the decode comparison is specified at.
const PROMPT: &str =
    "The history of the printing press begins in the fifteenth century, when a goldsmith";

#[derive(Args)]
pub struct DecodeBenchArgs {
    /// GGUF file or Hugging Face directory.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value = PROMPT)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Weights to decode with, comma-separated: fp32, w8 (RTN per-channel) and w4 (RTN group 64),
    /// the quantized ones on the deploy kernels.
    #[arg(long, value_delimiter = ',', default_value = "fp32,w8,w4")]
    pub weights: Vec<DecodeWeights>,
    /// The LM head of the quantized variants: int8 per channel (as llama.cpp quantizes it) or
    /// kept f32.
    #[arg(long, value_enum, default_value = "int8")]
    pub head: HeadWeights,
    /// Also time the graph executor's decode with the KV cache (the path before the decoder).
    #[arg(long)]
    pub executor: bool,
    #[command(flatten)]
    pub llama: LlamaCppArgs,
}

#[derive(Args)]
pub struct PrefillBenchArgs {
    /// A GGUF file (llama.cpp reads the same one).
    #[arg(long)]
    pub model: PathBuf,
    /// Text the prompt's token ids are taken from (its first `tokens` ids).
    #[arg(long)]
    pub text: PathBuf,
    #[arg(long, default_value_t = 512)]
    pub tokens: usize,
    /// Timed repeats; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Also time the network body (every layer, no head) in f32 and as dynamic A8W8 (RTN int8
    /// weights per channel, int8 activations per token, on the int8 x int8 kernels) on the
    /// executor, and report the ratio.
    #[arg(long)]
    pub a8w8: bool,
    #[command(flatten)]
    pub llama: LlamaCppArgs,
}

#[derive(Args)]
pub struct LlamaCppArgs {
    /// Python interpreter with the llama-cpp-python package (its variants are made once under
    /// the asset cache, in llama-cpp/).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip the llama.cpp baseline.
    #[arg(long)]
    pub no_llama_cpp: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DecodeWeights {
    Fp32,
    W8,
    W4,
}

impl DecodeWeights {
    fn key(self) -> &'static str {
        match self {
            DecodeWeights::Fp32 => "fp32",
            DecodeWeights::W8 => "w8",
            DecodeWeights::W4 => "w4",
        }
    }

    /// The llama.cpp variant it is compared with.
    fn llama_cpp(self) -> &'static str {
        match self {
            DecodeWeights::Fp32 => "f32",
            DecodeWeights::W8 => "q8_0",
            DecodeWeights::W4 => "q4_0",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadWeights {
    Int8,
    F32,
}

/// Tokens/s of greedy decoding from the first generated token on (the prompt pass not counted).
fn decode_rate(lm: &mut dyn TokenLogits, prompt: &[u32], tokens: usize) -> Result<f64> {
    let mut first: Option<Instant> = None;
    let out = generate_with(lm, prompt, tokens, Sampling::Greedy, None, |_| {
        first.get_or_insert_with(Instant::now);
    })?;
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(out.len().saturating_sub(1) as f64 / seconds.max(1e-9))
}

/// The network with its Linears quantized as `weights` asks (RTN) and installed on the deploy
/// kernels; reports the packed sizes into `report`.
fn variant(
    net: &gstick_nn::Network,
    weights: DecodeWeights,
    head: HeadWeights,
    report: &mut serde_json::Value,
) -> Result<gstick_nn::Network> {
    use gstick::ptq::config::WeightAlgo;
    use gstick::ptq::PtqConfig;
    let config = match weights {
        DecodeWeights::Fp32 => return Ok(net.clone()),
        DecodeWeights::W8 => PtqConfig::default(),
        DecodeWeights::W4 => PtqConfig::weight_only(WeightAlgo::Rtn, 4, 64)?,
    };
    let key = weights.key();
    let mut fake = net.clone();
    gstick::ptq::rtn::apply_rtn(&mut fake, &config, None)?;
    let model = gstick::ptq::fake_quant_linear::quantized_model(&fake);
    let mut variant = net.clone();
    let d = gstick::deploy::install(&mut variant, &model)?;
    report[format!("{key}_decoder_weight_mib")] = (d.packed_bytes as f64 / 1048576.0).into();
    if head == HeadWeights::Int8 {
        let h = gstick::deploy::install_packed(&mut variant, int8_head(net)?)?;
        report[format!("{key}_head_weight_mib")] = (h.packed_bytes as f64 / 1048576.0).into();
    }
    Ok(variant)
}

pub fn decode(args: DecodeBenchArgs) -> Result<()> {
    let (net, _, tokenizer) = crate::cli::llm_cmd::load_lm(&args.model)?;
    let prompt = tokenizer.encode(&args.prompt)?;
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
    let mut report = serde_json::json!({
        "bench": "llm-greedy-decode",
        "cpu": cpu_name(),
        "prompt_tokens": prompt.len(),
        "tokens": args.tokens,
        "threads": gstick_nn::kernels::kernel_threads(),
        "int8_dot": gstick_quant::kernels::q8_dot::DotIsa::detect().name(),
    });
    for &weights in &args.weights {
        let variant = variant(&net, weights, args.head, &mut report)?;
        let key = weights.key();
        let mut decoder = Decoder::new(&variant, 0)?;
        let rate = decode_rate(&mut decoder, &prompt, args.tokens)?;
        drop(decoder);
        eprintln!("{key}: {rate:.1} tokens/s");
        report[format!("{key}_tokens_per_s")] = rate.into();
        if args.executor {
            let executor = decode_rate(&mut GraphLm::new(&variant, true), &prompt, args.tokens)?;
            report[format!("{key}_executor_tokens_per_s")] = executor.into();
        }
    }
    if args.weights.iter().any(|w| *w != DecodeWeights::Fp32) {
        report["quantized_head"] = format!("{:?}", args.head).to_lowercase().into();
    }
    drop(net);
    compare_with_llama_cpp(
        &args.llama,
        &args.model,
        "decode",
        &prompt,
        args.tokens,
        &args.weights,
        &mut report,
    );
    println!("{report}");
    Ok(())
}

/// Tokens/s of the network without its head on `ids` through the executor (the fastest of
/// `repeats` after one untimed pass).
fn body_rate(net: &gstick_nn::Network, ids: &[u32], repeats: usize) -> Result<f64> {
    let mut body = net.clone();
    let head = body.find("lm_head")?;
    body.set_output(0, body.find("model.norm")?)?;
    body.erase(head)?;
    let input =
        candle_core::Tensor::from_vec(ids.to_vec(), (1, ids.len()), &candle_core::Device::Cpu)?;
    let mut best = 0f64;
    for round in 0..=repeats.max(1) {
        let mut exec = gstick_nn::Executor::new(gstick_nn::Mode::Eval, 0);
        let t = Instant::now();
        std::hint::black_box(exec.forward1(&body, &input)?);
        if round > 0 {
            best = best.max(ids.len() as f64 / t.elapsed().as_secs_f64());
        }
    }
    Ok(best)
}

/// The network with every decoder Linear as dynamic A8W8 on the int8 x int8 kernels.
fn a8w8_variant(net: &gstick_nn::Network) -> Result<gstick_nn::Network> {
    use gstick::ptq::config::{QuantDtype, QuantGranularity};
    let config = gstick::ptq::PtqConfig {
        act_quant_dtype: Some(QuantDtype::Int8),
        act_quant_granularity: QuantGranularity::PerToken,
        ..Default::default()
    };
    let mut fake = net.clone();
    gstick::ptq::rtn::apply_rtn(&mut fake, &config, None)?;
    let model = gstick::ptq::fake_quant_linear::quantized_model(&fake);
    let mut variant = net.clone();
    gstick::deploy::install(&mut variant, &model)?;
    Ok(variant)
}

pub fn prefill(args: PrefillBenchArgs) -> Result<()> {
    let (net, _, tokenizer) = crate::cli::llm_cmd::load_lm(&args.model)?;
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let mut ids = tokenizer.encode(&text)?;
    anyhow::ensure!(
        ids.len() >= args.tokens,
        "{} holds {} tokens, fewer than the {} asked for",
        args.text.display(),
        ids.len(),
        args.tokens
    );
    ids.truncate(args.tokens);
    let mut decoder = Decoder::new(&net, 0)?;
    let mut best = 0f64;
    // One untimed pass warms the caches and the allocator.
    for round in 0..=args.repeats.max(1) {
        decoder.reset();
        let t = Instant::now();
        decoder.feed(&ids)?;
        let rate = ids.len() as f64 / t.elapsed().as_secs_f64();
        if round > 0 {
            best = best.max(rate);
        }
    }
    drop(decoder);
    let mut report = serde_json::json!({
        "bench": "llm-prefill",
        "cpu": cpu_name(),
        "tokens": ids.len(),
        "threads": gstick_nn::kernels::kernel_threads(),
        "fp32_tokens_per_s": best,
    });
    if args.a8w8 {
        let fp32 = body_rate(&net, &ids, args.repeats)?;
        let a8w8 = body_rate(&a8w8_variant(&net)?, &ids, args.repeats)?;
        eprintln!(
            "body without head: fp32 {fp32:.0} tokens/s, a8w8 {a8w8:.0} tokens/s ({:.2}x)",
            a8w8 / fp32
        );
        report["fp32_body_tokens_per_s"] = fp32.into();
        report["a8w8_body_tokens_per_s"] = a8w8.into();
        report["a8w8_speedup_over_fp32"] = (a8w8 / fp32).into();
        report["int_isa"] = gstick_quant::int8::IntIsa::detect().name().into();
    }
    drop(net);
    compare_with_llama_cpp(
        &args.llama,
        &args.model,
        "prefill",
        &ids,
        args.repeats.max(1),
        &[DecodeWeights::Fp32],
        &mut report,
    );
    println!("{report}");
    Ok(())
}

/// Runs `bench/llama_cpp_speed.py` (`mode` decode or prefill) and adds its tokens/s and our
/// ratio over it for each of `ours` to `report`; a missing package is reported, not an error.
fn compare_with_llama_cpp(
    args: &LlamaCppArgs,
    model: &std::path::Path,
    mode: &str,
    ids: &[u32],
    n: usize,
    ours: &[DecodeWeights],
    report: &mut serde_json::Value,
) {
    if args.no_llama_cpp {
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/llama_cpp_speed.py");
    let cache = gstick_data::assets_dir().join("llama-cpp");
    let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let parsed = python_json(
        Command::new(&args.python)
            .arg(&script)
            .arg(model)
            .arg(&cache)
            .arg(mode)
            .arg(ids.join(","))
            .arg(n.to_string())
            .arg(gstick_nn::kernels::kernel_threads().to_string()),
        &args.python,
    );
    match parsed {
        Ok(theirs) => {
            for w in ours {
                let key = format!("{}_tokens_per_s", w.llama_cpp());
                let (Some(t), Some(o)) = (
                    theirs[&key].as_f64(),
                    report[format!("{}_tokens_per_s", w.key())].as_f64(),
                ) else {
                    continue;
                };
                report[format!("ratio_{}_over_llama_cpp_{}", w.key(), w.llama_cpp())] =
                    (o / t).into();
            }
            report["llama_cpp"] = theirs;
        }
        Err(e) => eprintln!("llama.cpp baseline skipped: {e:#}"),
    }
}

/// The LM head as int8 per output channel (RTN, symmetric): what llama.cpp's Q8_0 output is to
/// its Q4_0 and Q8_0 models.
fn int8_head(
    net: &gstick_nn::Network,
) -> Result<std::collections::BTreeMap<String, (gstick_quant::kernels::PackedWeight, String)>> {
    use gstick_quant::scheme::{Granularity, WeightScheme};
    let head = net.find("lm_head")?;
    let cell = net.node(head)?.cell().context("lm_head is not a cell")?;
    let linear = gstick_nn::cell::downcast::<gstick_nn::cells::Linear>(cell.as_ref())
        .context("lm_head is not a float Linear")?;
    let w = linear.weight.tensor();
    let (rows, cols) = w.dims2()?;
    let values: Vec<f32> = w.flatten_all()?.to_vec1()?;
    let scheme = WeightScheme {
        bits: 8,
        granularity: Granularity::PerChannel,
        symmetric: true,
        narrow: false,
    };
    let q = scheme.quantize_weight(&values, rows, cols)?;
    let packed = gstick_quant::kernels::PackedWeight::from_quantized(&q);
    Ok([(
        "lm_head".to_string(),
        (packed, "W8-per_channel".to_string()),
    )]
    .into())
}
