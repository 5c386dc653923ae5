//! The library API end to end on a tiny synthetic model (no assets needed): source, calibration,
//! quantizer, save in every format, load onto the kernels; the in-memory `Ptq` algorithm giving
//! the same weights as the layer-wise run; refusals; hostile checkpoints.

use std::path::{Path, PathBuf};

use gstick::nn::CompAlgo;
use gstick::ptq::config::{PrecisionRecovery, WeightAlgo};
use gstick::ptq::{Ptq, PtqConfig, Recipe};
use gstick::{Calibration, Format, Quantizer, Source};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("gstick-lib-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    gstick::models::synthetic::write_tiny_llama(&d.join("float"), 7).unwrap();
    TempDir(d)
}

const TEXT: &str = "The layer-wise pipeline keeps one decoder layer in memory at a time. \
    Calibration text goes through the model once; statistics are gathered per Linear.";

fn calibration(source: &Source) -> Calibration {
    Calibration::from_text(source, &TEXT.repeat(8), 4, 48, 1).unwrap()
}

fn ppl(net: &gstick::nn::Network, source: &Source) -> f64 {
    let ids = source.tokenizer.encode(&TEXT.repeat(4)).unwrap();
    gstick::eval::perplexity(net, &ids, 64, Some(4), |_, _| {})
        .unwrap()
        .ppl
}

#[test]
fn quantize_save_and_load_in_every_format() {
    let dir = temp("formats");
    let source = Source::open(&dir.0.join("float")).unwrap();
    let calib = calibration(&source);
    let config = PtqConfig::weight_only(WeightAlgo::Gptq, 4, 32)
        .unwrap()
        .with_act_order(true);
    let layers_seen = std::cell::Cell::new(0);
    let quantized = Quantizer::new(config)
        .unwrap()
        .calibrate(&source, &calib)
        .on_layer(|_| layers_seen.set(layers_seen.get() + 1))
        .run()
        .unwrap();
    assert_eq!(layers_seen.get(), 2);
    assert_eq!(quantized.model.linears.len(), 14);
    assert!(quantized.plan.peak > quantized.plan.baseline);
    let summary = quantized.summary_table();
    assert!(summary.contains("GPTQ-W4-per_group"), "{summary}");

    let float = gstick::load(&dir.0.join("float")).unwrap();
    let mut fake = float.net.clone();
    gstick::ptq::fake_quant_linear::install_fake(&mut fake, &quantized.model).unwrap();
    let fake_ppl = ppl(&fake, &source);
    for format in [Format::Gs, Format::Gptq, Format::CompressedTensors] {
        let out = dir.0.join(format.name());
        quantized.save(format, &out).unwrap();
        let lm = gstick::load(&out).unwrap();
        assert_eq!(lm.deploy.as_ref().map(|d| d.layers), Some(14), "{format:?}");
        let p = ppl(&lm.net, &source);
        assert!(
            (p / fake_ppl - 1.0).abs() < 1e-4,
            "{format:?}: {p} vs {fake_ppl}"
        );
        // An existing output is never overwritten.
        assert!(quantized.save(format, &out).is_err());
        // A quantized directory is not a source to quantize again.
        let err = Source::open(&out).err().expect("refused").to_string();
        assert!(err.contains("already quantized"), "{err}");
    }
    // GGUF needs a GGUF source for its metadata: refused, nothing written.
    let out = dir.0.join("gguf");
    assert!(quantized.save(Format::Gguf, &out).is_err());
    assert!(!out.exists());
}

#[test]
fn the_in_memory_algorithm_gives_the_layer_wise_weights() {
    let dir = temp("inmemory");
    let source = Source::open(&dir.0.join("float")).unwrap();
    let calib = calibration(&source);
    let config = PtqConfig {
        precision_recovery: PrecisionRecovery::Gptq,
        ..PtqConfig::weight_only(WeightAlgo::Awq, 4, 32).unwrap()
    };
    let layerwise = Quantizer::new(config.clone())
        .unwrap()
        .calibrate(&source, &calib)
        .run()
        .unwrap();
    let mut net = gstick::load(&dir.0.join("float")).unwrap().net;
    let mut ptq = Ptq::new(Recipe::from(config))
        .unwrap()
        .with_calibration(calib.windows.clone());
    ptq.apply(&mut net).unwrap();
    let in_memory = &ptq.result().unwrap().model;
    assert_eq!(in_memory.linears.len(), 14);
    for (name, l) in &layerwise.model.linears {
        assert_eq!(
            in_memory.linears[name].weight, l.weight,
            "{name}: the two paths quantized differently"
        );
    }
    assert_eq!(in_memory.float_overrides, layerwise.model.float_overrides);
    let rows = ptq.summary(&net);
    assert_eq!(rows.len(), 14);
    assert!(
        rows.iter().all(|(_, s)| s == "AWQ-wclip-GPTQ-W4-per_group"),
        "{rows:?}"
    );
}

