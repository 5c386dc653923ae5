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
    /// 4 x 512 windows, for the runs that compare several models.
    small: Calibration,
    /// 8 x 512 windows: static activation ranges from fewer tokens are noisy.
    medium: Calibration,
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
    let small = Calibration::from_text(&source, &read("wiki/calib.txt"), 4, 512, 0).unwrap();
    let medium = Calibration::from_text(&source, &read("wiki/calib.txt"), 8, 512, 0).unwrap();
    Fixture {
        source,
        eval_ids,
        moby_ids,
        calibration,
        small,
        medium,
    }
}

fn ppl(net: &Network, ids: &[u32]) -> f64 {
    gstick_eval::perplexity(net, ids, 1024, Some(2), |_, _| {})
        .unwrap()
        .ppl
}

fn run<'s>(f: &'s Fixture, config: &PtqConfig) -> Quantized<'s> {
    run_on(f, &f.calibration, config)
}

fn run_on<'s>(f: &'s Fixture, calibration: &Calibration, config: &PtqConfig) -> Quantized<'s> {
    Quantizer::new(config.clone())
        .unwrap()
        .calibrate(&f.source, calibration)
        .run()
        .unwrap()
}

/// Perplexity on the wiki evaluation text and on Moby-Dick.
fn both_ppl(net: &Network, f: &Fixture) -> (f64, f64) {
    (ppl(net, &f.eval_ids), ppl(net, &f.moby_ids))
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

/// Every deployed `A8W8Linear` output on `ids` against the simulation: the fake-quantized input
/// times the weight it stands for, in f64. 100% of them must be within one quantization step
/// (the input's scale times the largest weight scale of the row).
fn deployed_within_one_step(net: &Network, model: &gstick_quant::QuantizedModel, ids: &[u32]) {
    use gstick_quant::ActivationQuant;
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
    let x = candle_core::Tensor::from_vec(ids.to_vec(), (1, ids.len()), &candle_core::Device::Cpu)
        .unwrap();
    exec.forward1(net, &x).unwrap();
    let calls = calls.take();
    let quantized_inputs = model
        .linears
        .values()
        .filter(|l| l.activation.is_some())
        .count();
    assert_eq!(calls.len(), quantized_inputs);
    let (mut values, mut worst) = (0usize, 0f64);
    for (name, input, output) in calls {
        let l = &model.linears[&name];
        let w = &l.weight;
        let cols = w.cols;
        let xs: Vec<f32> = input.flatten_all().unwrap().to_vec1().unwrap();
        let got: Vec<f32> = output.flatten_all().unwrap().to_vec1().unwrap();
        let wd = w.dequantize();
        let row_scale: Vec<f64> = (0..w.rows)
            .map(|o| {
                (0..cols)
                    .map(|c| w.params_at(o, c).scale)
                    .fold(0f64, f64::max)
            })
            .collect();
        let mut qx = vec![0i8; cols];
        for (t, row) in xs.chunks_exact(cols).enumerate() {
            let (sx, zp) = match l.activation.unwrap() {
                ActivationQuant::DynamicPerToken => {
                    (gstick_quant::int8::a8w8::quantize_token(row, &mut qx), 0)
                }
                ActivationQuant::StaticPerTensor { scale, zero_point } => {
                    assert!(gstick_quant::int8::a8w8::quantize_token_static(
                        row, &mut qx, scale, zero_point
                    ));
                    (scale, zero_point)
                }
            };
            for o in 0..w.rows {
                let sim: f64 = qx
                    .iter()
                    .zip(&wd[o * cols..(o + 1) * cols])
                    .map(|(&a, &b)| ((a as i32 - zp) as f32 * sx) as f64 * b as f64)
                    .sum();
                let step = sx as f64 * row_scale[o];
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

    deployed_within_one_step(&lm.net, &q.model, &f.moby_ids[..64]);
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
    // Off its calibration text it costs a little more (+1.05% on these 2 x 1024 tokens, +0.79%
    // on 4 x 2048 in the README's table).
    assert!(
        (sim_moby / fp_moby - 1.0).abs() < 0.015,
        "Moby-Dick: A8W8 {sim_moby} vs fp32 {fp_moby}"
    );

    let _ = std::fs::remove_dir_all(&dir);
}

/// Static per-tensor A8W8 (spec §3.3, §3.4) on 8 x 512 calibration windows (OSL searching on
/// the first 4, to keep CI short): SmoothQuant at
/// α = 0.5 removes at least half of plain static A8W8's perplexity increase and OSL's searched
/// α does at least as well as SmoothQuant, on the calibration domain and on Moby-Dick; the OSL
/// model saves as a gs directory with msModelSlim's static tensors, deploys with the calibration
/// network's perplexity, and every deployed output is within one step of the simulation.
/// (Measured with 16 x 512 windows and 4 x 2048 evaluation tokens: plain +99.5% / +94.1%,
/// SmoothQuant +22.5% / +24.2%, OSL +7.1% / +11.0%; README.)
#[test]
fn static_a8w8_smoothquant_and_osl() {
    let f = fixture();
    let (fp, fp_moby) = both_ppl(&float_net(&f), &f);
    let plain_config = PtqConfig {
        act_quant_dtype: Some(QuantDtype::Int8),
        act_quant_granularity: QuantGranularity::PerTensor,
        ..Default::default()
    };
    let with = |os: OutliersSuppression| PtqConfig {
        outliers_suppression: os,
        ..plain_config.clone()
    };
    let plain = run_on(&f, &f.medium, &plain_config);
    let smooth = run_on(&f, &f.medium, &with(OutliersSuppression::Smooth));
    let osl = Quantizer::new(with(OutliersSuppression::OutlierSuppressionLite))
        .unwrap()
        .with_options(gstick::ptq::PipelineOptions {
            search_tokens: 2048,
            ..Default::default()
        })
        .calibrate(&f.source, &f.medium)
        .run()
        .unwrap();
    let labels = |q: &Quantized| -> std::collections::BTreeSet<String> {
        q.model.linears.values().map(|l| l.label.clone()).collect()
    };
    assert_eq!(
        labels(&osl).into_iter().collect::<Vec<_>>(),
        ["OSL-wclip-W8-per_channel-A8-per_tensor"]
    );
    assert_eq!(
        labels(&smooth).into_iter().collect::<Vec<_>>(),
        ["SmoothQuant-W8-per_channel-A8-per_tensor"]
    );
    let alphas: Vec<f64> = osl
        .layers
        .iter()
        .flat_map(|l| l.linears.iter().filter_map(|r| r.smooth_alpha))
        .collect();
    assert!(
        alphas.iter().all(|a| gstick::ptq::osl::ALPHAS.contains(a)) && alphas.len() >= 30 * 5,
        "{alphas:?}"
    );
    let (p, p_moby) = both_ppl(&fake_quant(&f, &plain), &f);
    let (s, s_moby) = both_ppl(&fake_quant(&f, &smooth), &f);
    let (o, o_moby) = both_ppl(&fake_quant(&f, &osl), &f);
    eprintln!(
        "fp32 {fp:.4} / {fp_moby:.4}  static A8W8 {p:.4} / {p_moby:.4}  \
         SmoothQuant 0.5 {s:.4} / {s_moby:.4}  OSL {o:.4} / {o_moby:.4}"
    );
    assert!(
        p > fp * 1.05,
        "plain static A8W8 {p} is suspiciously close to fp32 {fp}"
    );
    assert!(
        s - fp <= 0.5 * (p - fp),
        "wiki: SmoothQuant {s}, plain {p}, fp32 {fp}"
    );
    assert!(
        s_moby - fp_moby <= 0.5 * (p_moby - fp_moby),
        "Moby-Dick: SmoothQuant {s_moby}, plain {p_moby}, fp32 {fp_moby}"
    );
    assert!(
        o <= s && o_moby <= s_moby,
        "OSL {o} / {o_moby} vs SmoothQuant {s} / {s_moby}"
    );

    let gguf = out_dir("static-gguf");
    let err = osl.save(Format::Gguf, &gguf).unwrap_err().to_string();
    assert!(err.contains("static_per_tensor"), "{err}");
    let dir = out_dir("static-gs");
    osl.save(Format::Gs, &dir).unwrap();
    let description = std::fs::read_to_string(dir.join("quantization_description.json")).unwrap();
    for needle in [
        "\"model_quant_type\": \"W8A8\"",
        "model.layers.7.mlp.down_proj.input_scale",
        "model.layers.7.mlp.down_proj.input_offset",
        "model.layers.7.mlp.down_proj.quant_bias",
        "model.layers.7.mlp.down_proj.deq_scale",
    ] {
        assert!(description.contains(needle), "{needle}");
    }
    let lm = gstick::load(&dir).unwrap();
    assert_eq!(lm.deploy.as_ref().map(|d| d.layers), Some(210));
    assert_eq!(
        ppl(&lm.net, &f.eval_ids),
        o,
        "deployed vs calibration network"
    );
    deployed_within_one_step(&lm.net, &osl.model, &f.moby_ids[..64]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// KV-cache int8 (spec §3.9) alone, weights in float: per token within 0.5% of fp32 and per
/// channel (calibrated on 4 x 512 windows, keys bounded by their RoPE pair's magnitude) within
/// 1.5%, on both texts; the gs export deploys with the same perplexity, and the decoder's
/// cache holds a quarter of the f32 bytes (per channel) with the same greedy tokens as the
/// executor on the same int8 cache.
#[test]
fn kv_cache_int8_per_token_and_per_channel() {
    use gstick::ptq::Recipe;
    use gstick_models::generate::{generate_with, GraphLm, Sampling};
    let f = fixture();
    let (fp, fp_moby) = both_ppl(&float_net(&f), &f);
    let prompt = f
        .source
        .tokenizer
        .encode("The capital of France is")
        .unwrap();
    let mut float_decoder = gstick_deploy::decoder::Decoder::new(&float_net(&f), 0).unwrap();
    generate_with(
        &mut float_decoder,
        &prompt,
        24,
        Sampling::Greedy,
        None,
        |_| {},
    )
    .unwrap();
    for (granularity, bound, summary) in [
        ("per_token", 0.005, "C8-per_token"),
        ("per_channel", 0.015, "C8-per_channel"),
    ] {
        let recipe = Recipe::from_yaml(
            &format!(
                "weight_quant_dtype: none\nkvcache_quant_dtype: int8\nkvcache_quant_granularity: {granularity}\n"
            ),
            "kv.yaml",
        )
        .unwrap();
        let q = Quantizer::new(recipe)
            .unwrap()
            .calibrate(&f.source, &f.small)
            .run()
            .unwrap();
        assert!(q.model.linears.is_empty());
        assert_eq!(q.model.kv_caches.len(), 30);
        assert!(q
            .layers
            .iter()
            .all(|l| l.kv_caches.len() == 1 && l.kv_caches[0].summary == summary));
        let fake = fake_quant(&f, &q);
        let (k, k_moby) = both_ppl(&fake, &f);
        eprintln!("{granularity}: fp32 {fp:.4} / {fp_moby:.4}  KV int8 {k:.4} / {k_moby:.4}");
        assert!(k != fp, "{granularity}: the int8 cache changed nothing");
        assert!(
            (k / fp - 1.0).abs() < bound,
            "{granularity}: {k} vs fp32 {fp}"
        );
        assert!(
            (k_moby / fp_moby - 1.0).abs() < bound,
            "{granularity}: Moby-Dick {k_moby} vs fp32 {fp_moby}"
        );
        let dir = out_dir(&format!("kv-{granularity}"));
        assert!(q.save(Format::Gptq, &out_dir("kv-gptq")).is_err());
        let err = q
            .save(Format::CompressedTensors, &out_dir("kv-ct"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("KV cache"), "{err}");
        assert!(!out_dir("kv-ct").exists());
        q.save(Format::Gs, &dir).unwrap();
        let lm = gstick::load(&dir).unwrap();
        assert_eq!(
            ppl(&lm.net, &f.eval_ids),
            k,
            "{granularity}: deployed vs calibration"
        );
        let mut decoder = gstick_deploy::decoder::Decoder::new(&lm.net, 0).unwrap();
        let ours =
            generate_with(&mut decoder, &prompt, 24, Sampling::Greedy, None, |_| {}).unwrap();
        let reference = generate_with(
            &mut GraphLm::new(&lm.net, true),
            &prompt,
            24,
            Sampling::Greedy,
            None,
            |_| {},
        )
        .unwrap();
        assert_eq!(ours, reference, "{granularity}: decoder vs executor tokens");
        let expected = float_decoder.cache_bytes() / 4
            + if granularity == "per_token" {
                4 * 2 * 30 * decoder.positions()
            } else {
                0
            };
        assert_eq!(
            decoder.cache_bytes(),
            expected,
            "{granularity}: cache bytes"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A8W4 (spec §3.8): GPTQ int4 weights in groups of 64 with act-order and int8 activations per
/// token, against the GPTQ W4A16 model of the same calibration. The integer kernel multiplies
/// int8 activations by the int4 values with int32 sums per group; every deployed output is
/// within one step of the simulation, and the gs export deploys with the calibration network's
/// perplexity. (Measured with 16 x 512 windows, 4 x 2048 tokens: W4A16 14.0234 / 56.3732,
/// A8W4 14.7510 / 60.5964, +5.2% / +7.5%; README.)
#[test]
fn a8w4_gptq_int4_with_int8_activations() {
    let f = fixture();
    let gptq = PtqConfig {
        precision_recovery: PrecisionRecovery::Gptq,
        ..w4_g64()
    };
    let a8w4 = PtqConfig {
        act_quant_dtype: Some(QuantDtype::Int8),
        act_quant_granularity: QuantGranularity::PerToken,
        ..gptq.clone()
    };
    let w4 = run_on(&f, &f.small, &gptq);
    let q = run_on(&f, &f.small, &a8w4);
    assert!(q
        .model
        .linears
        .values()
        .all(|l| l.label == "GPTQ-W4-per_group-A8-per_token" && l.activation.is_some()));
    let (w, w_moby) = both_ppl(&fake_quant(&f, &w4), &f);
    let (a, a_moby) = both_ppl(&fake_quant(&f, &q), &f);
    eprintln!("GPTQ W4A16 {w:.4} / {w_moby:.4}  A8W4 {a:.4} / {a_moby:.4}");
    assert!(a != w, "int8 activations changed nothing");
    assert!((a / w - 1.0).abs() < 0.08, "A8W4 {a} vs W4A16 {w}");
    assert!(
        (a_moby / w_moby - 1.0).abs() < 0.1,
        "Moby-Dick: A8W4 {a_moby} vs {w_moby}"
    );
    let dir = out_dir("a8w4-gs");
    q.save(Format::Gs, &dir).unwrap();
    let description = std::fs::read_to_string(dir.join("quantization_description.json")).unwrap();
    assert!(description.contains("\"model_quant_type\": \"W4A8_DYNAMIC\""));
    let lm = gstick::load(&dir).unwrap();
    assert_eq!(
        ppl(&lm.net, &f.eval_ids),
        a,
        "deployed vs calibration network"
    );
    deployed_within_one_step(&lm.net, &q.model, &f.moby_ids[..64]);
    let _ = std::fs::remove_dir_all(&dir);
}
