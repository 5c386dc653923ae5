//! A tiny random Llama checkpoint (a Hugging Face directory with a byte-level tokenizer), for
//! examples and tests that need a real model on disk without fetching one.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::Rng as _;

use crate::llama::{tensor_specs, LlamaConfig};
use crate::{Error, Result};

/// The tiny model's shape: 256 byte tokens, hidden 64, two layers, grouped-query attention.
pub fn tiny_llama_config() -> LlamaConfig {
    LlamaConfig {
        vocab: 256,
        hidden: 64,
        intermediate: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tie_embeddings: false,
        qkv_bias: false,
        rope_scaling: gstick_nn::cells::RopeScaling::None,
    }
}

/// GPT-2's byte-to-character map: printable bytes stand for themselves, the others for
/// characters from U+0100 on, so every byte is a visible token.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap_or('?')
            }
        })
        .collect()
}

/// Writes `config.json`, `model.safetensors` (random weights drawn from `seed`) and a
/// byte-level `tokenizer.json` into `dir`, which is created.
pub fn write_tiny_llama(dir: &Path, seed: u64) -> Result<()> {
    let io = |e: std::io::Error| Error::Load {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let c = tiny_llama_config();
    let mut rng = gstick_nn::rng(seed);
    let mut tensors = HashMap::new();
    for (name, shape) in tensor_specs(&c)? {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            (0..n).map(|_| 1.0 + rng.random_range(-0.1..0.1)).collect()
        } else {
            (0..n).map(|_| rng.random_range(-0.1..0.1)).collect()
        };
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let config = c.to_hf_json()?;
    std::fs::write(dir.join("config.json"), config.to_string()).map_err(io)?;
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(i, ch)| (ch.to_string(), i.into()))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).map_err(io)?;
    Ok(())
}