/// Pruned Linears stay float cells in memory; the summary still says what they got.
#[test]
fn the_in_memory_algorithm_labels_pruned_float_linears() {
    let dir = temp("prune-summary");
    let source = Source::open(&dir.0.join("float")).unwrap();
    let calib = calibration(&source);
    let recipe = Recipe::from_yaml(
        "weight_quant_dtype: none\nprune:\n  method: sparsegpt\nopname_blacklist: [down_proj]\n",
        "r.yaml",
    )
    .unwrap();
    let mut net = gstick::load(&dir.0.join("float")).unwrap().net;
    let mut ptq = Ptq::new(recipe)
        .unwrap()
        .with_calibration(calib.windows.clone());
    ptq.apply(&mut net).unwrap();
    let rows = ptq.summary(&net);
    assert_eq!(rows.len(), 14);
    for (name, label) in &rows {
        let want = if name.ends_with("down_proj") {
            "NA"
        } else {
            "SparseGPT-50%"
        };
        assert_eq!(label, want, "{name}");
    }
}

#[test]
fn unimplemented_recipes_are_refused_before_any_work() {
    for (yaml, says) in [
        ("outliers_suppression: smooth\n", "not implemented"),
        (
            "act_quant_dtype: int8\noutliers_suppression: outlier-suppression+\n",
            "not implemented",
        ),
        // A8W4 without act-order: the original refuses it in quantize mode.
        (
            "weight_quant_dtype: int4\nweight_quant_granularity: per_group\ngroup_size: 64\n\
             precision_recovery: gptq\nact_quant_dtype: int8\nact_quant_granularity: per_token\n\
             gptq:\n  desc_act: false\n",
            "gptq.desc_act",
        ),
    ] {
        let recipe = Recipe::from_yaml(yaml, "r.yaml").unwrap();
        let err = Quantizer::new(recipe).err().expect("refused").to_string();
        assert!(err.contains(says), "{yaml}: {err}");
        let err = Ptq::new(Recipe::from_yaml(yaml, "r.yaml").unwrap())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(says), "{yaml}: {err}");
    }
    // GPTQ without calibration windows.
    let dir = temp("nocalib");
    let source = Source::open(&dir.0.join("float")).unwrap();
    let gptq = PtqConfig::weight_only(WeightAlgo::Gptq, 4, 32).unwrap();
    let err = Quantizer::new(gptq)
        .unwrap()
        .calibrate(&source, &Calibration::default())
        .run()
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("calibration"), "{err}");
    // Nor static activations, whose ranges come from calibration.
    let statics = Recipe::from_yaml("act_quant_dtype: int8\n", "s.yaml").unwrap();
    let err = Quantizer::new(statics)
        .unwrap()
        .calibrate(&source, &Calibration::default())
        .run()
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("static activation"), "{err}");
}

/// Changes a tensor's bytes and shape.
type Corruption = fn(&mut Vec<u8>, &mut Vec<usize>);

/// Rewrites one tensor of a safetensors file with other bytes of the same dtype and shape, or
/// another shape.
fn corrupt(file: &Path, name: &str, f: impl Fn(&mut Vec<u8>, &mut Vec<usize>)) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let t = tensors.iter_mut().find(|t| t.0 == name).unwrap();
    f(&mut t.3, &mut t.2);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, file).unwrap();
}

