//! Perplexity with the protocol of ASSETS.md: the whole text tokenized once, cut into
//! non-overlapping windows of `seqlen` tokens, the mean next-token negative log-likelihood over
//! every predicted position of every window (seqlen - 1 per window), ppl = exp(mean).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use gstick_models::layerwise::LayerwiseLm;
use gstick_models::llama::WeightSource;
use gstick_nn::cells::Linear;
use gstick_nn::kernels::linear_nll::linear_nll;
use gstick_nn::kernels::rows::nll_rows;
use gstick_nn::kernels::with_f32;
use gstick_nn::{Cell, CellCtx, Error, Executor, Mode, Network, Profile, Result};

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

/// A causal LM split into its body (token ids -> final hidden states) and its output head, so
/// the head can run on a few positions at a time: full-window logits (2048 x 49152 f32 = 400 MB,
/// and as much again for each temporary) would dominate time and memory.
pub struct SplitLm {
    body: Network,
    head: Option<Box<dyn Cell>>,
}

impl SplitLm {
    /// Splits off the output node when it is a cell with one input (the LM head); otherwise the
    /// whole network is the body.
    pub fn new(net: &Network) -> Result<Self> {
        let mut body = net.clone();
        let outputs = body.graph_outputs().to_vec();
        if let [out] = outputs[..] {
            let node = body.node(out)?;
            if let (Some(cell), [input]) = (node.cell(), node.inputs()) {
                let (head, input) = (cell.clone(), *input);
                body.set_output(0, input)?;
                body.erase(out)?;
                return Ok(SplitLm {
                    body,
                    head: Some(head),
                });
            }
        }
        Ok(SplitLm { body, head: None })
    }

    /// The network up to (not including) the head.
    pub fn body(&self) -> &Network {
        &self.body
    }
}

/// Positions per head chunk when the head is not a float Linear (a quantized deploy head):
/// 64 x 49152 f32 logits is 12.6 MB.
const HEAD_CHUNK: usize = 64;

/// Sum of the next-token NLL over one window of token ids (in f64), and the number of predictions.
pub fn window_nll(exec: &mut Executor, lm: &SplitLm, ids: &[u32]) -> Result<(f64, usize)> {
    let hidden = window_hidden(exec, lm, ids)?;
    head_nll(lm.head.as_deref(), &hidden, ids)
}

/// The final hidden states (T, hidden) of one window, the body's output.
fn window_hidden(exec: &mut Executor, lm: &SplitLm, ids: &[u32]) -> Result<Tensor> {
    if ids.len() < 2 {
        return Err(Error::Config("a window needs at least 2 tokens".into()));
    }
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu)?;
    Ok(exec.forward1(&lm.body, &input)?.squeeze(0)?)
}

/// Sum of the next-token NLL of `ids` from the final hidden states (T, hidden), the head applied
/// a few positions at a time.
fn head_nll(head: Option<&dyn Cell>, hidden: &Tensor, ids: &[u32]) -> Result<(f64, usize)> {
    let t = ids.len();
    // A float Linear head (no bias) goes through the fused kernel that never holds the logits.
    let linear = head.and_then(gstick_nn::cell::downcast::<Linear>);
    if let Some(linear) = linear.filter(|l| l.bias.is_none()) {
        let w = linear.weight.tensor();
        if w.dtype() == DType::F32 && hidden.dtype() == DType::F32 {
            let k = hidden.dim(D::Minus1)?;
            let h = hidden.narrow(0, 0, t - 1)?;
            let nll = with_f32(&h, |h| {
                with_f32(w, |w| linear_nll(h, w, k, &ids[1..]).map_err(Error::Config))
            })???;
            return Ok((nll.iter().sum(), t - 1));
        }
    }
    let mut total = 0f64;
    let mut ctx_rng = gstick_nn::rng(0);
    for start in (0..t - 1).step_by(HEAD_CHUNK) {
        let n = HEAD_CHUNK.min(t - 1 - start);
        let h = hidden.narrow(0, start, n)?;
        let logits = match head {
            Some(head) => head.forward(&[h], &mut CellCtx::new(Mode::Eval, &mut ctx_rng))?,
            None => h,
        };
        let vocab = logits.dim(D::Minus1)?;
        let targets = &ids[start + 1..start + 1 + n];
        let nll = with_f32(&logits.to_dtype(DType::F32)?, |l| {
            nll_rows(l, vocab, targets)
        })??;
        total += nll.iter().sum::<f64>();
    }
    Ok((total, t - 1))
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
    Ok(perplexity_run(net, ids, seqlen, windows, &mut progress, false)?.0)
}

