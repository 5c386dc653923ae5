//! How well each quantized decoder layer reproduces the float layer on a text: every layer of
//! the quantized model gets the float model's hidden states as input, and its output is compared
//! with the float layer's (relative squared error), separately for the first position of each
//! window (the attention sink) and for the rest. Run it on the calibration domain and on another
//! one to see where a quantizer generalizes.
//!
//! With LAYER given, each Linear of that layer instead: its quantized version gets the inputs
//! the float Linear sees.
//!
//! cargo run --release -p gstick --example layer_errors -- QUANTIZED_DIR TEXT [WINDOWS] [SEQLEN] [LAYER]

use candle_core::Tensor;
use gstick::models::layerwise::run_layer;
use gstick::nn::{Executor, Mode};
use gstick::Source;

fn squared(a: &Tensor) -> candle_core::Result<f64> {
    Ok(a.sqr()?.sum_all()?.to_scalar::<f32>()? as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, text) = (&args[0], &args[1]);
    let windows: usize = args.get(2).map_or(Ok(2), |a| a.parse())?;
    let seqlen: usize = args.get(3).map_or(Ok(2048), |a| a.parse())?;
    let only: Option<usize> = args.get(4).map(|a| a.parse()).transpose()?;
    let source = Source::open(".cache/assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
    let quant = gstick::load(dir.as_ref())?;
    let ids = source.tokenizer.encode(&std::fs::read_to_string(text)?)?;
    let cut: Vec<Vec<u32>> = (0..windows)
        .map(|w| ids[w * seqlen..(w + 1) * seqlen].to_vec())
        .collect();
    let mut lm = source.layerwise()?;
    let mut hidden = lm.embed(&cut)?;
    let mut exec = Executor::new(Mode::Eval, 0);
    println!("layer  rel.error(all)  rel.error(position 0)  rel.error(positions 1..)");
    for index in 0..source.config.layers {
        let float = lm.layer(index)?;
        let id = quant.net.find(&format!("model.layers.{index}"))?;
        let q = quant.net.subgraph(id)?;
        if only == Some(index) {
            return per_linear(&float, q, &hidden);
        }
        if only.is_some() {
            hidden = run_layer(&float, &mut exec, &hidden)?;
            continue;
        }
        let out = run_layer(&float, &mut exec, &hidden)?;
        let out_q = run_layer(q, &mut exec, &hidden)?;
        let (mut e, mut n, mut e0, mut n0) = (0f64, 0f64, 0f64, 0f64);
        for (y, yq) in out.iter().zip(&out_q) {
            let d = (y - yq)?;
            let d0 = d.narrow(1, 0, 1)?;
            let y0 = y.narrow(1, 0, 1)?;
            e += squared(&d)?;
            n += squared(y)?;
            e0 += squared(&d0)?;
            n0 += squared(&y0)?;
        }
        println!(
            "{index:>5} {:>15.3e} {:>22.3e} {:>25.3e}",
            e / n,
            e0 / n0,
            (e - e0) / (n - n0)
        );
        hidden = out;
    }
    Ok(())
}

/// Each Linear of the quantized layer on the inputs its float twin sees.
fn per_linear(
    float: &gstick::nn::Network,
    quant: &gstick::nn::Network,
    hidden: &[Tensor],
) -> Result<(), Box<dyn std::error::Error>> {
    let (seen, _) = gstick::models::layerwise::linear_inputs(float, hidden)?;
    println!("linear              rel.error(position 0)  rel.error(positions 1..)");
    for (name, xs) in &seen {
        let f = float
            .node(float.find(name)?)?
            .cell()
            .ok_or("no cell")?
            .clone();
        let q = quant
            .node(quant.find(name)?)?
            .cell()
            .ok_or("no cell")?
            .clone();
        let mut rng = gstick::nn::rng(0);
        let (mut e, mut n, mut e0, mut n0) = (0f64, 0f64, 0f64, 0f64);
        for x in xs {
            let mut ctx = gstick::nn::CellCtx::new(Mode::Eval, &mut rng);
            let y = f.forward(std::slice::from_ref(x), &mut ctx)?;
            let yq = q.forward(std::slice::from_ref(x), &mut ctx)?;
            let d = (&y - &yq)?;
            e += squared(&d)?;
            n += squared(&y)?;
            e0 += squared(&d.narrow(1, 0, 1)?)?;
            n0 += squared(&y.narrow(1, 0, 1)?)?;
        }
        println!(
            "{name:<20} {:>20.3e} {:>25.3e}",
            e0 / n0,
            (e - e0) / (n - n0)
        );
    }
    Ok(())
}
