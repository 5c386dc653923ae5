//! KV-cache int8 in the layer-wise pipeline (spec §3.9). An attention whose policy (resolved on
//! its full name, `model.layers.3.self_attn.attention`) asks for `kvcache_quant_dtype: int8` gets
//! an int8 cache: per token (dynamic, nothing to calibrate) or per channel (static: the float
//! pass records the largest |key| after RoPE and |value| of each channel, and the scales follow
//! from them). The quantized layer then runs with the int8 cache, so the next layer's inputs
//! include its error.

use std::sync::{Arc, Mutex};

use gstick_nn::cell::downcast;
use gstick_nn::cells::{KvRange, SelfAttention};
use gstick_nn::{Cell, Network};
use gstick_quant::KvQuant;

use crate::config::{QuantDtype, QuantGranularity};
use crate::{Error, Recipe, Result};

/// An attention of the layer whose cache is to be quantized.
pub struct KvTarget {
    /// Name inside the layer (`self_attn.attention`).
    pub local: String,
    pub full: String,
    pub dynamic: bool,
    observer: Option<Arc<Mutex<KvRange>>>,
}

impl KvTarget {
    /// The original's summary string.
    pub fn summary(&self) -> &'static str {
        if self.dynamic {
            "C8-per_token"
        } else {
            "C8-per_channel"
        }
    }
}

fn attention_at(layer: &Network, local: &str) -> Result<SelfAttention> {
    let id = layer.find(local)?;
    layer
        .node(id)?
        .cell()
        .and_then(|c| downcast::<SelfAttention>(c.as_ref()))
        .cloned()
        .ok_or_else(|| Error::Layer {
            layer: local.to_string(),
            message: "not a SelfAttention".into(),
        })
}

fn put(layer: &mut Network, local: &str, attn: SelfAttention) -> Result<()> {
    let id = layer.find(local)?;
    layer.replace_cell(id, Box::new(attn) as Box<dyn Cell>)?;
    Ok(())
}

/// The layer's attentions whose policy quantizes the KV cache.
pub fn targets(layer: &Network, prefix: &str, recipe: &Recipe) -> Result<Vec<KvTarget>> {
    let mut out = Vec::new();
    for (_, node) in layer.nodes() {
        if node
            .cell()
            .and_then(|c| downcast::<SelfAttention>(c.as_ref()))
            .is_none()
        {
            continue;
        }
        let local = node.name().to_string();
        let full = format!("{prefix}.{local}");
        let policy = recipe.layers.resolve(&full, &recipe.network)?;
        if policy.kvcache_quant_dtype == Some(QuantDtype::Int8) && !policy.is_blacklisted(&full) {
            out.push(KvTarget {
                local,
                full,
                dynamic: policy.kvcache_quant_granularity == QuantGranularity::PerToken,
                observer: None,
            });
        }
    }
    Ok(out)
}

/// Puts a range observer into every static target's attention (before the float pass).
pub fn observe(layer: &mut Network, targets: &mut [KvTarget]) -> Result<()> {
    for t in targets.iter_mut().filter(|t| !t.dynamic) {
        let mut attn = attention_at(layer, &t.local)?;
        let obs = Arc::new(Mutex::new(KvRange::default()));
        attn.kv_observer = Some(obs.clone());
        put(layer, &t.local, attn)?;
        t.observer = Some(obs);
    }
    Ok(())
}

/// Takes the observers out and returns each target's quantization, by full name.
pub fn quantizations(
    layer: &mut Network,
    targets: &mut [KvTarget],
) -> Result<Vec<(String, KvQuant)>> {
    let mut out = Vec::new();
    for t in targets.iter_mut() {
        let quant = match t.observer.take() {
            None => KvQuant::DynamicPerToken,
            Some(obs) => {
                let mut attn = attention_at(layer, &t.local)?;
                attn.kv_observer = None;
                put(layer, &t.local, attn)?;
                let range = obs.lock().map_err(|_| Error::Layer {
                    layer: t.full.clone(),
                    message: "KV observer lock poisoned".into(),
                })?;
                if range.key_absmax.is_empty() {
                    return Err(Error::Layer {
                        layer: t.full.clone(),
                        message: "the attention saw no input (was the layer run?)".into(),
                    });
                }
                KvQuant::static_from_absmax(&range.key_absmax, &range.value_absmax).map_err(
                    |message| Error::Layer {
                        layer: t.full.clone(),
                        message,
                    },
                )?
            }
        };
        out.push((t.full.clone(), quant));
    }
    Ok(out)
}

/// Gives the attention `local` of `layer` its int8 cache.
pub fn install(layer: &mut Network, local: &str, quant: KvQuant) -> Result<()> {
    let mut attn = attention_at(layer, local)?;
    attn.kv_quant = Some(quant);
    put(layer, local, attn)
}