/// [`perplexity`] with the time spent in each cell kind (and in the LM head with the NLL, as
/// `LM head + NLL`), for finding where the forward pass spends its time.
pub fn perplexity_profiled(
    net: &Network,
    ids: &[u32],
    seqlen: usize,
    windows: Option<usize>,
) -> Result<(PplReport, Profile)> {
    let (report, profile) = perplexity_run(net, ids, seqlen, windows, &mut |_, _| {}, true)?;
    Ok((report, profile.unwrap_or_default()))
}

fn perplexity_run(
    net: &Network,
    ids: &[u32],
    seqlen: usize,
    windows: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
    profiled: bool,
) -> Result<(PplReport, Option<Profile>)> {
    let windows = window_count(ids, seqlen, windows)?;
    let lm = SplitLm::new(net)?;
    let mut exec = Executor::new(Mode::Eval, 0);
    if profiled {
        exec.profile = Some(Profile::default());
    }
    let started = Instant::now();
    let mut sums = Vec::with_capacity(windows);
    for w in 0..windows {
        let window = &ids[w * seqlen..(w + 1) * seqlen];
        let hidden = window_hidden(&mut exec, &lm, window)?;
        let head_started = Instant::now();
        sums.push(head_nll(lm.head.as_deref(), &hidden, window)?);
        if let Some(p) = exec.profile.as_mut() {
            let e = p.by_kind.entry("LM head + NLL".into()).or_default();
            e.0 += head_started.elapsed();
            e.1 += 1;
        }
        progress(w + 1, windows);
    }
    Ok((report(sums, seqlen, started)?, exec.profile.take()))
}

/// How many whole windows of `seqlen` tokens to evaluate (all of them when `None`).
fn window_count(ids: &[u32], seqlen: usize, windows: Option<usize>) -> Result<usize> {
    if seqlen < 2 {
        return Err(Error::Config(format!(
            "seqlen must be at least 2, got {seqlen}"
        )));
    }
    let available = ids.len() / seqlen;
    let windows = windows.unwrap_or(available);
    if windows == 0 || windows > available {
        return Err(Error::Config(format!(
            "the text has {} tokens: {available} whole window(s) of {seqlen}, {windows} requested",
            ids.len()
        )));
    }
    Ok(windows)
}

/// The report from each window's (NLL sum, predictions).
fn report(sums: Vec<(f64, usize)>, seqlen: usize, started: Instant) -> Result<PplReport> {
    let windows = sums.len();
    let (mut total, mut count, mut per_window) = (0f64, 0usize, Vec::with_capacity(windows));
    for (w, (sum, n)) in sums.into_iter().enumerate() {
        if !sum.is_finite() {
            return Err(Error::Config(format!(
                "window {w}: the negative log-likelihood is not finite"
            )));
        }
        total += sum;
        count += n;
        per_window.push(sum / n as f64);
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

/// [`perplexity`] computed one decoder layer at a time from a weight source, so that only one
/// layer's weights (and the hidden states of the windows) are resident: the same computation
/// as the whole network's, layer by layer, so the same result. `progress` is called after each
/// layer with (done, total).
pub fn perplexity_layerwise<S: WeightSource>(
    lm: &mut LayerwiseLm<S>,
    ids: &[u32],
    seqlen: usize,
    windows: Option<usize>,
    mut progress: impl FnMut(usize, usize),
) -> Result<PplReport> {
    let model = |e: gstick_models::Error| match e {
        gstick_models::Error::Nn(e) => e,
        other => Error::Config(other.to_string()),
    };
    let windows = window_count(ids, seqlen, windows)?;
    let started = Instant::now();
    let cut: Vec<Vec<u32>> = (0..windows)
        .map(|w| ids[w * seqlen..(w + 1) * seqlen].to_vec())
        .collect();
    let mut hidden = lm.embed(&cut).map_err(model)?;
    let mut exec = Executor::new(Mode::Eval, 0);
    let layers = lm.config.layers;
    for index in 0..layers {
        let layer = lm.layer(index).map_err(model)?;
        for h in hidden.iter_mut() {
            *h = exec.forward1(&layer, h)?;
        }
        progress(index + 1, layers);
    }
    let head = SplitLm::new(&lm.head().map_err(model)?)?;
    let sums = cut
        .iter()
        .zip(&hidden)
        .map(|(w, h)| {
            let last = exec.forward1(&head.body, h)?.squeeze(0)?;
            head_nll(head.head.as_deref(), &last, w)
        })
        .collect::<Result<Vec<_>>>()?;
    report(sums, seqlen, started)
}
