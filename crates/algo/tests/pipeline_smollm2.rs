//! The layer-wise PTQ pipeline on SmolLM2 with the real calibration and evaluation texts:
//! GPTQ against RTN at W4 g64, W8 through the pipeline, AWQ, and each export loaded back by our
//! own deploy loaders giving the perplexity of the fake-quantized network.

use std::path::PathBuf;

use gstick_algo::export::{gguf::write_gguf, gs, hf_gptq};
use gstick_algo::pipeline::{install, quantize_lm, PipelineOptions, QuantizedLm};
use gstick_algo::ptq_config::{
    OutliersSuppression, PrecisionRecovery, QuantDtype, QuantGranularity,
};
use gstick_algo::PtqConfig;
use gstick_models::gguf::Gguf;
use gstick_models::layerwise::{calibration_windows, LayerwiseLm};
use gstick_models::llama::{load_llama_gguf, GgufWeights, LlamaConfig};
use gstick_models::tokenizer::{tokenizer_from_gguf, TextTokenizer};
use gstick_nn::Network;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Fixture {
    gguf: Gguf,
    config: LlamaConfig,
    tokenizer: TextTokenizer,
    eval_ids: Vec<u32>,
    windows: Vec<Vec<u32>>,
}

fn fixture() -> Fixture {
    let assets = gstick_data::assets_dir();
    let gguf = Gguf::open(&assets.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .expect("run scripts/fetch-assets.sh");
    let tokenizer = tokenizer_from_gguf(&gguf).unwrap();
    let config = LlamaConfig::from_gguf(&gguf).unwrap();
    let read = |f: &str| std::fs::read_to_string(assets.join(f)).unwrap();
    let eval_ids = tokenizer.encode(&read("wiki/eval.txt")).unwrap();
    let calib_ids = tokenizer.encode(&read("wiki/calib.txt")).unwrap();
    // Fewer windows than the benchmark's 128 x 2048, to keep CI short.
    let windows = calibration_windows(&calib_ids, 16, 512, 0).unwrap();
    Fixture {
        gguf,
        config,
        tokenizer,
        eval_ids,
        windows,
    }
}

fn ppl(net: &Network, ids: &[u32]) -> f64 {
    gstick_eval::perplexity(net, ids, 1024, Some(2), |_, _| {})
        .unwrap()
        .ppl
}

fn run(f: &Fixture, config: &PtqConfig) -> QuantizedLm {
    let src = GgufWeights {
        gguf: &f.gguf,
        config: f.config.clone(),
        permuted_qk: true,
    };
    let mut lm = LayerwiseLm::new(f.config.clone(), src).unwrap();
    let inputs = lm.embed(&f.windows).unwrap();
    quantize_lm(
        &mut lm,
        inputs,
        config,
        None,
        &PipelineOptions::default(),
        &mut |_| {},
    )
    .unwrap()
}

fn fake_quant_ppl(f: &Fixture, q: &QuantizedLm) -> f64 {
    let (mut net, _) = load_llama_gguf(&f.gguf).unwrap();
    install(&mut net, q).unwrap();
    ppl(&net, &f.eval_ids)
}

fn w4_g64() -> PtqConfig {
    PtqConfig {
        weight_quant_dtype: Some(QuantDtype::Int4),
        weight_quant_granularity: QuantGranularity::PerGroup,
        group_size: 64,
        ..Default::default()
    }
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gstick-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn gptq_beats_rtn_at_w4_g64_and_every_export_loads_back() {
    let f = fixture();
    let (float, _) = load_llama_gguf(&f.gguf).unwrap();
    let fp = ppl(&float, &f.eval_ids);

    let rtn = run(&f, &w4_g64());
    let rtn_ppl = fake_quant_ppl(&f, &rtn);
    // Act-order with static groups: with this few calibration tokens plain column order
    // barely beats RTN (the Hessian is estimated from 8k tokens).
    let mut gptq_config = PtqConfig {
        precision_recovery: PrecisionRecovery::Gptq,
        ..w4_g64()
    };
    gptq_config.gptq.desc_act = true;
    gptq_config.gptq.static_groups = true;
    let gptq = run(&f, &gptq_config);
    let gptq_ppl = fake_quant_ppl(&f, &gptq);
    eprintln!("fp32 {fp:.4}  RTN W4 g64 {rtn_ppl:.4}  GPTQ W4 g64 {gptq_ppl:.4}");
    assert!(
        gptq_ppl - fp < 0.9 * (rtn_ppl - fp),
        "GPTQ increase {:.3} is not clearly below RTN's {:.3}",
        gptq_ppl - fp,
        rtn_ppl - fp
    );
    for l in &gptq.layers {
        for lin in &l.linears {
            assert_eq!(lin.summary, "GPTQ-W4-per_group", "{}", lin.name);
        }
    }

    // Each export, loaded back by our deploy loaders, computes the fake-quantized perplexity.
    let dir = out_dir("gs");
    gs::write_gs(&float, &f.config, &f.tokenizer, &gptq, &dir).unwrap();
    let (net, _) = gs::load_gs(&dir).unwrap();
    let p = ppl(&net, &f.eval_ids);
    assert!(
        (p / gptq_ppl - 1.0).abs() < 1e-5,
        "gs export: {p} vs {gptq_ppl}"
    );
    assert!(
        gs::write_gs(&float, &f.config, &f.tokenizer, &gptq, &dir).is_err(),
        "overwrote"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = out_dir("gptq");
    hf_gptq::write_gptq(&float, &f.config, &f.tokenizer, &gptq, &dir).unwrap();
    let (net, _) = hf_gptq::load_gptq(&dir).unwrap();
    let p = ppl(&net, &f.eval_ids);
    assert!(
        (p / gptq_ppl - 1.0).abs() < 1e-5,
        "gptq export: {p} vs {gptq_ppl}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = out_dir("gguf");
    let report = write_gguf(&f.gguf, &float, &f.config, &gptq, &dir).unwrap();
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    assert_eq!(
        report.max_abs_deviation, 0.0,
        "symmetric W4 g64 maps onto Q4_0 exactly"
    );
    let g = Gguf::open(&dir.join("model.gguf")).unwrap();
    let (net, _) = load_llama_gguf(&g).unwrap();
    let p = ppl(&net, &f.eval_ids);
    assert!(
        (p / gptq_ppl - 1.0).abs() < 1e-5,
        "gguf export: {p} vs {gptq_ppl}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn awq_beats_rtn_and_w8_stays_close_through_the_pipeline() {
    let f = fixture();
    let (float, _) = load_llama_gguf(&f.gguf).unwrap();
    let fp = ppl(&float, &f.eval_ids);
    let asym = PtqConfig {
        weight_symmetric: false,
        ..w4_g64()
    };
    let rtn_ppl = fake_quant_ppl(&f, &run(&f, &asym));
    let awq_config = PtqConfig {
        outliers_suppression: OutliersSuppression::Awq,
        ..asym.clone()
    };
    let awq = run(&f, &awq_config);
    assert!(
        !awq.float_overrides.is_empty(),
        "AWQ folded no scale into a norm"
    );
    let awq_ppl = fake_quant_ppl(&f, &awq);
    let w8 = fake_quant_ppl(&f, &run(&f, &PtqConfig::default()));
    eprintln!("fp32 {fp:.4}  RTN W4 g64 asym {rtn_ppl:.4}  AWQ {awq_ppl:.4}  W8 {w8:.4}");
    assert!(awq_ppl < rtn_ppl, "AWQ {awq_ppl} vs RTN {rtn_ppl}");
    assert!((w8 / fp - 1.0).abs() < 0.005, "W8 {w8} vs fp32 {fp}");
}
