//! BERT encoders (the MiniLM sentence-embedding asset) as graphs with Hugging Face names:
//! embeddings -> `encoder.layer.N` sub-graphs (`BertLayer`) -> mean over tokens -> L2 norm.
//! Input: token ids (1, T) of one unpadded sentence; output: its unit-length embedding (1, D).

use std::path::Path;

use gstick_nn::cells::{
    Activation, ActivationKind, Add, AddEmbedding, Embedding, L2Normalize, LayerNorm, Linear,
    MeanTokens, SelfAttention,
};
use gstick_nn::{Cell, Network, Param};

use crate::hf::HfCheckpoint;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub eps: f64,
}

impl BertConfig {
    pub fn from_hf(ck: &HfCheckpoint) -> Result<Self> {
        let bad = |m: String| Error::Load {
            path: ck.dir().join("config.json").display().to_string(),
            message: m,
        };
        if ck.config["model_type"].as_str() != Some("bert") {
            return Err(bad(format!(
                "model_type {:?} is not bert",
                ck.config["model_type"]
            )));
        }
        if let Some(act) = ck.config["hidden_act"].as_str() {
            if act != "gelu" {
                return Err(bad(format!("hidden_act `{act}` is not supported (gelu)")));
            }
        }
        let c = BertConfig {
            vocab: ck.config_usize("vocab_size")?,
            hidden: ck.config_usize("hidden_size")?,
            intermediate: ck.config_usize("intermediate_size")?,
            layers: ck.config_usize("num_hidden_layers")?,
            heads: ck.config_usize("num_attention_heads")?,
            max_positions: ck.config_usize("max_position_embeddings")?,
            type_vocab: ck.config_usize("type_vocab_size")?,
            eps: ck.config_f64("layer_norm_eps")?,
        };
        if c.heads == 0 || !c.hidden.is_multiple_of(c.heads) || c.type_vocab == 0 || c.layers == 0 {
            return Err(bad(format!("impossible shapes: {c:?}")));
        }
        Ok(c)
    }
}

fn linear(ck: &HfCheckpoint, name: &str, out: usize, inp: usize) -> Result<Box<dyn Cell>> {
    let w = ck.tensor(&format!("{name}.weight"), &[out, inp])?;
    let b = ck.tensor(&format!("{name}.bias"), &[out])?;
    Ok(Box::new(Linear::from_tensors(w, Some(b))?))
}

fn layer_norm(ck: &HfCheckpoint, name: &str, dim: usize, eps: f64) -> Result<Box<dyn Cell>> {
    let w = ck.tensor(&format!("{name}.weight"), &[dim])?;
    let b = ck.tensor(&format!("{name}.bias"), &[dim])?;
    Ok(Box::new(LayerNorm::from_tensors(w, b, eps)?))
}

fn bert_layer(c: &BertConfig, layer: usize, ck: &HfCheckpoint) -> Result<Network> {
    let p = format!("encoder.layer.{layer}");
    let h = c.hidden;
    let mut g = Network::new();
    let x = g.add_input("hidden_states");
    let q = g.add_cell(
        "attention.self.query",
        linear(ck, &format!("{p}.attention.self.query"), h, h)?,
        &[x],
    )?;
    let k = g.add_cell(
        "attention.self.key",
        linear(ck, &format!("{p}.attention.self.key"), h, h)?,
        &[x],
    )?;
    let v = g.add_cell(
        "attention.self.value",
        linear(ck, &format!("{p}.attention.self.value"), h, h)?,
        &[x],
    )?;
    let attn = SelfAttention::bidirectional(c.heads, h / c.heads)?;
    let a = g.add_cell("attention.self", Box::new(attn), &[q, k, v])?;
    let o = g.add_cell(
        "attention.output.dense",
        linear(ck, &format!("{p}.attention.output.dense"), h, h)?,
        &[a],
    )?;
    let r1 = g.add_cell("attention.residual", Box::new(Add), &[o, x])?;
    let n1 = g.add_cell(
        "attention.output.LayerNorm",
        layer_norm(ck, &format!("{p}.attention.output.LayerNorm"), h, c.eps)?,
        &[r1],
    )?;
    let up = g.add_cell(
        "intermediate.dense",
        linear(ck, &format!("{p}.intermediate.dense"), c.intermediate, h)?,
        &[n1],
    )?;
    let act = g.add_cell(
        "intermediate.act",
        Box::new(Activation(ActivationKind::Gelu)),
        &[up],
    )?;
    let down = g.add_cell(
        "output.dense",
        linear(ck, &format!("{p}.output.dense"), h, c.intermediate)?,
        &[act],
    )?;
    let r2 = g.add_cell("output.residual", Box::new(Add), &[down, n1])?;
    let n2 = g.add_cell(
        "output.LayerNorm",
        layer_norm(ck, &format!("{p}.output.LayerNorm"), h, c.eps)?,
        &[r2],
    )?;
    g.set_outputs(&[n2])?;
    Ok(g)
}

/// Builds the sentence-embedding network of a BERT checkpoint directory (mean pooling and L2
/// normalization, as sentence-transformers' all-MiniLM models use).
pub fn load_bert_embedder(dir: &Path) -> Result<(Network, BertConfig)> {
    let ck = HfCheckpoint::open(dir)?;
    let c = BertConfig::from_hf(&ck)?;
    let h = c.hidden;
    let mut g = Network::new();
    let ids = g.add_input("input_ids");
    let words =
        Embedding::from_tensor(ck.tensor("embeddings.word_embeddings.weight", &[c.vocab, h])?)?;
    let mut x = g.add_cell("embeddings.word_embeddings", Box::new(words), &[ids])?;
    let positions = Param::weight(ck.tensor(
        "embeddings.position_embeddings.weight",
        &[c.max_positions, h],
    )?)?;
    x = g.add_cell(
        "embeddings.position_embeddings",
        Box::new(AddEmbedding {
            weight: positions,
            row: None,
        }),
        &[x],
    )?;
    let types = Param::weight(ck.tensor(
        "embeddings.token_type_embeddings.weight",
        &[c.type_vocab, h],
    )?)?;
    x = g.add_cell(
        "embeddings.token_type_embeddings",
        Box::new(AddEmbedding {
            weight: types,
            row: Some(0),
        }),
        &[x],
    )?;
    x = g.add_cell(
        "embeddings.LayerNorm",
        layer_norm(&ck, "embeddings.LayerNorm", h, c.eps)?,
        &[x],
    )?;
    for layer in 0..c.layers {
        let sub = bert_layer(&c, layer, &ck)?;
        x = g.add_subgraph(&format!("encoder.layer.{layer}"), "BertLayer", sub, &[x])?;
    }
    x = g.add_cell("pooling.mean", Box::new(MeanTokens), &[x])?;
    x = g.add_cell("pooling.normalize", Box::new(L2Normalize::default()), &[x])?;
    g.set_outputs(&[x])?;
    Ok((g, c))
}
