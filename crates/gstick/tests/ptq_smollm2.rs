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

/// Dynamic per-token A8W8 (spec §3.8): with SmoothQuant (α = 0.7) the perplexity stays within
/// 1% of fp32 on the test's two 1024-token windows of the calibration domain and of Moby-Dick
/// (on 4 x 2048 tokens it is 1.3% and 0.8%, see the README), and smoothing beats plain per-token
/// A8W8; the Golden Stick export loads onto the integer kernels (`A8W8Linear`) with the
/// calibration network's perplexity, and every deployed Linear output is within one unit of the
/// integer product (sx · sw) of the exact dequantized arithmetic; formats that cannot express
/// activation quantization refuse the model.
#[test]
fn a8w8_dynamic_stays_within_one_percent_and_deploys_as_simulated() {
    let f = fixture();
    let fp = ppl(&float_net(&f), &f.eval_ids);
    let fp_moby = ppl(&float_net(&f), &f.moby_ids);
    let plain_config = PtqConfig {
        act_quant_dtype: Some(QuantDtype::Int8),
        act_quant_granularity: QuantGranularity::PerToken,
        ..Default::default()
    };
    let plain = run(&f, &plain_config);
    assert_eq!(plain.model.linears.len(), 210);
    assert!(plain
        .model
        .linears
        .values()
        .all(|l| l.label == "W8-per_channel-A8-per_token" && l.activation.is_some()));
    let plain_net = fake_quant(&f, &plain);
    let (plain_ppl, plain_moby) = (ppl(&plain_net, &f.eval_ids), ppl(&plain_net, &f.moby_ids));
    let mut config = PtqConfig {
        outliers_suppression: OutliersSuppression::Smooth,
        ..plain_config
    };
    config.smooth.alpha = 0.7;
    let q = run(&f, &config);
    assert!(
        !q.model.float_overrides.is_empty(),
        "no scale was folded into a norm"
    );
    let fake = fake_quant(&f, &q);
    let (sim, sim_moby) = (ppl(&fake, &f.eval_ids), ppl(&fake, &f.moby_ids));
    eprintln!(
        "fp32 {fp:.4} / {fp_moby:.4}  A8W8 dynamic {plain_ppl:.4} / {plain_moby:.4}  \
         SmoothQuant 0.7 + A8W8 dynamic {sim:.4} / {sim_moby:.4}"
    );

    let gguf = out_dir("a8w8-gguf");
    let err = q.save(Format::Gguf, &gguf).unwrap_err().to_string();
    assert!(
        err.contains("dynamic_per_token") && err.contains("gs format"),
        "{err}"
    );
    assert!(!gguf.exists());
    let dir = out_dir("a8w8-gs");
    q.save(Format::Gs, &dir).unwrap();
    let description = std::fs::read_to_string(dir.join("quantization_description.json")).unwrap();
    assert!(description.contains("\"model_quant_type\": \"W8A8_DYNAMIC\""));
    let lm = gstick::load(&dir).unwrap();
    assert_eq!(lm.deploy.as_ref().map(|d| d.layers), Some(210));
    let deployed = ppl(&lm.net, &f.eval_ids);
    eprintln!("deployed {deployed:.6} simulated {sim:.6}");

    // Each deployed Linear against the simulation on the same input.
    type Calls = Vec<(String, candle_core::Tensor, candle_core::Tensor)>;
    let calls: std::rc::Rc<std::cell::RefCell<Calls>> = Default::default();
    let mut exec = gstick_nn::Executor::new(gstick_nn::Mode::Eval, 0);
    {
        let calls = calls.clone();
        exec.add_hook_all(move |c| {
            if c.kind == "A8W8Linear" {
                calls.borrow_mut().push((
                    c.name.to_string(),
                    c.inputs[0].clone(),
                    c.output.clone(),
                ));
            }
            Ok(())
        });
    }
    let ids: Vec<u32> = f.moby_ids[..64].to_vec();
    let x = candle_core::Tensor::from_vec(ids, (1, 64), &candle_core::Device::Cpu).unwrap();
    exec.forward1(&lm.net, &x).unwrap();
    let calls = calls.take();
    assert_eq!(calls.len(), 210);
    let (mut values, mut worst) = (0usize, 0f64);
    for (name, input, output) in calls {
        let w = &q.model.linears[&name].weight;
        let cols = w.cols;
        let xs: Vec<f32> = input.flatten_all().unwrap().to_vec1().unwrap();
        let got: Vec<f32> = output.flatten_all().unwrap().to_vec1().unwrap();
        let wd = w.dequantize();
        let mut qx = vec![0i8; cols];
        for (t, row) in xs.chunks_exact(cols).enumerate() {
            let sx = gstick_quant::int8::a8w8::quantize_token(row, &mut qx);
            for o in 0..w.rows {
                // The simulation: the fake-quantized input times the weight it stands for.
                let sim: f64 = qx
                    .iter()
                    .zip(&wd[o * cols..(o + 1) * cols])
                    .map(|(&a, &b)| (a as f32 * sx) as f64 * b as f64)
                    .sum();
                let step = sx as f64 * w.params[o].scale;
                let d = (got[t * w.rows + o] as f64 - sim).abs();
                worst = worst.max(d / step);
                values += 1;
            }
        }
    }
    eprintln!("{values} deployed outputs, worst difference {worst:.4} steps");
    assert!(
        worst <= 1.0,
        "a deployed output is {worst} steps from the simulation"
    );
    // Calibration computes on the deploy kernel, so the deployed model is the same network.
    assert_eq!(deployed, sim, "deployed vs calibration network");
    assert!((sim / fp - 1.0).abs() < 0.01, "A8W8 {sim} vs fp32 {fp}");
    assert!(
        sim < plain_ppl && sim_moby < plain_moby,
        "smoothing did not help"
    );
    assert!(
        (plain_ppl / fp - 1.0).abs() < 0.05,
        "plain A8W8 {plain_ppl} vs fp32 {fp}"
    );
    assert!(
        (sim_moby / fp_moby - 1.0).abs() < 0.01,
        "Moby-Dick: A8W8 {sim_moby} vs fp32 {fp_moby}"
    );

    let _ = std::fs::remove_dir_all(&dir);
}
