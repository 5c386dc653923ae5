//! Llama-family checkpoints built here (tiny, random): Qwen2's q/k/v biases, RoPE scaling
//! variants, and broken checkpoints (wrong dtype, missing tensor, impossible shapes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gstick_models::llama::{load_llama_hf, LlamaConfig};
use gstick_nn::cells::{Rope, RopeScaling};
use gstick_nn::{named_params, Executor, KvCache, Mode};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tiny_config(model_type: &str) -> serde_json::Value {
    serde_json::json!({
        "model_type": model_type, "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false,
    })
}

/// Every tensor a tiny model of `config` needs, random; `bias` adds q/k/v biases.
fn tiny_tensors(bias: bool) -> HashMap<String, Tensor> {
    let mut t = HashMap::new();
    let mut seed = 0u64;
    let mut add = |name: String, shape: &[usize]| {
        seed += 1;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i as u64 * 7919 + seed * 104729) % 1000) as f32 / 1000.0 - 0.5) * 0.4)
            .collect();
        t.insert(name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
    };
    add("model.embed_tokens.weight".into(), &[40, 16]);
    add("lm_head.weight".into(), &[40, 16]);
    add("model.norm.weight".into(), &[16]);
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        for (n, shape) in [
            ("input_layernorm.weight", vec![16]),
            ("post_attention_layernorm.weight", vec![16]),
            ("self_attn.q_proj.weight", vec![16, 16]),
            ("self_attn.k_proj.weight", vec![8, 16]),
            ("self_attn.v_proj.weight", vec![8, 16]),
            ("self_attn.o_proj.weight", vec![16, 16]),
            ("mlp.gate_proj.weight", vec![24, 16]),
            ("mlp.up_proj.weight", vec![24, 16]),
            ("mlp.down_proj.weight", vec![16, 24]),
        ] {
            add(format!("{p}.{n}"), &shape);
        }
        if bias {
            add(format!("{p}.self_attn.q_proj.bias"), &[16]);
            add(format!("{p}.self_attn.k_proj.bias"), &[8]);
            add(format!("{p}.self_attn.v_proj.bias"), &[8]);
        }
    }
    t
}

fn write_checkpoint(
    tag: &str,
    config: &serde_json::Value,
    tensors: &HashMap<String, Tensor>,
) -> TempDir {
    let dir = std::env::temp_dir().join(format!("gstick-tiny-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
    TempDir(dir)
}

fn load_error(dir: &Path) -> String {
    load_llama_hf(dir)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "loaded".into())
}

#[test]
fn qwen2_has_qkv_biases_and_decodes_with_the_cache() {
    let dir = write_checkpoint("qwen2", &tiny_config("qwen2"), &tiny_tensors(true));
    let (net, config) = load_llama_hf(&dir.0).unwrap();
    assert!(config.qkv_bias && !config.tie_embeddings);
    let names: Vec<String> = named_params(&net).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"model.layers.1.self_attn.k_proj.bias".to_string()));
    assert!(names.contains(&"lm_head.weight".to_string()));
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 40).collect();
    let input = Tensor::from_vec(ids.clone(), (1, 12), &Device::Cpu).unwrap();
    let full = Executor::new(Mode::Eval, 0).forward1(&net, &input).unwrap();
    assert_eq!(full.dims(), &[1, 12, 40]);
    // Feeding the same tokens one at a time through the cache gives the same logits.
    let mut exec = Executor::new(Mode::Eval, 0);
    exec.cache = Some(KvCache::new());
    let mut rows = Vec::new();
    for &id in &ids {
        let one = Tensor::from_vec(vec![id], (1, 1), &Device::Cpu).unwrap();
        rows.push(exec.forward1(&net, &one).unwrap());
    }
    let stepwise = Tensor::cat(&rows, 1).unwrap();
    let diff = (stepwise - full)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
    // Without the biases the same config is refused with the missing tensor's name.
    let no_bias = write_checkpoint("qwen2-nobias", &tiny_config("qwen2"), &tiny_tensors(false));
    assert!(
        load_error(&no_bias.0).contains("missing tensor `model.layers.0.self_attn.q_proj.bias`")
    );
}

