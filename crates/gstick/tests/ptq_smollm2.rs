//! The whole PTQ job through the library API (`Source`, `Calibration`, `Quantizer`, `save`,
//! `load`) on SmolLM2 with the real calibration and evaluation texts: GPTQ against RTN at W4
//! g64, W8 through the pipeline, AWQ, and each export loaded back onto the integer kernels
//! giving the perplexity of the fake-quantized network.

use std::path::PathBuf;

use gstick::ptq::config::{OutliersSuppression, PrecisionRecovery, QuantDtype, QuantGranularity};
use gstick::ptq::fake_quant_linear::install_fake;
use gstick::ptq::PtqConfig;
use gstick::{Calibration, Format, Quantized, Quantizer, Source};
use gstick_models::llama::load_llama_gguf;
use gstick_nn::Network;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Fixture {
    source: Source,
    eval_ids: Vec<u32>,
    /// Another domain: Moby-Dick (calibration is on Wikipedia).
    moby_ids: Vec<u32>,
    calibration: Calibration,
}

fn fixture() -> Fixture {
    let assets = gstick_data::assets_dir();
    let source = Source::open(&assets.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .expect("run scripts/fetch-assets.sh");
    let read = |f: &str| std::fs::read_to_string(assets.join(f)).unwrap();
    let eval_ids = source.tokenizer.encode(&read("wiki/eval.txt")).unwrap();
    let moby_ids = source
        .tokenizer
        .encode(&read("moby/moby-dick.txt"))
        .unwrap();
    // Fewer windows than the benchmark's 128 x 2048, to keep CI short.
    let calibration = Calibration::from_text(&source, &read("wiki/calib.txt"), 16, 512, 0).unwrap();
    Fixture {
        source,
        eval_ids,
        moby_ids,
        calibration,
    }
}

fn ppl(net: &Network, ids: &[u32]) -> f64 {
    gstick_eval::perplexity(net, ids, 1024, Some(2), |_, _| {})
        .unwrap()
        .ppl
}

fn run<'s>(f: &'s Fixture, config: &PtqConfig) -> Quantized<'s> {
    Quantizer::new(config.clone())
        .unwrap()
        .calibrate(&f.source, &f.calibration)
        .run()
        .unwrap()
}

fn float_net(f: &Fixture) -> Network {
    load_llama_gguf(f.source.gguf().unwrap()).unwrap().0
}

fn fake_quant(f: &Fixture, q: &Quantized) -> Network {
    let mut net = float_net(f);
    install_fake(&mut net, &q.model).unwrap();
    net
}

fn fake_quant_ppl(f: &Fixture, q: &Quantized) -> f64 {
    ppl(&fake_quant(f, q), &f.eval_ids)
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
    let float = float_net(&f);
    let (fp, fp_moby) = (ppl(&float, &f.eval_ids), ppl(&float, &f.moby_ids));
    drop(float);

    let rtn = fake_quant(&f, &run(&f, &w4_g64()));
    let (rtn_ppl, rtn_moby) = (ppl(&rtn, &f.eval_ids), ppl(&rtn, &f.moby_ids));
    drop(rtn);
    // GPTQ with its defaults (act-order, static groups, the attention sink weighted).
    let gptq_config = PtqConfig {
        precision_recovery: PrecisionRecovery::Gptq,
        ..w4_g64()
    };
    let gptq = run(&f, &gptq_config);
    let net = fake_quant(&f, &gptq);
    let (gptq_ppl, gptq_moby) = (ppl(&net, &f.eval_ids), ppl(&net, &f.moby_ids));
    drop(net);
    eprintln!("wiki: fp32 {fp:.4}  RTN W4 g64 {rtn_ppl:.4}  GPTQ W4 g64 {gptq_ppl:.4}");
    eprintln!("moby: fp32 {fp_moby:.4}  RTN W4 g64 {rtn_moby:.4}  GPTQ W4 g64 {gptq_moby:.4}");
    // Better than rounding on the calibration domain and off it.
    for (text, fp, rtn, gptq) in [
        ("wiki", fp, rtn_ppl, gptq_ppl),
        ("moby", fp_moby, rtn_moby, gptq_moby),
    ] {
        assert!(
            gptq - fp < 0.8 * (rtn - fp),
            "{text}: GPTQ increase {:.3} is not clearly below RTN's {:.3}",
            gptq - fp,
            rtn - fp
        );
    }
    for l in &gptq.layers {
        for lin in &l.linears {
            assert_eq!(lin.summary, "GPTQ-W4-per_group", "{}", lin.name);
        }
    }

    // Each export, loaded back onto the integer kernels, computes the fake-quantized perplexity.
    for format in [Format::Gs, Format::Gptq, Format::Gguf] {
        let dir = out_dir(format.name());
        let report = gptq.save(format, &dir).unwrap();
        assert!(report.notes.is_empty(), "{:?}", report.notes);
        assert_eq!(
            report.max_abs_deviation, 0.0,
            "{format:?}: symmetric W4 g64 fits exactly"
        );
        let lm = match format {
            Format::Gguf => gstick::load_gguf_on_kernels(&dir.join("model.gguf")).unwrap(),
            _ => gstick::load(&dir).unwrap(),
        };
        assert_eq!(
            lm.deploy.as_ref().map(|d| d.layers),
            Some(210),
            "{format:?}"
        );
        let p = ppl(&lm.net, &f.eval_ids);
        assert!(
            (p / gptq_ppl - 1.0).abs() < 1e-5,
            "{format:?} export: {p} vs {gptq_ppl}"
        );
        assert!(gptq.save(format, &dir).is_err(), "{format:?}: overwrote");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn awq_beats_rtn_and_w8_stays_close_through_the_pipeline() {
    let f = fixture();
    let fp = ppl(&float_net(&f), &f.eval_ids);
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
        !awq.model.float_overrides.is_empty(),
        "AWQ folded no scale into a norm"
    );
    let awq_ppl = fake_quant_ppl(&f, &awq);
    let w8 = fake_quant_ppl(&f, &run(&f, &PtqConfig::default()));
    eprintln!("fp32 {fp:.4}  RTN W4 g64 asym {rtn_ppl:.4}  AWQ {awq_ppl:.4}  W8 {w8:.4}");
    assert!(awq_ppl < rtn_ppl, "AWQ {awq_ppl} vs RTN {rtn_ppl}");
    assert!((w8 / fp - 1.0).abs() < 0.005, "W8 {w8} vs fp32 {fp}");
}
