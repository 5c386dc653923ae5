//! Llama-family decoder-only models (Llama, SmolLM2, Mistral; Qwen2 with q/k/v bias) as graphs of
//! the IR. Every decoder layer is a sub-graph `model.layers.N` of kind `DecoderLayer` whose Linear
//! nodes carry the Hugging Face names (`model.layers.3.self_attn.q_proj`), so parameter names,
//! hooks and quantization policies all speak the names users know.

use candle_core::Tensor;
use gstick_nn::cells::{
    Activation, ActivationKind, Add, Embedding, Linear, Mul, RmsNorm, Rope, RopeScaling,
    SelfAttention,
};
use gstick_nn::{Cell, Network};

use crate::gguf::Gguf;
use crate::hf::HfCheckpoint;
use crate::{Error, Result};

/// The shape of a Llama-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    /// The LM head reuses the token embedding.
    pub tie_embeddings: bool,
    /// q/k/v projections have biases (Qwen2).
    pub qkv_bias: bool,
    /// How RoPE frequencies are scaled for long contexts.
    pub rope_scaling: RopeScaling,
}

impl LlamaConfig {
    /// The heads a q/k projection tensor (`….q_proj.weight`, `….k_proj.bias`) is split into for
    /// RoPE, or `None` for any other tensor.
    pub fn rope_heads(&self, tensor: &str) -> Option<usize> {
        let stem = tensor
            .strip_suffix(".weight")
            .or_else(|| tensor.strip_suffix(".bias"))
            .unwrap_or(tensor);
        if stem.ends_with("q_proj") {
            Some(self.heads)
        } else if stem.ends_with("k_proj") {
            Some(self.kv_heads)
        } else {
            None
        }
    }

