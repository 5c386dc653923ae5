//! Perplexity with the protocol of ASSETS.md: the whole text tokenized once, cut into
//! non-overlapping windows of `seqlen` tokens, the mean next-token negative log-likelihood over
//! every predicted position of every window (seqlen - 1 per window), ppl = exp(mean).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use gstick_nn::{Error, Executor, Mode, Network, Result};

/// The result of a perplexity run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PplReport {
    pub ppl: f64,
    pub nll_mean: f64,
    /// Tokens fed to the model (windows x seqlen).
    pub tokens: usize,
    /// Positions whose next token was predicted (windows x (seqlen - 1)).
    pub predicted: usize,
    pub windows: usize,
    pub seqlen: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub window_nll: Vec<f64>,
}

/// Sum of the next-token NLL over one window of token ids (in f64), and the number of predictions.
pub fn window_nll(exec: &mut Executor, net: &Network, ids: &[u32]) -> Result<(f64, usize)> {
    if ids.len() < 2 {
        return Err(Error::Config("a window needs at least 2 tokens".into()));
    }
    let t = ids.len();
    let input = Tensor::from_vec(ids.to_vec(), (1, t), &Device::Cpu)?;
    let logits = exec.forward1(net, &input)?.squeeze(0)?;
    let logits = logits.narrow(0, 0, t - 1)?.to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets = Tensor::from_vec(ids[1..].to_vec(), (t - 1, 1), &Device::Cpu)?;
    let picked: Vec<f32> = log_probs.gather(&targets, 1)?.flatten_all()?.to_vec1()?;
    Ok((picked.iter().map(|&v| -(v as f64)).sum(), t - 1))
}

/// Perplexity of `net` over the first `windows` windows of `seqlen` tokens of `ids` (all whole
/// windows when `None`). `progress` is called after each window with (done, total).
pub fn perplexity(
    net: &Network,
    ids: &[u32],
    seqlen: usize,
    windows: Option<usize>,
    mut progress: impl FnMut(usize, usize),
) -> Result<PplReport> {
    if seqlen < 2 {
        return Err(Error::Config(format!("seqlen must be at least 2, got {seqlen}")));
    }
    let available = ids.len() / seqlen;
    let windows = windows.unwrap_or(available);
    if windows == 0 || windows > available {
        return Err(Error::Config(format!(
            "the text has {} tokens: {available} whole window(s) of {seqlen}, {windows} requested",
            ids.len()
        )));
    }
    let mut exec = Executor::new(Mode::Eval, 0);
    let started = Instant::now();
    let (mut total, mut count, mut per_window) = (0f64, 0usize, Vec::with_capacity(windows));
    for w in 0..windows {
        let (sum, n) = window_nll(&mut exec, net, &ids[w * seqlen..(w + 1) * seqlen])?;
        if !sum.is_finite() {
            return Err(Error::Config(format!("window {w}: the negative log-likelihood is not finite")));
        }
        total += sum;
        count += n;
        per_window.push(sum / n as f64);
        progress(w + 1, windows);
    }
    let seconds = started.elapsed().as_secs_f64();
    let nll_mean = total / count as f64;
    Ok(PplReport {
        ppl: nll_mean.exp(),
        nll_mean,
        tokens: windows * seqlen,
        predicted: count,
        windows,
        seqlen,
        seconds,
        tokens_per_s: (windows * seqlen) as f64 / seconds.max(1e-9),
        window_nll: per_window,
    })
}
