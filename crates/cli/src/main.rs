//! `gstick`: the Golden Stick command line.

mod bench;
mod datasets;
mod graph_cmd;
mod models;
mod train_cmd;

use clap::{Parser, Subcommand};

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
    /// Report the accuracy of a checkpoint or of a pretrained model.
    Eval(train_cmd::EvalArgs),
    /// Print a model's node table, or write it as Graphviz DOT / SVG.
    Graph(graph_cmd::GraphArgs),
    /// Measure training throughput (images/s), against PyTorch when it is installed.
    Bench(bench::BenchArgs),
}

fn main() {
    // Before any thread starts (see the function's note).
    gstick_nn::kernels::tune_candle_threads();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train_cmd::train(args),
        Command::Eval(args) => train_cmd::eval(args),
        Command::Graph(args) => graph_cmd::graph(args),
        Command::Bench(args) => bench::bench(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