#[test]
fn hostile_quantized_checkpoints_are_errors_that_name_the_tensor() {
    let dir = temp("hostile");
    let source = Source::open(&dir.0.join("float")).unwrap();
    let quantized = Quantizer::new(PtqConfig::weight_only(WeightAlgo::Rtn, 4, 32).unwrap())
        .unwrap()
        .calibrate(&source, &Calibration::default())
        .run()
        .unwrap();
    let stem = "model.layers.1.mlp.up_proj";
    let cases: [(&str, Format, &str, Corruption); 7] = [
        ("scale", Format::Gs, "weight_scale", |b, _| {
            b[..4].copy_from_slice(&(-1f32).to_le_bytes())
        }),
        ("shape", Format::Gs, "weight_offset", |b, s| {
            b.truncate(b.len() / 2);
            s[1] /= 2;
        }),
        ("qweight", Format::Gptq, "qweight", |b, s| {
            b.truncate(b.len() / 2);
            s[0] /= 2;
        }),
        ("zero scale", Format::Gptq, "scales", |b, _| {
            b[..2].copy_from_slice(&[0, 0])
        }),
        (
            "packed",
            Format::CompressedTensors,
            "weight_packed",
            |b, s| {
                b.truncate(b.len() / 2);
                s[0] /= 2;
            },
        ),
        (
            "ct scale",
            Format::CompressedTensors,
            "weight_scale",
            |b, _| b[..4].copy_from_slice(&f32::NAN.to_le_bytes()),
        ),
        (
            "ct shape",
            Format::CompressedTensors,
            "weight_shape",
            |b, _| b[..8].copy_from_slice(&7i64.to_le_bytes()),
        ),
    ];
    for (tag, format, suffix, f) in cases {
        let out = dir.0.join(tag);
        quantized.save(format, &out).unwrap();
        corrupt(
            &out.join("model.safetensors"),
            &format!("{stem}.{suffix}"),
            f,
        );
        let err = gstick::load(&out)
            .err()
            .expect("loaded a corrupt checkpoint")
            .to_string();
        assert!(err.contains(stem), "{tag}: {err}");
    }
}

/// The same inputs give the same model, bit for bit, for every algorithm (AWQ once depended on
/// the addresses its statistics happened to get).
#[test]
fn runs_are_deterministic() {
    let dir = temp("determinism");
    let source = Source::open(&dir.0.join("float")).unwrap();
    let calib = calibration(&source);
    let awq = PtqConfig::weight_only(WeightAlgo::Awq, 4, 32).unwrap();
    for config in [
        PtqConfig::weight_only(WeightAlgo::Gptq, 4, 32).unwrap(),
        awq.clone(),
        PtqConfig {
            precision_recovery: PrecisionRecovery::Gptq,
            ..awq
        },
    ] {
        let run = || {
            Quantizer::new(config.clone())
                .unwrap()
                .calibrate(&source, &calib)
                .run()
                .unwrap()
                .model
        };
        let first = run();
        for _ in 0..3 {
            assert_eq!(run(), first, "{}", config.summary());
        }
    }
}

#[test]
fn dynamic_a8w8_saves_as_gs_and_loads_onto_the_int8_kernels() {
    let dir = temp("a8w8");
    let source = Source::open(&dir.0.join("float")).unwrap();
    let calib = calibration(&source);
    let recipe = Recipe::from_yaml(
        "act_quant_dtype: int8\nact_quant_granularity: per_token\n",
        "a8w8.yaml",
    )
    .unwrap();
    let quantized = Quantizer::new(recipe)
        .unwrap()
        .calibrate(&source, &calib)
        .run()
        .unwrap();
    let summary = quantized.summary_table();
    assert!(summary.contains("W8-per_channel-A8-per_token"), "{summary}");
    let float = gstick::load(&dir.0.join("float")).unwrap();
    let mut fake = float.net.clone();
    gstick::ptq::fake_quant_linear::install_fake(&mut fake, &quantized.model).unwrap();
    let fake_ppl = ppl(&fake, &source);
    // Weight-only would not be this model: the GPTQ format refuses it, naming the layer.
    let err = quantized
        .save(Format::Gptq, &dir.0.join("gptq"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.0.") && err.contains("dynamic_per_token"),
        "{err}"
    );
    let out = dir.0.join("gs");
    quantized.save(Format::Gs, &out).unwrap();
    let lm = gstick::load(&out).unwrap();
    assert_eq!(lm.deploy.as_ref().map(|d| d.layers), Some(14));
    let kinds: Vec<String> = lm
        .net
        .nodes_recursive()
        .into_iter()
        .filter_map(|(_, n)| n.cell().map(|c| c.kind().to_string()))
        .filter(|k| k.contains("Linear"))
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "A8W8Linear").count(),
        14,
        "{kinds:?}"
    );
    let p = ppl(&lm.net, &source);
    assert!((p / fake_ppl - 1.0).abs() < 1e-4, "{p} vs {fake_ppl}");
    // And the fake-quantized network is not the float one.
    let float_ppl = ppl(&float.net, &source);
    assert_ne!(fake_ppl, float_ppl);
}

