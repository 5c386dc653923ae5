//! Our exports read by independent clients: the GGUF file by the `gguf` Python package (llama.cpp's
//! reader), and the Hugging Face GPTQ directory by a numpy script written from the format's public
//! description (`scripts/check/`). Both must give exactly the values our quantized weights stand
//! for. Python comes from `.cache/pytools`, installed by `scripts/fetch-assets.sh`.

use std::path::{Path, PathBuf};

mod common;

use gstick_export::{save, Format, Source};
use gstick_models::gguf::Gguf;
use gstick_models::layerwise::{calibration_windows, LayerwiseLm};
use gstick_models::llama::{gguf_name, GgufWeights, LlamaConfig};
use gstick_models::tokenizer::{tokenizer_from_gguf, TextTokenizer};
use gstick_ptq::config::{QuantDtype, QuantGranularity};
use gstick_ptq::{quantize_layers, PipelineOptions, PtqConfig, Recipe};
use gstick_quant::QuantizedModel;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs a check script with our paths and names as arguments.
fn python(script: &str, paths: &[&Path], names: &[String]) -> serde_json::Value {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = Vec::new();
    for p in paths {
        args.push(p);
    }
    for n in names {
        args.push(n);
    }
    common::python(script, &args)
}

use common::read_f32;

fn quantize(gguf: &Gguf, tokenizer: &TextTokenizer, ptq: &PtqConfig) -> QuantizedModel {
    let text = std::fs::read_to_string(gstick_data::assets_dir().join("wiki/calib.txt")).unwrap();
    // RTN does not use the calibration data beyond the per-layer error report.
    let windows = calibration_windows(&tokenizer.encode(&text).unwrap(), 1, 64, 0).unwrap();
    let src = GgufWeights::new(gguf).unwrap();
    let mut lm = LayerwiseLm::new(src.config.clone(), src).unwrap();
    let inputs = lm.embed(&windows).unwrap();
    quantize_layers(
        &mut lm,
        inputs,
        &Recipe::from(ptq.clone()),
        &PipelineOptions::default(),
        &mut |_| {},
    )
    .unwrap()
    .model
}

/// Writes `model` in `format`, reading the float tensors from the GGUF source.
fn export(
    gguf: &Gguf,
    config: &LlamaConfig,
    tokenizer: &TextTokenizer,
    model: &QuantizedModel,
    format: Format,
    dir: &Path,
) {
    let mut weights = GgufWeights::new(gguf).unwrap();
    let mut source = Source {
        config,
        tokenizer,
        weights: &mut weights,
        gguf: Some(gguf),
    };
    save(model, &mut source, format, dir).unwrap();
}

fn w4_g64(symmetric: bool) -> PtqConfig {
    PtqConfig {
        weight_quant_dtype: Some(QuantDtype::Int4),
        weight_quant_granularity: QuantGranularity::PerGroup,
        group_size: 64,
        weight_symmetric: symmetric,
        ..Default::default()
    }
}

/// GGUF row (head, i, t) of a q/k projection holds our row (head, t, i) (llama.cpp's RoPE layout);
/// written here again rather than borrowed from the exporter.
fn our_row(gguf_row: usize, rows: usize, heads: usize) -> usize {
    let head_dim = rows / heads;
    let (h, rest) = (gguf_row / head_dim, gguf_row % head_dim);
    h * head_dim + (rest % 2) * (head_dim / 2) + rest / 2
}

const STEMS: [&str; 8] = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.k_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.0.self_attn.o_proj",
    "model.layers.0.mlp.gate_proj",
    "model.layers.0.mlp.up_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.29.mlp.down_proj",
];

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gstick-indep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn the_gguf_package_reads_our_gguf_as_our_values() {
    let gguf =
        Gguf::open(&gstick_data::assets_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
            .expect("run scripts/fetch-assets.sh");
    let config = LlamaConfig::from_gguf(&gguf).unwrap();
    let tokenizer = tokenizer_from_gguf(&gguf).unwrap();
    for (ptq, ggml) in [(PtqConfig::default(), "Q8_0"), (w4_g64(true), "Q4_0")] {
        let q = quantize(&gguf, &tokenizer, &ptq);
        let dir = out_dir(ggml);
        export(&gguf, &config, &tokenizer, &q, Format::Gguf, &dir);
        let dump = dir.join("python");
        let names: Vec<String> = STEMS
            .iter()
            .map(|s| gguf_name(&format!("{s}.weight")).unwrap())
            .collect();
        let info = python("gguf_dequant.py", &[&dir.join("model.gguf"), &dump], &names);
        for (stem, name) in STEMS.iter().zip(&names) {
            assert_eq!(info[name]["type"], ggml, "{name}");
            let theirs = read_f32(&dump.join(format!("{name}.f32")));
            let w = &q.linears[*stem].weight;
            let ours = w.dequantize();
            let heads = config.rope_heads(stem);
            assert_eq!(theirs.len(), ours.len(), "{name}");
            for gr in 0..w.rows {
                let r = heads.map_or(gr, |h| our_row(gr, w.rows, h));
                let (a, b) = (
                    &theirs[gr * w.cols..(gr + 1) * w.cols],
                    &ours[r * w.cols..(r + 1) * w.cols],
                );
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{ggml} {name}: GGUF row {gr} differs from our row {r}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_gptq_reader_written_from_the_format_description_reads_our_values() {
    let gguf =
        Gguf::open(&gstick_data::assets_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
            .expect("run scripts/fetch-assets.sh");
    let config = LlamaConfig::from_gguf(&gguf).unwrap();
    let tokenizer = tokenizer_from_gguf(&gguf).unwrap();
    // Asymmetric int4 groups exercise the zero points; int8 per-channel the other packing.
    for (ptq, bits) in [(w4_g64(false), 4), (PtqConfig::default(), 8)] {
        let q = quantize(&gguf, &tokenizer, &ptq);
        let dir = out_dir(&format!("gptq{bits}"));
        export(&gguf, &config, &tokenizer, &q, Format::Gptq, &dir);
        let dump = dir.join("python");
        let names: Vec<String> = STEMS.iter().map(|s| s.to_string()).collect();
        let info = python("gptq_dequant.py", &[&dir, &dump], &names);
        assert_eq!(info["quantization_config"]["bits"], bits);
        for stem in STEMS {
            let w = &q.linears[stem].weight;
            assert_eq!(
                info["tensors"][stem]["shape"],
                serde_json::json!([w.rows, w.cols])
            );
            let theirs = read_f32(&dump.join(format!("{stem}.f32")));
            let ours = w.dequantize();
            let same = theirs
                .iter()
                .zip(&ours)
                .filter(|(a, b)| a.to_bits() == b.to_bits())
                .count();
            assert_eq!(same, ours.len(), "W{bits} {stem}: values differ");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
