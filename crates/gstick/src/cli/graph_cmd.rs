//! `gstick graph`: look at a model's graph.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use gstick_rewrite::DotOptions;

use crate::cli::models::{self, ModelName};

#[derive(Args)]
pub struct GraphArgs {
    #[arg(long, value_enum, default_value = "lenet5")]
    pub model: ModelName,
    /// Input channels and classes of the built model.
    #[arg(long, default_value_t = 1)]
    pub in_channels: usize,
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Show only the top level (sub-graphs as single rows / boxes).
    #[arg(long)]
    pub flat: bool,
    /// Fold every Conv2d + BatchNorm2d pair first.
    #[arg(long)]
    pub fuse_conv_bn: bool,
    /// Write Graphviz DOT to this file instead of printing the table.
    #[arg(long)]
    pub dot: Option<PathBuf>,
    /// Write an SVG drawing (needs Graphviz `dot`).
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

pub fn graph(args: GraphArgs) -> Result<()> {
    let mut net = models::build(args.model, args.in_channels, args.classes, 0, None)?;
    if args.fuse_conv_bn {
        gstick_nn::fuse::fuse_conv_bn(&mut net)?;
    }
    let options = DotOptions {
        expand_subgraphs: !args.flat,
    };
    if let Some(path) = &args.dot {
        gstick_nn::atomic::write_bytes(path, net.to_dot(&options).as_bytes())?;
    }
    if let Some(path) = &args.svg {
        let svg = net.to_svg(&options).context("drawing the graph")?;
        gstick_nn::atomic::write_bytes(path, &svg)?;
    }
    if args.dot.is_none() && args.svg.is_none() {
        print!("{}", net.table(!args.flat));
        let params: usize = gstick_nn::named_params(&net)
            .iter()
            .filter(|(_, p)| !p.is_buffer())
            .map(|(_, p)| p.tensor().elem_count())
            .sum();
        println!(
            "\n{} nodes, {params} parameters",
            net.nodes_recursive().len()
        );
    }
    Ok(())
}