#[test]
fn broken_checkpoints_name_the_problem() {
    let mut tensors = tiny_tensors(false);
    tensors.insert(
        "model.norm.weight".into(),
        Tensor::zeros(16, DType::I64, &Device::Cpu).unwrap(),
    );
    let dir = write_checkpoint("dtype", &tiny_config("llama"), &tensors);
    let e = load_error(&dir.0);
    assert!(e.contains("`model.norm.weight` has dtype I64"), "{e}");

    let mut tensors = tiny_tensors(false);
    tensors.insert(
        "model.layers.1.mlp.up_proj.weight".into(),
        Tensor::zeros((24, 15), DType::F32, &Device::Cpu).unwrap(),
    );
    let dir = write_checkpoint("shape", &tiny_config("llama"), &tensors);
    let e = load_error(&dir.0);
    assert!(
        e.contains("`model.layers.1.mlp.up_proj.weight` has shape [24, 15]"),
        "{e}"
    );

    let mut config = tiny_config("llama");
    config["num_key_value_heads"] = 3.into();
    let dir = write_checkpoint("heads", &config, &tiny_tensors(false));
    assert!(
        load_error(&dir.0).contains("not a multiple of 3"),
        "{}",
        load_error(&dir.0)
    );

    let mut config = tiny_config("llama");
    config["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    let dir = write_checkpoint("yarn", &config, &tiny_tensors(false));
    assert!(
        load_error(&dir.0).contains("RoPE type `yarn` is not supported"),
        "{}",
        load_error(&dir.0)
    );

    // f16 and bf16 checkpoints load (converted to f32).
    let half: HashMap<String, Tensor> = tiny_tensors(false)
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap()))
        .collect();
    let dir = write_checkpoint("bf16", &tiny_config("mistral"), &half);
    let (net, _) = load_llama_hf(&dir.0).unwrap();
    assert!(named_params(&net)
        .iter()
        .all(|(_, p)| p.tensor().dtype() == DType::F32));
}

#[test]
fn rope_scaling_variants() {
    let head_dim = 64;
    let base = Rope::new(500000.0).inv_freq(head_dim);
    let linear = Rope {
        theta: 500000.0,
        scaling: RopeScaling::Linear { factor: 4.0 },
    }
    .inv_freq(head_dim);
    assert!(base
        .iter()
        .zip(&linear)
        .all(|(b, l)| (b / 4.0 - l).abs() < 1e-15));
    // Llama 3.1's published setting: factor 8, low 1, high 4, original context 8192.
    let llama3 = Rope {
        theta: 500000.0,
        scaling: RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 8192.0,
        },
    }
    .inv_freq(head_dim);
    let wavelen = |f: f64| 2.0 * std::f64::consts::PI / f;
    for (b, s) in base.iter().zip(&llama3) {
        if wavelen(*b) < 8192.0 / 4.0 {
            assert_eq!(b, s, "short wavelengths are kept");
        } else if wavelen(*b) > 8192.0 {
            assert!(
                (b / 8.0 - s).abs() < 1e-18,
                "long wavelengths are divided by the factor"
            );
        } else {
            assert!(*s < *b && *s > b / 8.0, "the band between is blended");
        }
    }
    assert_eq!(base[0], llama3[0]);
    assert!(llama3[31] < base[31]);
    let config = LlamaConfig {
        vocab: 40,
        hidden: 16,
        intermediate: 24,
        layers: 1,
        heads: 4,
        kv_heads: 2,
        head_dim: 4,
        rope_theta: 1e4,
        rms_eps: 1e-6,
        tie_embeddings: true,
        qkv_bias: false,
        rope_scaling: RopeScaling::Factors(vec![1.0]),
    };
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("invalid RoPE scaling"));
}

#[test]
fn sharded_checkpoints_load_like_single_files() {
    let tensors = tiny_tensors(false);
    let single = write_checkpoint("single", &tiny_config("llama"), &tensors);
    let sharded =
        TempDir(std::env::temp_dir().join(format!("gstick-tiny-sharded-{}", std::process::id())));
    std::fs::create_dir_all(&sharded.0).unwrap();
    std::fs::write(
        sharded.0.join("config.json"),
        tiny_config("llama").to_string(),
    )
    .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, sharded.0.join(file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.0.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let ids = Tensor::from_vec(vec![1u32, 5, 9, 2], (1, 4), &Device::Cpu).unwrap();
    let run = |dir: &Path| -> Vec<f32> {
        let (net, _) = load_llama_hf(dir).unwrap();
        Executor::new(Mode::Eval, 0)
            .forward1(&net, &ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(run(&single.0), run(&sharded.0));
    // A shard name that escapes the directory is refused.
    let evil = serde_json::json!({"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}});
    std::fs::write(
        sharded.0.join("model.safetensors.index.json"),
        evil.to_string(),
    )
    .unwrap();
    assert!(
        load_error(&sharded.0).contains("outside the directory"),
        "{}",
        load_error(&sharded.0)
    );
}
