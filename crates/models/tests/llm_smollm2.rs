//! SmolLM2 from its GGUF file against golden values made with Hugging Face `transformers`
//! (`scripts/golden/make_llm_fixtures.py` wrote `tests/fixtures/*.json`), plus hostile GGUF files.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use gstick_models::gguf::{Gguf, MetaValue};
use gstick_models::llama::{load_llama_gguf, LlamaConfig};
use gstick_models::tokenizer::tokenizer_from_gguf;
use gstick_nn::{Executor, Mode, Network};

fn smollm2_path() -> PathBuf {
    let p = gstick_data::assets_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-assets.sh",
        p.display()
    );
    p
}

fn fixture(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// The model is loaded once and shared by the tests of this file.
fn model() -> &'static (Network, LlamaConfig) {
    static MODEL: OnceLock<(Network, LlamaConfig)> = OnceLock::new();
    MODEL.get_or_init(|| load_llama_gguf(&Gguf::open(&smollm2_path()).unwrap()).unwrap())
}

fn logits(ids: &[u32]) -> Tensor {
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
    let mut exec = Executor::new(Mode::Eval, 0);
    exec.forward1(&model().0, &input)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gguf_metadata_and_config() {
    let g = Gguf::open(&smollm2_path()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(
        g.get("general.architecture"),
        Some(&MetaValue::String("llama".into()))
    );
    let c = LlamaConfig::from_gguf(&g).unwrap();
    assert_eq!(
        (
            c.layers,
            c.hidden,
            c.intermediate,
            c.heads,
            c.kv_heads,
            c.head_dim
        ),
        (30, 576, 1536, 9, 3, 64)
    );
    assert_eq!(
        (c.vocab, c.rope_theta, c.tie_embeddings),
        (49152, 100000.0, true)
    );
    let params: usize = g.tensors.iter().map(|t| t.elements()).sum();
    assert_eq!(params, 134_515_008, "ASSETS.md's parameter count");
    assert_eq!(
        g.tensor_info("blk.0.attn_q.weight").unwrap().ty,
        gstick_quant::GgmlType::Q4_1
    );
    assert_eq!(
        g.tensor_info("token_embd.weight").unwrap().ty,
        gstick_quant::GgmlType::Q8_0
    );
}

#[test]
fn gguf_dequantization_matches_candles_reader() {
    let path = smollm2_path();
    let ours = Gguf::open(&path).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    for name in [
        "blk.3.attn_k.weight",
        "blk.29.ffn_down.weight",
        "token_embd.weight",
        "output_norm.weight",
    ] {
        let theirs = content
            .tensor(&mut file, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let mine = ours.dequantize(name).unwrap();
        assert_eq!(mine.dims(), theirs.dims(), "{name}");
        let diff = (mine - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
}

#[test]
fn tokenizer_matches_transformers() {
    let g = Gguf::open(&smollm2_path()).unwrap();
    let tok = tokenizer_from_gguf(&g).unwrap();
    assert!(!tok.add_bos);
    let f = fixture("smollm2_tokenizer.json");
    for case in f["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), ids_of(&case["ids"]), "{text:?}");
        assert_eq!(
            tok.decode(&ids_of(&case["ids"])).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn logits_match_transformers_within_1e_3() {
    let f = fixture("smollm2_logits.json");
    let ids = ids_of(&f["input_ids"]);
    assert_eq!(ids.len(), 64);
    let ours = logits(&ids);
    assert_eq!(ours.dims(), &[64, 49152]);
    let vocab = ids_of(&f["vocab_ids"]);
    let picked = ours
        .index_select(&Tensor::new(vocab.as_slice(), &Device::Cpu).unwrap(), 1)
        .unwrap();
    let picked: Vec<Vec<f32>> = picked.to_vec2().unwrap();
    let argmax: Vec<u32> = ours.argmax(1).unwrap().to_vec1().unwrap();
    let maxes: Vec<f32> = ours.max(1).unwrap().to_vec1().unwrap();
    let sums: Vec<f64> = ours
        .to_dtype(DType::F64)
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut worst = 0f64;
    for pos in 0..64 {
        let reference = f["logits"][pos].as_array().unwrap();
        for (i, r) in reference.iter().enumerate() {
            worst = worst.max((picked[pos][i] as f64 - r.as_f64().unwrap()).abs());
        }
        worst = worst.max((maxes[pos] as f64 - f["logits_max"][pos].as_f64().unwrap()).abs());
        assert_eq!(
            argmax[pos] as u64,
            f["argmax_id"][pos].as_u64().unwrap(),
            "argmax at position {pos}"
        );
        let sum_ref = f["logits_sum"][pos].as_f64().unwrap();
        assert!(
            (sums[pos] - sum_ref).abs() < 1e-3 * 49152.0,
            "logit sum at {pos}: {} vs {sum_ref}",
            sums[pos]
        );
    }
    eprintln!("SmolLM2 logits: max |ours - transformers| = {worst:.2e}");
    assert!(worst < 1e-3, "max abs difference {worst}");
}

#[test]
fn greedy_next_token_is_paris() {
    let g = Gguf::open(&smollm2_path()).unwrap();
    let tok = tokenizer_from_gguf(&g).unwrap();
    let f = fixture("smollm2_tokenizer.json");
    let ids = tok.encode("The capital of France is").unwrap();
    assert_eq!(ids, ids_of(&f["greedy"]["prompt_ids"]));
    let out = logits(&ids);
    let last = out.get(ids.len() - 1).unwrap();
    let next = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
    assert_eq!(tok.decode(&[next]).unwrap(), " Paris");
    let reference = f["greedy"]["next_logit"].as_f64().unwrap();
    let ours = last.get(next as usize).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((ours - reference).abs() < 1e-3, "{ours} vs {reference}");
}

/// Writes `bytes` to a temp file and opens it as GGUF, returning the error text.
fn open_error(name: &str, bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("gstick-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    let err = match Gguf::open(&p) {
        Ok(_) => panic!("{name}: opened a broken file"),
        Err(e) => e.to_string(),
    };
    let _ = std::fs::remove_file(&p);
    assert!(
        err.contains(name),
        "{name}: error should name the file: {err}"
    );
    err
}

/// A minimal valid GGUF v3 file with one F32 tensor of 4 values.
fn tiny_gguf(tensor_type: u32, dims: &[u64], data_len: usize) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend(3u32.to_le_bytes());
    v.extend(1u64.to_le_bytes()); // tensors
    v.extend(1u64.to_le_bytes()); // metadata
    let key = b"general.architecture";
    v.extend((key.len() as u64).to_le_bytes());
    v.extend(key);
    v.extend(8u32.to_le_bytes());
    v.extend(5u64.to_le_bytes());
    v.extend(b"llama");
    let name = b"w";
    v.extend((name.len() as u64).to_le_bytes());
    v.extend(name);
    v.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        v.extend(d.to_le_bytes());
    }
    v.extend(tensor_type.to_le_bytes());
    v.extend(0u64.to_le_bytes());
    while !v.len().is_multiple_of(32) {
        v.push(0);
    }
    v.extend(std::iter::repeat_n(0u8, data_len));
    v
}

#[test]
fn hostile_gguf_files_give_clear_errors() {
    let dir = std::env::temp_dir().join(format!("gstick-gguf-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = dir.join("ok.gguf");
    std::fs::write(&ok, tiny_gguf(0, &[4], 16)).unwrap();
    let g = Gguf::open(&ok).unwrap();
    assert_eq!(g.dequantize("w").unwrap().dims(), &[4]);
    std::fs::remove_dir_all(&dir).unwrap();

    assert!(open_error("magic.gguf", b"GGML\x03\0\0\0").contains("bad magic"));
    assert!(open_error("empty.gguf", b"").contains("not a GGUF file"));
    let mut version = tiny_gguf(0, &[4], 16);
    version[4] = 9;
    assert!(open_error("version.gguf", &version).contains("version 9"));
    let full = tiny_gguf(0, &[4], 16);
    assert!(open_error("truncated_data.gguf", &full[..full.len() - 4]).contains("past the end"));
    assert!(open_error("truncated_header.gguf", &full[..40]).contains("truncated"));
    assert!(open_error("type.gguf", &tiny_gguf(77, &[4], 16)).contains("unknown GGML type id 77"));
    assert!(open_error("blocks.gguf", &tiny_gguf(8, &[5], 64)).contains("not a whole number"));
    assert!(open_error("dims.gguf", &tiny_gguf(0, &[1, 1, 1, 1, 1], 4)).contains("5 dimensions"));
    assert!(
        open_error("overflow.gguf", &tiny_gguf(0, &[u64::MAX / 2, 4], 16)).contains("overflow")
    );
    let mut huge_count = tiny_gguf(0, &[4], 16);
    huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open_error("count.gguf", &huge_count).contains("more than the file can hold"));
    // A corrupted copy of the real file: header damaged in the middle of the metadata.
    let mut real = std::fs::read(smollm2_path()).unwrap()[..4096].to_vec();
    real[200..260].fill(0xFF);
    let err = open_error("corrupted.gguf", &real);
    assert!(!err.is_empty());
}

#[test]
fn wrong_tensor_shapes_and_types_are_named() {
    // A model whose config disagrees with its tensors: the tiny file declares llama but lacks
    // everything else, so loading names the first missing key.
    let dir = std::env::temp_dir().join(format!("gstick-gguf-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("tiny.gguf");
    std::fs::write(&p, tiny_gguf(0, &[4], 16)).unwrap();
    let err = LlamaConfig::from_gguf(&Gguf::open(&p).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing metadata `llama.embedding_length`"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let bad = LlamaConfig {
        heads: 9,
        kv_heads: 4,
        ..model().1.clone()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("not a multiple"));
}

#[test]
fn hf_directory_written_from_the_gguf_gives_identical_logits() {
    let g = Gguf::open(&smollm2_path()).unwrap();
    let tok = tokenizer_from_gguf(&g).unwrap();
    let out = std::env::temp_dir().join(format!("gstick-hf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (net, config) = model();
    gstick_models::hf_export::export_hf(net, config, &tok, &out).unwrap();
    // An existing directory is never overwritten.
    let again = gstick_models::hf_export::export_hf(net, config, &tok, &out)
        .unwrap_err()
        .to_string();
    assert!(again.contains("already exists"), "{again}");

    let (hf_net, hf_config) = gstick_models::llama::load_llama_hf(&out).unwrap();
    assert_eq!(&hf_config, config);
    let ids = ids_of(&fixture("smollm2_logits.json")["input_ids"]);
    let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let hf_logits = Executor::new(Mode::Eval, 0)
        .forward1(&hf_net, &input)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let a: Vec<f32> = hf_logits.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = logits(&ids).flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        a == b,
        "logits differ between the GGUF and the HF directory"
    );

    // The same directory with the config.json transformers 5 writes (RoPE base inside
    // rope_parameters, scripts/golden/make_hf_v5_config.py) is the same model: once, a missed
    // base silently became 10000 here.
    let v5 = include_str!("fixtures/smollm2_config_transformers5.json");
    let v4 = std::fs::read_to_string(out.join("config.json")).unwrap();
    std::fs::write(out.join("config.json"), v5).unwrap();
    let (v5_net, v5_config) = gstick_models::llama::load_llama_hf(&out).unwrap();
    assert_eq!(&v5_config, config);
    let v5_logits: Vec<f32> = Executor::new(Mode::Eval, 0)
        .forward1(&v5_net, &input)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(
        v5_logits == b,
        "logits differ with the transformers 5 config"
    );
    std::fs::write(out.join("config.json"), v4).unwrap();

    let ck = gstick_models::hf::HfCheckpoint::open(&out).unwrap();
    let hf_tok = gstick_models::tokenizer::tokenizer_from_hf(&ck).unwrap();
    for case in fixture("smollm2_tokenizer.json")["cases"]
        .as_array()
        .unwrap()
    {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            hf_tok.encode(text).unwrap(),
            ids_of(&case["ids"]),
            "{text:?}"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn broken_hf_directories_give_clear_errors() {
    let dir = std::env::temp_dir().join(format!("gstick-hf-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = |d: &Path| {
        gstick_models::llama::load_llama_hf(d)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err(&dir).contains("config.json"), "{}", err(&dir));
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    assert!(err(&dir).contains("not valid JSON"));
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt_neox"}"#).unwrap();
    std::fs::write(dir.join("model.safetensors"), b"\x08\0\0\0\0\0\0\0{}      ").unwrap();
    assert!(err(&dir).contains("gpt_neox"), "{}", err(&dir));
    std::fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff\0\0\0\0garbage",
    )
    .unwrap();
    let e = err(&dir);
    assert!(e.contains("invalid safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn layerwise_execution_reproduces_the_full_forward_pass() {
    use gstick_models::layerwise::{calibration_windows, linear_inputs, run_layer, LayerwiseLm};
    use gstick_models::llama::GgufWeights;
    let g = Gguf::open(&smollm2_path()).unwrap();
    let tok = tokenizer_from_gguf(&g).unwrap();
    let text = fixture("smollm2_logits.json")["text"]
        .as_str()
        .unwrap()
        .repeat(3);
    let ids = tok.encode(&text).unwrap();
    let windows = calibration_windows(&ids, 2, 48, 7).unwrap();
    assert_eq!(
        windows,
        calibration_windows(&ids, 2, 48, 7).unwrap(),
        "seeded"
    );
    assert_ne!(windows[0], windows[1]);
    assert!(calibration_windows(&ids, 1, ids.len() + 1, 0).is_err());

    let config = LlamaConfig::from_gguf(&g).unwrap();
    let src = GgufWeights {
        gguf: &g,
        config: config.clone(),
        permuted_qk: true,
    };
    let mut lm = LayerwiseLm::new(config.clone(), src).unwrap();
    let mut hidden = lm.embed(&windows).unwrap();
    let mut exec = Executor::new(Mode::Eval, 0);
    for i in 0..config.layers {
        let layer = lm.layer(i).unwrap();
        if i == 0 {
            // Hooks see the input of every Linear of the layer, per window.
            let (seen, outputs) = linear_inputs(&layer, &hidden).unwrap();
            let names: Vec<&str> = seen.keys().map(String::as_str).collect();
            assert_eq!(
                names,
                [
                    "mlp.down_proj",
                    "mlp.gate_proj",
                    "mlp.up_proj",
                    "self_attn.k_proj",
                    "self_attn.o_proj",
                    "self_attn.q_proj",
                    "self_attn.v_proj"
                ]
            );
            assert_eq!(seen["mlp.down_proj"][0].dims(), &[1, 48, 1536]);
            assert_eq!(seen["self_attn.q_proj"].len(), 2);
            let same = (&seen["self_attn.q_proj"][1] - &seen["self_attn.v_proj"][1])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(
                same.to_scalar::<f32>().unwrap(),
                0.0,
                "q, k and v read the same normalized input"
            );
            hidden = outputs;
        } else {
            hidden = run_layer(&layer, &mut exec, &hidden).unwrap();
        }
    }
    assert!(lm.layer(config.layers).is_err());
    let head = lm.head().unwrap();
    for (w, h) in windows.iter().zip(&hidden) {
        let layered: Vec<f32> = exec
            .forward1(&head, h)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let full: Vec<f32> = logits(w).flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            layered == full,
            "layer-wise logits differ from the full forward pass"
        );
    }
}

#[test]
fn kv_cache_decoding_matches_full_recomputation() {
    use gstick_models::generate::{generate, Sampling};
    let ids = ids_of(&fixture("smollm2_logits.json")["input_ids"]);
    let net = &model().0;
    // Incremental: 40 prompt tokens at once, then one token at a time through the cache.
    let mut exec = Executor::new(Mode::Eval, 0);
    exec.cache = Some(gstick_nn::KvCache::new());
    let prompt = Tensor::from_vec(ids[..40].to_vec(), (1, 40), &Device::Cpu).unwrap();
    let mut rows = vec![exec.forward1(net, &prompt).unwrap().squeeze(0).unwrap()];
    for &id in &ids[40..] {
        let one = Tensor::from_vec(vec![id], (1, 1), &Device::Cpu).unwrap();
        rows.push(exec.forward1(net, &one).unwrap().squeeze(0).unwrap());
    }
    assert_eq!(
        exec.cache
            .as_ref()
            .unwrap()
            .positions("model.layers.0.self_attn.attention"),
        64
    );
    let incremental = Tensor::cat(&rows, 0).unwrap();
    let full = logits(&ids);
    let diff = (incremental - full)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-3, "incremental logits differ by {diff}");
    // Greedy and seeded sampling give the same tokens with and without the cache.
    for sampling in [
        Sampling::Greedy,
        Sampling::Temperature {
            temperature: 0.8,
            seed: 3,
        },
    ] {
        let cached = generate(net, &ids[..20], 12, sampling, None, true, |_| {}).unwrap();
        let plain = generate(net, &ids[..20], 12, sampling, None, false, |_| {}).unwrap();
        assert_eq!(cached, plain, "{sampling:?}");
        assert_eq!(cached.len(), 12);
    }
}
