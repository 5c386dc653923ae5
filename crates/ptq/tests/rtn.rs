//! RTN weight quantization through the Rewrite API: on a tiny network built here, and on SmolLM2
//! with the real evaluation text (perplexity before and after).

use candle_core::{Device, Tensor};
use gstick_deploy::install;
use gstick_models::gguf::Gguf;
use gstick_models::llama::load_llama_gguf;
use gstick_models::tokenizer::tokenizer_from_gguf;
use gstick_nn::cells::Linear;
use gstick_nn::{Executor, Mode, Network};
use gstick_ptq::config::{QuantDtype, QuantGranularity};
use gstick_ptq::fake_quant_linear::quantized_model;
use gstick_ptq::rtn::apply_rtn;
use gstick_ptq::{LayerPolicies, PtqConfig};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn w4_g64() -> PtqConfig {
    PtqConfig {
        weight_quant_dtype: Some(QuantDtype::Int4),
        weight_quant_granularity: QuantGranularity::PerGroup,
        group_size: 64,
        ..Default::default()
    }
}

/// x -> block(fc) -> head, with a 4 x 64 weight in the block.
fn tiny(bad: bool) -> Network {
    let mut values: Vec<f32> = (0..256)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    if bad {
        values[70] = f32::NAN;
    }
    let mut block = Network::new();
    let bx = block.add_input("x");
    let fc = Linear::from_tensors(
        Tensor::from_vec(values, (4, 64), &Device::Cpu).unwrap(),
        None,
    )
    .unwrap();
    let f = block.add_cell("fc", Box::new(fc), &[bx]).unwrap();
    block.set_outputs(&[f]).unwrap();
    let mut g = Network::new();
    let x = g.add_input("x");
    let b = g.add_subgraph("block", "Block", block, &[x]).unwrap();
    let head = Linear::from_tensors(
        Tensor::ones((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap(),
        None,
    )
    .unwrap();
    let h = g.add_cell("head", Box::new(head), &[b]).unwrap();
    g.set_outputs(&[h]).unwrap();
    g
}

#[test]
fn rtn_rewrites_linears_inside_blocks_only() {
    let mut net = tiny(false);
    let reports = apply_rtn(&mut net, &w4_g64(), None).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].name.as_str(), reports[0].summary.as_str()),
        ("block.fc", "W4-per_group")
    );
    let kinds: Vec<(String, String)> = net
        .nodes_recursive()
        .into_iter()
        .map(|(n, node)| (n, node.kind().to_string()))
        .collect();
    assert!(
        kinds.contains(&("block.fc".into(), "WeightQuantLinear".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("head".into(), "Linear".into())),
        "the head stays in float"
    );
    // The quantized network still runs and stays close to the original.
    let x = Tensor::ones((1, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    let before = Executor::new(Mode::Eval, 0)
        .forward1(&tiny(false), &x)
        .unwrap();
    let after = Executor::new(Mode::Eval, 0).forward1(&net, &x).unwrap();
    let diff = (before - after)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // Each weight moves by at most half a step (2 * max|w| / 15 / 2, max|w| = 2); each head output
    // sums 4 rows of 64 such errors times inputs of 1.
    let bound = 4.0 * 64.0 * (2.0 * 2.0 / 15.0) / 2.0;
    assert!(diff > 0.0 && diff <= bound, "{diff} (bound {bound})");
    // A NaN weight: an error naming the layer, and the network untouched.
    let mut broken = tiny(true);
    let err = apply_rtn(&mut broken, &w4_g64(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("block.fc") && err.contains("non-finite"),
        "{err}"
    );
    assert!(broken
        .nodes_recursive()
        .iter()
        .all(|(_, n)| n.kind() != "WeightQuantLinear"));
    // Blacklisted layers are reported as NA and left alone.
    let mut skip = tiny(false);
    let config = PtqConfig {
        opname_blacklist: vec!["fc".into()],
        ..w4_g64()
    };
    assert_eq!(
        apply_rtn(&mut skip, &config, None).unwrap()[0].summary,
        "NA"
    );
    // Layer policies pick the configuration per layer.
    let policies = LayerPolicies::new(vec![(r"block\..*".into(), PtqConfig::default())]).unwrap();
    assert_eq!(
        apply_rtn(&mut tiny(false), &w4_g64(), Some(&policies)).unwrap()[0].summary,
        "W8-per_channel"
    );
}

#[test]
fn deploy_swaps_fake_quant_cells_for_packed_ones_with_the_same_outputs() {
    let mut fake = tiny(false);
    apply_rtn(&mut fake, &w4_g64(), None).unwrap();
    let mut deployed = tiny(false);
    let report = install(&mut deployed, &quantized_model(&fake)).unwrap();
    assert_eq!(report.layers, 1);
    assert_eq!(report.f32_bytes, 4 * 64 * 4);
    // 4 rows x 64 nibbles, one scale and one offset per row.
    assert_eq!(report.packed_bytes, 4 * 32 + 4 * 4 * 2);
    let kinds: Vec<(String, String)> = deployed
        .nodes_recursive()
        .into_iter()
        .map(|(n, node)| (n, node.kind().to_string()))
        .collect();
    assert!(
        kinds.contains(&("block.fc".into(), "PackedLinear".into())),
        "{kinds:?}"
    );
    // The packed cell keeps no float weight.
    let names: Vec<String> = gstick_nn::named_params(&deployed)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(!names.iter().any(|n| n == "block.fc.weight"), "{names:?}");
    // Batches on both kernel paths (row kernel and panels) agree with the fake-quant outputs.
    for rows in [1, 3, 20] {
        let x = Tensor::arange(0f32, (rows * 64) as f32, &Device::Cpu)
            .unwrap()
            .affine(0.01, -0.3)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((rows, 64))
            .unwrap();
        let a = Executor::new(Mode::Eval, 0).forward1(&fake, &x).unwrap();
        let b = Executor::new(Mode::Eval, 0)
            .forward1(&deployed, &x)
            .unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "rows {rows}: {diff}");
    }
}

#[test]
fn smollm2_w8_rtn_keeps_perplexity_within_half_a_percent() {
    let assets = gstick_data::assets_dir();
    let gguf = Gguf::open(&assets.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .expect("run scripts/fetch-assets.sh");
    let tokenizer = tokenizer_from_gguf(&gguf).unwrap();
    let (net, _) = load_llama_gguf(&gguf).unwrap();
    let ids = tokenizer
        .encode(&std::fs::read_to_string(assets.join("wiki/eval.txt")).unwrap())
        .unwrap();
    let ppl = |net: &Network| {
        gstick_eval::perplexity(net, &ids, 1024, Some(2), |_, _| {})
            .unwrap()
            .ppl
    };
    let fp32 = ppl(&net);

    // Cloning shares the weights; the rewrite swaps nodes, so the float network stays intact.
    let mut w8 = net.clone();
    let reports = apply_rtn(&mut w8, &PtqConfig::default(), None).unwrap();
    assert_eq!(reports.len(), 30 * 7);
    assert!(reports.iter().all(|r| r.summary == "W8-per_channel"));
    assert!(reports
        .iter()
        .any(|r| r.name == "model.layers.29.mlp.down_proj"));
    let w8_ppl = ppl(&w8);

    let mut w4 = net.clone();
    apply_rtn(&mut w4, &w4_g64(), None).unwrap();
    let w4_ppl = ppl(&w4);
    assert_eq!(
        ppl(&net),
        fp32,
        "the float network is unchanged by the rewrites of its clones"
    );

    let rel = |p: f64| (p - fp32) / fp32;
    eprintln!("SmolLM2 ppl (2 x 1024): fp32 {fp32:.4}, RTN W8 per-channel {w8_ppl:.4} ({:+.3}%), RTN W4 g64 {w4_ppl:.4} ({:+.2}%)", rel(w8_ppl) * 100.0, rel(w4_ppl) * 100.0);

    // Deploy: the integer kernels give the fake-quantized network's perplexity within 0.1%, with
    // about a quarter (int8) and an eighth (int4) of the f32 weight bytes. The asymmetric W4 case
    // exercises the offsets.
    let mut w4_asym = net.clone();
    apply_rtn(
        &mut w4_asym,
        &PtqConfig {
            weight_symmetric: false,
            ..w4_g64()
        },
        None,
    )
    .unwrap();
    for (name, fake, expect_ratio) in [("W8", &w8, 0.26), ("W4 asym", &w4_asym, 0.16)] {
        let fake_ppl = ppl(fake);
        let mut deployed = net.clone();
        let report = install(&mut deployed, &quantized_model(fake)).unwrap();
        assert_eq!(report.layers, 30 * 7);
        let ratio = report.packed_bytes as f64 / report.f32_bytes as f64;
        assert!(ratio < expect_ratio, "{name}: packed/f32 bytes {ratio}");
        let deploy_ppl = ppl(&deployed);
        let diff = (deploy_ppl - fake_ppl) / fake_ppl;
        eprintln!("{name}: fake-quant {fake_ppl:.5}, deploy {deploy_ppl:.5} ({:+.4}%), bytes {ratio:.3} of f32", diff * 100.0);
        assert!(
            diff.abs() < 0.001,
            "{name}: deploy differs by {:.4}%",
            diff * 100.0
        );
    }
    assert!(
        rel(w8_ppl).abs() < 0.005,
        "W8 changed perplexity by {:.3}%",
        rel(w8_ppl) * 100.0
    );
    assert!(w4_ppl > w8_ppl, "4-bit costs more than 8-bit");
}