    /// Checks that the numbers describe a buildable model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if [
            self.vocab,
            self.hidden,
            self.intermediate,
            self.layers,
            self.heads,
            self.kv_heads,
            self.head_dim,
        ]
        .contains(&0)
        {
            return bad(format!("every size must be positive: {self:?}"));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.heads, self.kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head dimension {} must be even for rotary embeddings",
                self.head_dim
            ));
        }
        let scaling_ok = match &self.rope_scaling {
            RopeScaling::None => true,
            RopeScaling::Linear { factor } | RopeScaling::Llama3 { factor, .. } => *factor > 0.0,
            RopeScaling::Factors(f) => f.len() == self.head_dim / 2 && f.iter().all(|v| *v > 0.0),
        };
        if !scaling_ok {
            return bad(format!(
                "invalid RoPE scaling {:?} for head dimension {}",
                self.rope_scaling, self.head_dim
            ));
        }
        if !(self.rope_theta > 0.0 && self.rms_eps > 0.0) {
            return bad(format!(
                "rope theta {} and RMSNorm eps {} must be positive",
                self.rope_theta, self.rms_eps
            ));
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json` (model_type llama, mistral or qwen2).
    pub fn from_hf(ck: &HfCheckpoint) -> Result<Self> {
        let cfg = &ck.config;
        let bad = |m: String| Error::Load {
            path: ck.dir().join("config.json").display().to_string(),
            message: m,
        };
        let model_type = cfg["model_type"].as_str().unwrap_or("");
        if !matches!(model_type, "llama" | "mistral" | "qwen2") {
            return Err(bad(format!(
                "model_type `{model_type}` is not supported (llama, mistral, qwen2)"
            )));
        }
        let heads = ck.config_usize("num_attention_heads")?;
        let hidden = ck.config_usize("hidden_size")?;
        let (rope_theta, rope_scaling) = hf_rope(cfg).map_err(bad)?;
        let config = LlamaConfig {
            vocab: ck.config_usize("vocab_size")?,
            hidden,
            intermediate: ck.config_usize("intermediate_size")?,
            layers: ck.config_usize("num_hidden_layers")?,
            heads,
            kv_heads: cfg["num_key_value_heads"]
                .as_u64()
                .map_or(heads, |v| v as usize),
            head_dim: cfg["head_dim"]
                .as_u64()
                .map_or(hidden.checked_div(heads).unwrap_or(0), |v| v as usize),
            rope_theta,
            rms_eps: ck.config_f64("rms_norm_eps")?,
            tie_embeddings: cfg["tie_word_embeddings"].as_bool().unwrap_or(false)
                || !ck.has("lm_head.weight"),
            qkv_bias: model_type == "qwen2",
            rope_scaling,
        };
        config.validate()?;
        Ok(config)
    }

    /// The `config.json` of this model in Hugging Face's Llama (or Qwen2) form.
    pub fn to_hf_json(&self) -> Result<serde_json::Value> {
        let mut v = serde_json::json!({
            "architectures": [if self.qkv_bias { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": if self.qkv_bias { "qwen2" } else { "llama" },
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => {
                v["rope_scaling"] = serde_json::json!({
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_positions,
                })
            }
            RopeScaling::Factors(_) => {
                return Err(Error::Config(
                    "per-frequency RoPE factors have no config.json form".into(),
                ))
            }
        }
        Ok(v)
    }

    /// Reads the configuration from GGUF metadata (`general.architecture` = llama or qwen2).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.require_str("general.architecture")?.to_string();
        if !matches!(arch.as_str(), "llama" | "qwen2") {
            return Err(Error::Load {
                path: g.path().display().to_string(),
                message: format!("architecture `{arch}` is not supported (llama, qwen2)"),
            });
        }
        let key = |k: &str| format!("{arch}.{k}");
        let usize_of = |k: &str| -> Result<usize> { Ok(g.require_u64(&key(k))? as usize) };
        let hidden = usize_of("embedding_length")?;
        let heads = usize_of("attention.head_count")?;
        let kv_heads = g
            .get(&key("attention.head_count_kv"))
            .and_then(|v| v.as_u64())
            .map_or(heads, |v| v as usize);
        let head_dim = match g.get(&key("attention.key_length")).and_then(|v| v.as_u64()) {
            Some(d) => d as usize,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let vocab = match g.get(&key("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => g
                .tensor_info("token_embd.weight")?
                .dims
                .get(1)
                .copied()
                .unwrap_or(0),
        };
        let config = LlamaConfig {
            vocab,
            hidden,
            intermediate: usize_of("feed_forward_length")?,
            layers: usize_of("block_count")?,
            heads,
            kv_heads,
            head_dim,
            rope_theta: g
                .get(&key("rope.freq_base"))
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0),
            rms_eps: g.require_f64(&key("attention.layer_norm_rms_epsilon"))?,
            tie_embeddings: g.tensor_info("output.weight").is_err(),
            qkv_bias: g.tensor_info("blk.0.attn_q.bias").is_ok(),
            rope_scaling: match g.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
                Some("linear") => RopeScaling::Linear {
                    factor: g.require_f64(&key("rope.scaling.factor"))?,
                },
                None | Some("none") => match g.tensor_info("rope_freqs.weight") {
                    // llama.cpp stores Llama 3.1 scaling as per-frequency divisors.
                    Ok(_) => RopeScaling::Factors(
                        g.dequantize("rope_freqs.weight")?
                            .flatten_all()?
                            .to_vec1::<f32>()?
                            .into_iter()
                            .map(f64::from)
                            .collect(),
                    ),
                    Err(_) => RopeScaling::None,
                },
                Some(other) => {
                    return Err(Error::Load {
                        path: g.path().display().to_string(),
                        message: format!(
                            "RoPE scaling `{other}` is not supported yet (none, linear)"
                        ),
                    })
                }
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// The RoPE base and scaling of a Hugging Face `config.json`, in either layout transformers
/// writes: v4 (`rope_theta` and `rope_scaling` at the top level) or v5 (`rope_parameters` holding
/// `rope_theta`, `rope_type` and the scaling keys). The base defaults to 10000 only where
/// transformers defaults it (no key in either place). Per-layer-type parameters (Gemma 3's
/// `rope_parameters.full_attention`) and scaling types other than default, linear and llama3
/// are refused, naming the key.
pub fn hf_rope(cfg: &serde_json::Value) -> std::result::Result<(f64, RopeScaling), String> {
    let params = &cfg["rope_parameters"];
    let (theta, scaling) = match params {
        serde_json::Value::Null => (cfg["rope_theta"].clone(), cfg["rope_scaling"].clone()),
        serde_json::Value::Object(map) => {
            if let Some((key, _)) = map.iter().find(|(_, v)| v.is_object()) {
                return Err(format!(
                    "rope_parameters.{key}: per-layer-type RoPE parameters are not supported \
                     (one rope_parameters object with rope_theta and rope_type is)"
                ));
            }
            let top = cfg["rope_theta"].as_f64();
            let inner = params["rope_theta"].as_f64();
            if let (Some(t), Some(i)) = (top, inner) {
                if t != i {
                    return Err(format!(
                        "rope_theta {t} and rope_parameters.rope_theta {i} disagree"
                    ));
                }
            }
            let theta = inner.map_or(cfg["rope_theta"].clone(), serde_json::Value::from);
            (theta, params.clone())
        }
        other => return Err(format!("rope_parameters is not an object: {other}")),
    };
    let theta = match theta {
        serde_json::Value::Null => 10_000.0,
        v => v
            .as_f64()
            .ok_or_else(|| format!("rope_theta is not a number: {v}"))?,
    };
    let scaling = match &scaling {
        serde_json::Value::Null => RopeScaling::None,
        s => {
            let num = |k: &str| {
                s[k].as_f64()
                    .ok_or_else(|| format!("rope scaling key `{k}` is missing or not a number"))
            };
            match s["rope_type"].as_str().or(s["type"].as_str()) {
                None => return Err(format!("the RoPE parameters {s} name no rope_type")),
                Some("default") => RopeScaling::None,
                Some("linear") => RopeScaling::Linear {
                    factor: num("factor")?,
                },
                Some("llama3") => RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_positions: num("original_max_position_embeddings")?,
                },
                Some(other) => {
                    return Err(format!(
                        "RoPE type `{other}` is not supported yet (default, linear, llama3)"
                    ))
                }
            }
        }
    };
    Ok((theta, scaling))
}

/// Supplies a weight by Hugging Face name and expected row-major shape.
pub trait WeightSource {
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Tensor>;

    /// The weight's values as f32, row-major (exporters stream these; a source may avoid the
    /// tensor's copy).
    fn values(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.weight(name, shape)?;
        Ok(t.to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    }
}

impl<T: WeightSource + ?Sized> WeightSource for Box<T> {
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        (**self).weight(name, shape)
    }
    fn values(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        (**self).values(name, shape)
    }
}

impl<T: WeightSource + ?Sized> WeightSource for &mut T {
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        (**self).weight(name, shape)
    }
    fn values(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        (**self).values(name, shape)
    }
}

fn linear(
    src: &mut dyn WeightSource,
    name: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<Box<dyn Cell>> {
    let w = src.weight(&format!("{name}.weight"), &[out, inp])?;
    let b = if bias {
        Some(src.weight(&format!("{name}.bias"), &[out])?)
    } else {
        None
    };
    Ok(Box::new(Linear::from_tensors(w, b)?))
}

/// Decoder layer `layer` as a graph: hidden states (B, T, hidden) -> hidden states.
pub fn build_decoder_layer(
    c: &LlamaConfig,
    layer: usize,
    src: &mut dyn WeightSource,
) -> Result<Network> {
    let p = format!("model.layers.{layer}");
    let (h, q_width, kv_width) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let mut g = Network::new();
    let x = g.add_input("hidden_states");
    let norm1 = RmsNorm::from_tensor(
        src.weight(&format!("{p}.input_layernorm.weight"), &[h])?,
        c.rms_eps,
    )?;
    let n1 = g.add_cell("input_layernorm", Box::new(norm1), &[x])?;
    let q = g.add_cell(
        "self_attn.q_proj",
        linear(
            src,
            &format!("{p}.self_attn.q_proj"),
            q_width,
            h,
            c.qkv_bias,
        )?,
        &[n1],
    )?;
    let k = g.add_cell(
        "self_attn.k_proj",
        linear(
            src,
            &format!("{p}.self_attn.k_proj"),
            kv_width,
            h,
            c.qkv_bias,
        )?,
        &[n1],
    )?;
    let v = g.add_cell(
        "self_attn.v_proj",
        linear(
            src,
            &format!("{p}.self_attn.v_proj"),
            kv_width,
            h,
            c.qkv_bias,
        )?,
        &[n1],
    )?;
    let rope = Rope {
        theta: c.rope_theta,
        scaling: c.rope_scaling.clone(),
    };
    let attn = SelfAttention::causal(c.heads, c.kv_heads, c.head_dim, rope)?;
    let a = g.add_cell("self_attn.attention", Box::new(attn), &[q, k, v])?;
    let o = g.add_cell(
        "self_attn.o_proj",
        linear(src, &format!("{p}.self_attn.o_proj"), h, q_width, false)?,
        &[a],
    )?;
    let r1 = g.add_cell("residual_attn", Box::new(Add), &[x, o])?;
    let norm2 = RmsNorm::from_tensor(
        src.weight(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
        c.rms_eps,
    )?;
    let n2 = g.add_cell("post_attention_layernorm", Box::new(norm2), &[r1])?;
    let gate = g.add_cell(
        "mlp.gate_proj",
        linear(src, &format!("{p}.mlp.gate_proj"), c.intermediate, h, false)?,
        &[n2],
    )?;
    let up = g.add_cell(
        "mlp.up_proj",
        linear(src, &format!("{p}.mlp.up_proj"), c.intermediate, h, false)?,
        &[n2],
    )?;
    let act = g.add_cell(
        "mlp.act_fn",
        Box::new(Activation(ActivationKind::Silu)),
        &[gate],
    )?;
    let prod = g.add_cell("mlp.gate_up", Box::new(Mul), &[act, up])?;
    let down = g.add_cell(
        "mlp.down_proj",
        linear(src, &format!("{p}.mlp.down_proj"), h, c.intermediate, false)?,
        &[prod],
    )?;
    let r2 = g.add_cell("residual_mlp", Box::new(Add), &[r1, down])?;
    g.set_outputs(&[r2])?;
    Ok(g)
}

/// Builds the network: token ids (B, T) -> logits (B, T, vocab).
pub fn build_llama(c: &LlamaConfig, src: &mut dyn WeightSource) -> Result<Network> {
    c.validate()?;
    let mut g = Network::new();
    let ids = g.add_input("input_ids");
    let embed_weight = src.weight("model.embed_tokens.weight", &[c.vocab, c.hidden])?;
    let embed = Embedding::from_tensor(embed_weight)?;
    let head: Box<dyn Cell> = if c.tie_embeddings {
        // Shares the embedding's storage: one tensor, two uses.
        Box::new(Linear {
            weight: embed.weight.clone(),
            bias: None,
        })
    } else {
        linear(src, "lm_head", c.vocab, c.hidden, false)?
    };
    let mut h = g.add_cell("model.embed_tokens", Box::new(embed), &[ids])?;
    for layer in 0..c.layers {
        let sub = build_decoder_layer(c, layer, src)?;
        h = g.add_subgraph(&format!("model.layers.{layer}"), "DecoderLayer", sub, &[h])?;
    }
    let norm = RmsNorm::from_tensor(src.weight("model.norm.weight", &[c.hidden])?, c.rms_eps)?;
    h = g.add_cell("model.norm", Box::new(norm), &[h])?;
    let logits = g.add_cell("lm_head", head, &[h])?;
    g.set_outputs(&[logits])?;
    Ok(g)
}

/// Weights from a GGUF file (llama.cpp names), dequantized to f32. For the `llama` architecture
/// llama.cpp permutes q/k rows for its interleaved RoPE; they are un-permuted back to the Hugging
/// Face rotate-half layout (`qwen2` files are stored unpermuted).
pub struct GgufWeights<'a> {
    pub gguf: &'a Gguf,
    pub config: LlamaConfig,
    pub permuted_qk: bool,
}

impl<'a> GgufWeights<'a> {
    /// The weights of `gguf` with the configuration it describes.
    pub fn new(gguf: &'a Gguf) -> Result<Self> {
        Ok(GgufWeights {
            gguf,
            config: LlamaConfig::from_gguf(gguf)?,
            permuted_qk: permutes_qk(gguf)?,
        })
    }
}

/// Whether llama.cpp stored this file's q/k rows permuted for its interleaved RoPE (it does for
/// the `llama` architecture only).
pub fn permutes_qk(gguf: &Gguf) -> Result<bool> {
    Ok(gguf.require_str("general.architecture")? == "llama")
}

/// Every tensor of the model by Hugging Face name with its shape, in the order of the network's
/// parameters (`named_params`); a tied LM head is not listed (it is the embedding). Nothing is
/// loaded: the graph is built from placeholder values and only the names and shapes are kept.
pub fn tensor_specs(c: &LlamaConfig) -> Result<Vec<(String, Vec<usize>)>> {
    struct Shapes(std::collections::BTreeMap<String, Vec<usize>>);
    impl WeightSource for Shapes {
        fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
            self.0.insert(name.to_string(), shape.to_vec());
            Ok(Tensor::zeros(
                1,
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?)
        }
    }
    let mut shapes = Shapes(Default::default());
    let net = build_llama(c, &mut shapes)?;
    gstick_nn::named_params(&net)
        .into_iter()
        .filter(|(name, _)| !(c.tie_embeddings && name == "lm_head.weight"))
        .map(|(name, _)| {
            let shape = shapes.0.get(&name).cloned().ok_or_else(|| {
                Error::Config(format!("`{name}` was never read from the weight source"))
            })?;
            Ok((name, shape))
        })
        .collect()
}

/// The llama.cpp name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let mapped = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}"))
}

/// The row of our (Hugging Face) layout that GGUF row `g` of a q/k projection with `heads` heads
/// holds: GGUF row (head, i, t) holds our row (head, t, i).
pub fn hf_row(g: usize, rows: usize, heads: usize) -> usize {
    let head_dim = rows / heads.max(1);
    let (h, rest) = (g / head_dim, g % head_dim);
    h * head_dim + (rest % 2) * (head_dim / 2) + rest / 2
}

/// The GGUF row that holds row `r` of our layout (the inverse of [`hf_row`]).
pub fn gguf_row(r: usize, rows: usize, heads: usize) -> usize {
    let head_dim = rows / heads.max(1);
    let half = head_dim / 2;
    let (h, rest) = (r / head_dim, r % head_dim);
    h * head_dim + (rest % half.max(1)) * 2 + rest / half.max(1)
}

impl GgufWeights<'_> {
    /// The GGUF name of `name`, checked against the expected shape.
    fn checked_name(&self, name: &str, shape: &[usize]) -> Result<String> {
        let gguf_name =
            gguf_name(name).ok_or_else(|| Error::Config(format!("no GGUF name for `{name}`")))?;
        let info = self.gguf.tensor_info(&gguf_name)?;
        if info.shape() != shape {
            return Err(Error::Load {
                path: self.gguf.path().display().to_string(),
                message: format!("tensor `{gguf_name}` ({name}) has shape {:?}, the configuration needs {shape:?}", info.shape()),
            });
        }
        Ok(gguf_name)
    }

    /// The heads a tensor's rows are permuted by in the file, if they are.
    fn permuted_heads(&self, name: &str) -> Option<usize> {
        self.config.rope_heads(name).filter(|_| self.permuted_qk)
    }
}

impl WeightSource for GgufWeights<'_> {
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let values = self.values(name, shape)?;
        // A variable tensor: the parameter made from it shares its storage instead of copying.
        Ok(candle_core::Var::from_vec(values, shape, &candle_core::Device::Cpu)?.into_inner())
    }

    fn values(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let gguf_name = self.checked_name(name, shape)?;
        let values = self.gguf.dequantize_values(&gguf_name)?;
        let Some(heads) = self.permuted_heads(name) else {
            return Ok(values);
        };
        let rows = shape.first().copied().unwrap_or(1);
        if heads == 0 || !rows.is_multiple_of(heads * 2) {
            return Err(Error::Config(format!(
                "cannot un-permute {rows} rows of `{name}` into {heads} heads"
            )));
        }
        let cols = values.len() / rows;
        Ok((0..rows)
            .flat_map(|r| {
                let g = gguf_row(r, rows, heads);
                values[g * cols..(g + 1) * cols].iter().copied()
            })
            .collect())
    }
}

/// Loads a Llama-family model from a GGUF file.
pub fn load_llama_gguf(gguf: &Gguf) -> Result<(Network, LlamaConfig)> {
    let mut src = GgufWeights::new(gguf)?;
    let config = src.config.clone();
    let net = build_llama(&config, &mut src)?;
    Ok((net, config))
}

/// Loads a Llama-family model from a Hugging Face checkpoint directory.
pub fn load_llama_hf(dir: &std::path::Path) -> Result<(Network, LlamaConfig)> {
    let mut ck = HfCheckpoint::open(dir)?;
    let config = LlamaConfig::from_hf(&ck)?;
    let net = build_llama(&config, &mut ck)?;
    Ok((net, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The configs transformers 4.x and 5.x write for the same model give the same RoPE.
    #[test]
    fn rope_reads_the_v4_and_v5_layouts_alike() {
        let v4 = json!({"rope_theta": 100000.0});
        let v5 = json!({"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}});
        assert_eq!(hf_rope(&v4).unwrap(), (100000.0, RopeScaling::None));
        assert_eq!(hf_rope(&v5).unwrap(), (100000.0, RopeScaling::None));
        // transformers' own default, where neither layout names a base.
        assert_eq!(hf_rope(&json!({})).unwrap(), (10000.0, RopeScaling::None));
        let llama3 = RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 8192.0,
        };
        let scaling = json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let v4 = json!({"rope_theta": 500000.0, "rope_scaling": scaling});
        let mut params = scaling.clone();
        params["rope_theta"] = json!(500000.0);
        let v5 = json!({"rope_parameters": params});
        assert_eq!(hf_rope(&v4).unwrap(), (500000.0, llama3.clone()));
        assert_eq!(hf_rope(&v5).unwrap(), (500000.0, llama3));
        // v4's older `type` key, as transformers 5 keeps it beside rope_type.
        let linear =
            json!({"rope_parameters": {"type": "linear", "factor": 2.0, "rope_theta": 10000.0}});
        assert_eq!(
            hf_rope(&linear).unwrap(),
            (10000.0, RopeScaling::Linear { factor: 2.0 })
        );
    }

    #[test]
    fn rope_layouts_it_cannot_read_are_refused_by_name() {
        let cases = [
            (
                json!({"rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                    "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}}),
                "rope_parameters.full_attention",
            ),
            (
                json!({"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0}}),
                "`yarn`",
            ),
            (
                json!({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}}),
                "disagree",
            ),
            (json!({"rope_scaling": {"factor": 2.0}}), "no rope_type"),
            (json!({"rope_theta": "big"}), "rope_theta is not a number"),
        ];
        for (cfg, wanted) in cases {
            let err = hf_rope(&cfg).unwrap_err();
            assert!(err.contains(wanted), "{cfg}: {err}");
        }
    }
}
