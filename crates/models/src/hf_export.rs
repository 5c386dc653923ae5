//! Writes a causal LM as a Hugging Face checkpoint directory: `config.json`, `model.safetensors`
//! (f32) and `tokenizer.json`. The directory is built under a temporary name beside the target
//! and renamed into place, so a failed export leaves nothing half-written; an existing target is
//! never overwritten.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use gstick_nn::{named_params, Network};

use crate::llama::LlamaConfig;
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

pub fn export_hf(
    net: &Network,
    config: &LlamaConfig,
    tokenizer: &TextTokenizer,
    out: &Path,
) -> Result<()> {
    let err = |m: String| Error::Load {
        path: out.display().to_string(),
        message: m,
    };
    gstick_nn::atomic::write_dir(out, |tmp| -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, p) in named_params(net) {
            if config.tie_embeddings && name == "lm_head.weight" {
                continue; // the embedding, stored once
            }
            tensors.insert(name, p.tensor().detach());
        }
        candle_core::safetensors::save(&tensors, tmp.join("model.safetensors"))
            .map_err(|e| err(format!("writing model.safetensors: {e}")))?;
        let mut cfg = config.to_hf_json()?;
        if let Some(bos) = tokenizer.bos {
            cfg["bos_token_id"] = bos.into();
        }
        if let Some(eos) = tokenizer.eos {
            cfg["eos_token_id"] = eos.into();
        }
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| err(e.to_string()))?;
        std::fs::write(tmp.join("config.json"), text)
            .map_err(|e| err(format!("writing config.json: {e}")))?;
        tokenizer
            .inner
            .save(tmp.join("tokenizer.json"), false)
            .map_err(|e| err(format!("writing tokenizer.json: {e}")))?;
        Ok(())
    })
}
