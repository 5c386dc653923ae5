//! `gstick`: the Golden Stick command line.

mod cli;

use clap::{Parser, Subcommand};
use cli::{allocator, bench, graph_cmd, llm_cmd, qat_cmd, quantize_cmd, train_cmd};

#[derive(Parser)]
#[command(
    name = "gstick",
    version,
    about = "Golden Stick: compress, quantize, prune and convert neural networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on a dataset and report its test accuracy.
    Train(train_cmd::TrainArgs),
    /// Evaluate a model: accuracy of a CNN (the default), or `eval ppl` for a language model.
    Eval(EvalCommand),
    /// Convert a language model (GGUF or Hugging Face directory) to a Hugging Face directory.
    Convert(llm_cmd::ConvertArgs),
    /// Quantize a language model's weights (RTN, GPTQ, AWQ) and export it (gs, gptq, gguf).
    Quantize(quantize_cmd::QuantizeArgs),
    /// Quantization-aware training of a CNN (SimQAT), converted to an int8 deploy network.
    Qat(qat_cmd::QatArgs),
    /// Static int8 post-training quantization of a CNN (calibration), converted to int8.
    PtqCnn(qat_cmd::PtqCnnArgs),
    /// Generate text with a language model (greedy unless --temperature).
    Generate(llm_cmd::GenerateArgs),
    /// Print a model's node table, or write it as Graphviz DOT / SVG.
    Graph(graph_cmd::GraphArgs),
    /// Benchmarks: LeNet-5 training images/s against PyTorch (default); LLM layer-wise memory.
    Bench(bench::BenchCommand),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct EvalCommand {
    #[command(subcommand)]
    kind: Option<EvalKind>,
    #[command(flatten)]
    accuracy: train_cmd::EvalArgs,
}

#[derive(Subcommand)]
enum EvalKind {
    /// Accuracy of a CNN checkpoint or pretrained model (same as plain `eval`).
    Accuracy(train_cmd::EvalArgs),
    /// Perplexity of a causal language model on a text file.
    Ppl(llm_cmd::PplArgs),
    /// Cosine between two models' sentence embeddings (mean and minimum).
    Embed(llm_cmd::EmbedArgs),
}

fn eval(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd.kind {
        None => train_cmd::eval(cmd.accuracy),
        Some(EvalKind::Accuracy(args)) => train_cmd::eval(args),
        Some(EvalKind::Ppl(args)) => llm_cmd::ppl(args),
        Some(EvalKind::Embed(args)) => llm_cmd::embed(args),
    }
}

fn main() {
    // Before any thread starts (see the function's note).
    gstick_nn::kernels::tune_candle_threads();
    allocator::configure();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train_cmd::train(args),
        Command::Eval(cmd) => eval(cmd),
        Command::Generate(args) => llm_cmd::generate(args),
        Command::Convert(args) => llm_cmd::convert(args),
        Command::Quantize(args) => quantize_cmd::quantize(args),
        Command::Qat(args) => qat_cmd::qat(args),
        Command::PtqCnn(args) => qat_cmd::ptq_cnn(args),
        Command::Graph(args) => graph_cmd::graph(args),
        Command::Bench(cmd) => bench::run(cmd),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
