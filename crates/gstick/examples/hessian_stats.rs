//! Where the GPTQ Hessians' weight comes from, layer by layer: for the inputs of each Linear of
//! SmolLM2 on calibration windows of the given length, the diagonal of H = Σ x xᵀ summarized
//! (mean, median, largest) and the share of its trace that the first position of each window
//! (the attention sink) contributes. GPTQ dampens by a fraction of the mean diagonal, so a few
//! massive channels change how much every other channel is dampened.
//!
//! cargo run --release -p gstick --example hessian_stats -- WINDOWS SEQLEN

use gstick::models::layerwise::{calibration_windows, linear_inputs};
use gstick::Source;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (windows, seqlen) = (
        args.first().copied().unwrap_or(8),
        args.get(1).copied().unwrap_or(2048),
    );
    let source = Source::open(".cache/assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
    let text = std::fs::read_to_string(".cache/assets/wiki/calib.txt")?;
    let ids = source.tokenizer.encode(&text)?;
    let cut = calibration_windows(&ids, windows, seqlen, 0)?;
    let mut lm = source.layerwise()?;
    let mut hidden = lm.embed(&cut)?;
    println!(
        "layer linear          mean/median  max/median  sink share of trace  lambda(1%)/median"
    );
    for index in 0..source.config.layers {
        let layer = lm.layer(index)?;
        let (seen, out) = linear_inputs(&layer, &hidden)?;
        for name in [
            "self_attn.q_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.down_proj",
        ] {
            let xs = &seen[name];
            let cols = *xs[0].dims().last().unwrap_or(&1);
            let (mut diag, mut sink) = (vec![0f64; cols], 0f64);
            for x in xs {
                let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
                for (t, row) in v.chunks_exact(cols).enumerate() {
                    for (d, &a) in diag.iter_mut().zip(row) {
                        *d += (a as f64) * (a as f64);
                    }
                    if t == 0 {
                        sink += row.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>();
                    }
                }
            }
            let trace: f64 = diag.iter().sum();
            let mean = trace / cols as f64;
            let mut sorted = diag.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[cols / 2].max(1e-30);
            println!(
                "{index:>5} {name:<17} {:>11.1} {:>11.1} {:>19.3} {:>18.3}",
                mean / median,
                sorted[cols - 1] / median,
                sink / trace,
                0.01 * mean / median
            );
        }
        hidden = out;
    }
    Ok(())
}
