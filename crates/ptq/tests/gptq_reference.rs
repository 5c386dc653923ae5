//! One real layer's GPTQ pinned against an independent implementation: SmolLM2's first
//! `self_attn.k_proj` (192 x 576), its Hessian gathered by our observers on four 512-token
//! windows of the wiki calibration text, quantized to 4 bits in groups of 64 with act-order and
//! static groups. `scripts/golden/gptq_reference.py` (torch, the paper's algorithm written from
//! the paper and IST-DASLab's structure) made the committed result from the same weight and
//! Hessian, which this test can write out (`scripts/golden/make_gptq_fixture.sh`).
//!
//! Documented difference: the two Cholesky factorizations (faer, LAPACK through torch) differ in
//! the last bits, so a value lying on a rounding tie may land on the other side; everything
//! else must be equal.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use gstick_models::gguf::Gguf;
use gstick_models::layerwise::{calibration_windows, LayerwiseLm};
use gstick_models::llama::GgufWeights;
use gstick_models::tokenizer::tokenizer_from_gguf;
use gstick_nn::cell::downcast;
use gstick_nn::cells::Linear;
use gstick_nn::{Executor, Mode};
use gstick_ptq::config::GptqConfig;
use gstick_ptq::gptq::{gptq, Hessian};
use gstick_ptq::observer::{ObserveSpec, Observers};
use gstick_quant::{Granularity, WeightScheme};

const FIXTURE: &str = "tests/fixtures/gptq_layer0_k_proj.safetensors";
const LINEAR: &str = "self_attn.k_proj";

/// The weight (row-major, rows, cols) and the Hessian the pipeline would use.
fn inputs() -> (Vec<f32>, usize, usize, Hessian) {
    let assets = gstick_data::assets_dir();
    let gguf = Gguf::open(&assets.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .expect("run scripts/fetch-assets.sh");
    let tokenizer = tokenizer_from_gguf(&gguf).unwrap();
    let text = std::fs::read_to_string(assets.join("wiki/calib.txt")).unwrap();
    let windows = calibration_windows(&tokenizer.encode(&text).unwrap(), 4, 512, 0).unwrap();
    let src = GgufWeights::new(&gguf).unwrap();
    let mut lm = LayerwiseLm::new(src.config.clone(), src).unwrap();
    let hidden = lm.embed(&windows).unwrap();
    let mut layer = lm.layer(0).unwrap();
    let linear = layer
        .node(layer.find(LINEAR).unwrap())
        .unwrap()
        .cell()
        .and_then(|c| downcast::<Linear>(c.as_ref()))
        .cloned()
        .unwrap();
    let spec = ObserveSpec {
        hessian: true,
        rows_per_call: 1,
    };
    let observers = Observers::insert(&mut layer, &[LINEAR.to_string()], spec).unwrap();
    let mut exec = Executor::new(Mode::Eval, 0);
    for x in &hidden {
        exec.forward1(&layer, x).unwrap();
    }
    let stats = observers.remove(&mut layer).unwrap();
    let h = stats[LINEAR].hessian.clone().unwrap();
    let (rows, cols) = linear.weight.tensor().dims2().unwrap();
    let w = linear
        .weight
        .tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (w, rows, cols, h)
}

fn settings() -> (WeightScheme, GptqConfig) {
    let scheme = WeightScheme {
        bits: 4,
        granularity: Granularity::PerGroup(64),
        symmetric: true,
        narrow: false,
    };
    let gptq = GptqConfig {
        block_size: 128,
        desc_act: true,
        damp_percent: 0.01,
        static_groups: true,
        sink_share: 0.0,
    };
    (scheme, gptq)
}

#[test]
fn one_layer_matches_the_reference_script() {
    let (w, rows, cols, h) = inputs();
    if let Ok(path) = std::env::var("GSTICK_WRITE_GPTQ_INPUTS") {
        let dev = Device::Cpu;
        let tensors = HashMap::from([
            (
                "weight".to_string(),
                Tensor::from_slice(&w, (rows, cols), &dev).unwrap(),
            ),
            (
                "hessian".to_string(),
                Tensor::from_slice(&h.h, (cols, cols), &dev).unwrap(),
            ),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        eprintln!("wrote {path}");
    }
    let bytes = std::fs::read(FIXTURE)
        .expect("the fixture is committed; scripts/golden/make_gptq_fixture.sh makes it");
    let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |name: &str| -> Vec<f64> {
        let t = reference.tensor(name).unwrap();
        match t.dtype() {
            safetensors::Dtype::I8 => t.data().iter().map(|&b| b as i8 as f64).collect(),
            safetensors::Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        }
    };
    // The inputs are the ones the fixture was made from.
    let trace: f64 = (0..cols).map(|i| h.h[i * cols + i]).sum();
    let recorded = get("hessian_trace")[0];
    assert!(
        (trace / recorded - 1.0).abs() < 1e-6,
        "the layer's Hessian changed (trace {trace} vs {recorded}): remake the fixture"
    );

    let (scheme, config) = settings();
    let (q, report) = gptq(&w, rows, cols, &h, scheme, &config).unwrap();
    assert_eq!(report.damp_percent, 0.01);
    let values = get("values");
    let (scales, zeros) = (get("scales"), get("zeros"));
    assert_eq!(values.len(), q.values.len());
    let differ: Vec<usize> = (0..values.len())
        .filter(|&i| values[i] != q.values[i] as f64)
        .collect();
    let worst = differ
        .iter()
        .map(|&i| (values[i] - q.values[i] as f64).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "{} of {} values differ from the reference (largest difference {worst})",
        differ.len(),
        values.len()
    );
    assert!(worst <= 1.0, "a value differs by {worst} steps");
    assert!(
        differ.len() * 1000 <= values.len(),
        "{} values differ: more than rounding ties",
        differ.len()
    );
    // Static groups: the scales come from the original weight, exactly.
    for (i, p) in q.params.iter().enumerate() {
        assert_eq!(p.scale, scales[i], "scale {i}");
        assert_eq!(p.zero_point, zeros[i], "zero point {i}");
    }
}