/// Every recipe in `examples/recipes` runs on the tiny model and gives the layers it promises.
#[test]
fn the_example_recipes_run() {
    let dir = temp("recipes");
    let source = Source::open(&dir.0.join("float")).unwrap();
    let calib = calibration(&source);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/recipes");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let recipe = Recipe::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let quantized = Quantizer::new(recipe)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .calibrate(&source, &calib)
            .run()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        use gstick::quant::{ActivationQuant, KvQuant};
        let m = &quantized.model;
        let with = |want: fn(Option<ActivationQuant>) -> bool| -> Vec<&str> {
            m.linears
                .iter()
                .filter(|(_, l)| want(l.activation))
                .map(|(n, _)| n.as_str())
                .collect()
        };
        let dynamic = with(|a| a == Some(ActivationQuant::DynamicPerToken));
        let statics = with(|a| matches!(a, Some(ActivationQuant::StaticPerTensor { .. })));
        let weight_only = with(|a| a.is_none());
        let smoothed = !m.float_overrides.is_empty();
        let kv: Vec<&KvQuant> = m.kv_caches.values().collect();
        let bits: std::collections::BTreeSet<u32> =
            m.linears.values().map(|l| l.weight.scheme.bits).collect();
        match name.as_str() {
            "w8a8_dynamic.yaml" => assert_eq!(dynamic.len(), 14, "{name}"),
            "w8a8_dynamic_smooth.yaml" => {
                assert_eq!(dynamic.len(), 14, "{name}");
                assert!(
                    smoothed,
                    "{name}: no smoothing scale was folded into a norm"
                );
            }
            "w8a8_dynamic_mlp.yaml" => {
                assert_eq!(dynamic.len(), 4, "{name}: {dynamic:?}");
                assert!(
                    dynamic
                        .iter()
                        .all(|n| n.ends_with("gate_proj") || n.ends_with("up_proj")),
                    "{dynamic:?}"
                );
            }
            "w8a8_static_smooth.yaml" | "w8a8_static_osl.yaml" => {
                assert_eq!(statics.len(), 14, "{name}");
                assert!(
                    smoothed,
                    "{name}: no smoothing scale was folded into a norm"
                );
            }
            "w8a8_mixed.yaml" => {
                assert_eq!((statics.len(), dynamic.len()), (8, 6), "{name}");
                assert!(
                    statics.iter().all(|n| n.contains("self_attn")),
                    "{statics:?}"
                );
            }
            "w8a8_dynamic_fallback.yaml" => {
                assert_eq!((dynamic.len(), weight_only.len()), (12, 2), "{name}");
                assert!(
                    weight_only.iter().all(|n| n.ends_with("down_proj")),
                    "{weight_only:?}"
                );
            }
            "a8w4.yaml" => {
                assert_eq!(dynamic.len(), 14, "{name}");
                assert_eq!(bits.into_iter().collect::<Vec<_>>(), [4], "{name}");
            }
            "kv_int8_dynamic.yaml" => {
                assert!(m.linears.is_empty(), "{name}");
                assert_eq!(kv, [&KvQuant::DynamicPerToken; 2], "{name}");
            }
            "w8a16_kv_int8_static.yaml" => {
                assert_eq!(weight_only.len(), 14, "{name}");
                assert_eq!(kv.len(), 2, "{name}");
                assert!(kv
                    .iter()
                    .all(|q| matches!(q, KvQuant::StaticPerChannel { .. })));
            }
            "sparsegpt_50.yaml" => {
                assert!(m.linears.is_empty(), "{name}: the kept weights stay f32");
                assert_eq!(m.float_overrides.len(), 14, "{name}");
                for t in m.float_overrides.values() {
                    let zeros = t.values.iter().filter(|v| **v == 0.0).count();
                    assert_eq!(zeros * 2, t.values.len(), "{name}");
                }
            }
            "sparsegpt_2of4_w4.yaml" => {
                assert_eq!(weight_only.len(), 14, "{name}");
                assert_eq!(bits.into_iter().collect::<Vec<_>>(), [4], "{name}");
                let two_four = gstick::ptq::sparsity::SparsityPattern::NOfM { n: 2, m: 4 };
                for l in m.linears.values() {
                    let w = l.weight.dequantize();
                    assert!(
                        gstick::ptq::sparsity::satisfies(&w, l.weight.cols, two_four, 0.5),
                        "{name}"
                    );
                }
            }
            other => panic!("{other}: no expectation for this recipe"),
        }
        // Each saves as a gs directory and loads back with the same model.
        let out = dir.0.join(name.replace(".yaml", ""));
        quantized
            .save(Format::Gs, &out)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let lm = gstick::load(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut fake = gstick::load(&dir.0.join("float")).unwrap().net;
        gstick::ptq::fake_quant_linear::install_fake(&mut fake, m).unwrap();
        assert_eq!(
            ppl(&lm.net, &source),
            ppl(&fake, &source),
            "{name}: deployed vs simulated"
        );
        seen.push(name);
    }
    assert_eq!(seen.len(), 12, "{seen:?}");
}
