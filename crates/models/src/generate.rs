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

/// Extends `prompt` by up to `max_tokens` tokens, stopping after `eos` if given. Calls
/// `on_token` with each new id. Returns the new ids.
pub fn generate(
    net: &Network,
    prompt: &[u32],
    max_tokens: usize,
    sampling: Sampling,
    eos: Option<u32>,
    use_cache: bool,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    let mut exec = Executor::new(Mode::Eval, 0);
    if use_cache {
        exec.cache = Some(KvCache::new());
    }
    let mut rng = match sampling {
        Sampling::Temperature { seed, .. } => gstick_nn::rng(seed),
        Sampling::Greedy => gstick_nn::rng(0),
    };
    let mut ids = prompt.to_vec();
    let mut new = Vec::with_capacity(max_tokens);
    for _ in 0..max_tokens {
        // With the cache, the first step feeds the prompt and later steps only the newest token.
        let feed: &[u32] = if use_cache && !new.is_empty() {
            &ids[ids.len() - 1..]
        } else {
            &ids
        };
        let input = Tensor::from_vec(feed.to_vec(), (1, feed.len()), &Device::Cpu)?;
        let logits = exec
            .forward1(net, &input)?
            .squeeze(0)?
            .get(feed.len() - 1)?
            .to_dtype(DType::F32)?;
        let next = match sampling {
            Sampling::Greedy => logits.argmax(0)?.to_scalar::<u32>()?,
            Sampling::Temperature { temperature, .. } => {
                let probs: Vec<f32> =
                    candle_nn::ops::softmax_last_dim(&(logits / temperature.max(1e-6))?)?
                        .to_vec1()?;
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
        ids.push(next);
        new.push(next);
        on_token(next);
        if Some(next) == eos {
            break;
        }
    }
    Ok(new)
}
