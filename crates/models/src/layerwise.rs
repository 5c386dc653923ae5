//! Layer-by-layer execution of a Llama-family model, the backbone of post-training quantization:
//! embed a set of calibration windows once, then run one decoder layer at a time on the cached
//! hidden states, each layer's weights loaded just before it runs and dropped after, so only one
//! layer is resident while the rest stay in the memory-mapped file.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use gstick_nn::cells::{Linear, RmsNorm};
use gstick_nn::{Executor, Mode, Network};
use rand::Rng as _;

use crate::llama::{build_decoder_layer, LlamaConfig, WeightSource};
use crate::{Error, Result};

/// A model whose parts are built on demand from a weight source.
pub struct LayerwiseLm<S: WeightSource> {
    pub config: LlamaConfig,
    src: S,
}

impl<S: WeightSource> LayerwiseLm<S> {
    pub fn new(config: LlamaConfig, src: S) -> Result<Self> {
        config.validate()?;
        Ok(LayerwiseLm { config, src })
    }

    /// The token embeddings of each window, (1, T, hidden): the inputs of decoder layer 0.
    /// The rows are picked from the table as the `Embedding` cell does, without making the
    /// table a parameter.
    pub fn embed(&mut self, windows: &[Vec<u32>]) -> Result<Vec<Tensor>> {
        let c = &self.config;
        let table = self
            .src
            .weight("model.embed_tokens.weight", &[c.vocab, c.hidden])?
            .detach();
        windows
            .iter()
            .map(|w| {
                let ids = Tensor::from_vec(w.clone(), w.len(), &Device::Cpu)?;
                Ok(table
                    .index_select(&ids, 0)?
                    .reshape((1, w.len(), c.hidden))?)
            })
            .collect()
    }

    /// Decoder layer `index`, with its weights loaded now.
    pub fn layer(&mut self, index: usize) -> Result<Network> {
        if index >= self.config.layers {
            return Err(Error::Config(format!(
                "layer {index} does not exist (the model has {})",
                self.config.layers
            )));
        }
        build_decoder_layer(&self.config, index, &mut self.src)
    }

    /// Final norm and LM head: hidden states -> logits.
    pub fn head(&mut self) -> Result<Network> {
        let c = &self.config;
        let norm = RmsNorm::from_tensor(
            self.src.weight("model.norm.weight", &[c.hidden])?,
            c.rms_eps,
        )?;
        let name = if c.tie_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let head = Linear::from_tensors(self.src.weight(name, &[c.vocab, c.hidden])?, None)?;
        let mut g = Network::new();
        let x = g.add_input("hidden_states");
        let n = g.add_cell("model.norm", Box::new(norm), &[x])?;
        let logits = g.add_cell("lm_head", Box::new(head), &[n])?;
        g.set_outputs(&[logits])?;
        Ok(g)
    }
}

/// Runs `layer` on each cached input and returns the outputs (the next layer's inputs).
pub fn run_layer(layer: &Network, exec: &mut Executor, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    inputs
        .iter()
        .map(|x| Ok(exec.forward1(layer, x)?))
        .collect()
}

/// Inputs seen by each Linear node of a layer, one tensor per window, by name inside the layer.
pub type LinearInputs = BTreeMap<String, Vec<Tensor>>;

/// Runs `layer` on each input and collects, for every Linear node of the layer, the inputs it
/// saw (one tensor per window), keyed by the node's name inside the layer (`self_attn.q_proj`).
/// Also returns the layer's outputs.
pub fn linear_inputs(layer: &Network, inputs: &[Tensor]) -> Result<(LinearInputs, Vec<Tensor>)> {
    let seen: Arc<Mutex<LinearInputs>> = Arc::default();
    let mut exec = Executor::new(Mode::Eval, 0);
    let sink = seen.clone();
    exec.add_hook_all(move |call| {
        if call.kind == "Linear" {
            if let (Ok(mut map), Some(x)) = (sink.lock(), call.inputs.first()) {
                map.entry(call.name.to_string())
                    .or_default()
                    .push(x.clone());
            }
        }
        Ok(())
    });
    let outputs = run_layer(layer, &mut exec, inputs)?;
    drop(exec);
    let map = Arc::try_unwrap(seen).map_err(|_| Error::Config("hook still alive".into()))?;
    Ok((
        map.into_inner()
            .map_err(|_| Error::Config("hook panicked".into()))?,
        outputs,
    ))
}

/// `count` windows of `len` tokens at seeded random positions of `ids`.
pub fn calibration_windows(
    ids: &[u32],
    count: usize,
    len: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    if len == 0 || ids.len() < len {
        return Err(Error::Config(format!(
            "the calibration text has {} tokens, a window needs {len}",
            ids.len()
        )));
    }
    let mut rng = gstick_nn::rng(seed);
    Ok((0..count)
        .map(|_| {
            let start = rng.random_range(0..=ids.len() - len);
            ids[start..start + len].to_vec()
        })
        .collect())
}
