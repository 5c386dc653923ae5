//! Text generation with a causal LM graph: greedy or seeded temperature sampling. With the KV
//! cache, the prompt runs once and each new token costs one single-position forward pass;
//! without it every step reruns the whole sequence (kept as the reference the cache is tested
//! against).

use candle_core::{DType, Device, Tensor};
use gstick_nn::{Executor, KvCache, Mode, Network};
use rand::Rng as _;

use crate::Result;

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Softmax(logits / temperature), drawn with a generator seeded by `seed`.
    Temperature {
        temperature: f64,
        seed: u64,
    },
}

/// A causal language model fed token by token: each call appends `ids` to the sequence it holds
/// and returns the logits for the token after the last one (borrowed: a decoder reuses its
/// buffer).
pub trait TokenLogits {
    fn feed(&mut self, ids: &[u32]) -> Result<&[f32]>;
}

/// A network run by the graph executor: with the KV cache the prompt runs once and each new token
/// is one single-position pass; without it every step reruns the whole sequence (the reference
/// the cache is tested against).
pub struct GraphLm<'a> {
    net: &'a Network,
    exec: Executor,
    use_cache: bool,
    ids: Vec<u32>,
    logits: Vec<f32>,
}

impl<'a> GraphLm<'a> {
    pub fn new(net: &'a Network, use_cache: bool) -> Self {
        let mut exec = Executor::new(Mode::Eval, 0);
        if use_cache {
            exec.cache = Some(KvCache::new());
        }
        GraphLm {
            net,
            exec,
            use_cache,
            ids: Vec::new(),
            logits: Vec::new(),
        }
    }
}

impl TokenLogits for GraphLm<'_> {
    fn feed(&mut self, ids: &[u32]) -> Result<&[f32]> {
        self.ids.extend_from_slice(ids);
        let feed: &[u32] = if self.use_cache { ids } else { &self.ids };
        let input = Tensor::from_vec(feed.to_vec(), (1, feed.len()), &Device::Cpu)?;
        self.logits = self
            .exec
            .forward1(self.net, &input)?
            .squeeze(0)?
            .get(feed.len() - 1)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        Ok(&self.logits)
    }
}

/// Extends `prompt` by up to `max_tokens` tokens, stopping after `eos` if given. Calls
/// `on_token` with each new id. Returns the new ids.
pub fn generate(
    net: &Network,
    prompt: &[u32],
    max_tokens: usize,
    sampling: Sampling,
    eos: Option<u32>,
    use_cache: bool,
    on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    generate_with(
        &mut GraphLm::new(net, use_cache),
        prompt,
        max_tokens,
        sampling,
        eos,
        on_token,
    )
}

/// [`generate`] with any [`TokenLogits`] model (the batch-1 decoder of `gstick-deploy`, say).
pub fn generate_with(
    lm: &mut dyn TokenLogits,
    prompt: &[u32],
    max_tokens: usize,
    sampling: Sampling,
    eos: Option<u32>,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(crate::Error::Config(
            "generation needs a prompt of at least one token".into(),
        ));
    }
    let mut rng = match sampling {
        Sampling::Temperature { seed, .. } => gstick_nn::rng(seed),
        Sampling::Greedy => gstick_nn::rng(0),
    };
    let mut new = Vec::with_capacity(max_tokens);
    let mut probs = Vec::new();
    for _ in 0..max_tokens {
        let feed: &[u32] = match new.last() {
            Some(last) => std::slice::from_ref(last),
            None => prompt,
        };
        let logits = lm.feed(feed)?;
        let next = match sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::Temperature { temperature, .. } => {
                softmax_into(logits, temperature.max(1e-6) as f32, &mut probs);
                let mut r: f32 = rng.random();
                let mut chosen = probs.len() - 1;
                for (i, p) in probs.iter().enumerate() {
                    if r < *p {
                        chosen = i;
                        break;
                    }
                    r -= p;
                }
                chosen as u32
            }
        };
        new.push(next);
        on_token(next);
        if Some(next) == eos {
            break;
        }
    }
    Ok(new)
}

/// The index of the largest logit (the first of equal ones; NaN never wins).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// probs <- softmax(logits / temperature).
fn softmax_into(logits: &[f32], temperature: f32, probs: &mut Vec<f32>) {
    let max = logits
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v / temperature));
    probs.clear();
    probs.extend(logits.iter().map(|&v| (v / temperature - max).exp()));
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
}
