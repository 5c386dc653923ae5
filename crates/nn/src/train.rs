//! The training loop: forward in train mode, the loss (cross-entropy by default), backward,
//! optimizer step, with callbacks at step and epoch boundaries (the hook point of QAT and pruning
//! algorithms).

use std::io::IsTerminal;
use std::time::Instant;

use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};

use crate::loss::{correct, cross_entropy};
use crate::optim::Optimizer;
use crate::schedule::LrSchedule;
use crate::{named_params, Error, Executor, Mode, Network, Result};

/// What callbacks see and may change.
pub struct TrainState<'a> {
    pub net: &'a mut Network,
    /// 0-based epoch.
    pub epoch: usize,
    pub epochs: usize,
    /// 0-based global step.
    pub step: usize,
    pub lr: f64,
    /// Loss of the last step, once one has run.
    pub loss: Option<f32>,
    /// Set to true to stop after the current step.
    pub stop: bool,
}

/// Hooks into training. Every method defaults to doing nothing.
pub trait Callback {
    fn on_epoch_begin(&mut self, _state: &mut TrainState) -> Result<()> {
        Ok(())
    }
    fn on_step_begin(&mut self, _state: &mut TrainState) -> Result<()> {
        Ok(())
    }
    fn on_step_end(&mut self, _state: &mut TrainState) -> Result<()> {
        Ok(())
    }
    fn on_epoch_end(&mut self, _state: &mut TrainState, _report: &EpochReport) -> Result<()> {
        Ok(())
    }
}

/// How training reports progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar when stderr is a terminal, JSON lines otherwise.
    Auto,
    Bar,
    /// One JSON object per epoch on stderr.
    JsonLines,
    Quiet,
}

/// One finished epoch.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub loss: f64,
    pub train_accuracy: f64,
    pub lr: f64,
    pub samples: usize,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// A training loss over (logits, labels).
pub type LossFn = Box<dyn Fn(&Tensor, &Tensor) -> Result<Tensor>>;

/// Trains a network with one optimizer and schedule.
pub struct Trainer {
    pub optimizer: Box<dyn Optimizer>,
    /// Cross-entropy unless an algorithm wraps it (`CompAlgo::loss`).
    pub loss: LossFn,
    pub schedule: LrSchedule,
    pub callbacks: Vec<Box<dyn Callback>>,
    pub progress: Progress,
    /// Seed of the executor's generator (dropout).
    pub seed: u64,
}

impl Trainer {
    pub fn new(optimizer: Box<dyn Optimizer>, schedule: LrSchedule) -> Self {
        Trainer {
            optimizer,
            loss: Box::new(cross_entropy),
            schedule,
            callbacks: Vec::new(),
            progress: Progress::Auto,
            seed: 0,
        }
    }

    /// Trains for `epochs`; `batches(epoch)` yields that epoch's (images, labels) batches, about
    /// `steps_per_epoch` of them.
    pub fn fit<I>(
        &mut self,
        net: &mut Network,
        epochs: usize,
        steps_per_epoch: usize,
        mut batches: impl FnMut(usize) -> I,
    ) -> Result<Vec<EpochReport>>
    where
        I: Iterator<Item = Result<(Tensor, Tensor)>>,
    {
        let mut exec = Executor::new(Mode::Train, self.seed);
        let mode = match self.progress {
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Bar,
            Progress::Auto => Progress::JsonLines,
            other => other,
        };
        let total_steps = epochs * steps_per_epoch;
        let mut step = 0;
        let mut reports = Vec::with_capacity(epochs);
        let mut stop = false;
        for epoch in 0..epochs {
            let lr = self.schedule.lr(step, total_steps, steps_per_epoch);
            let at = At {
                epoch,
                epochs,
                step,
                lr,
                loss: None,
            };
            stop |= notify(&mut self.callbacks, net, at, |cb, s| cb.on_epoch_begin(s))?;
            let bar = (mode == Progress::Bar).then(|| epoch_bar(epoch, epochs, steps_per_epoch));
            let started = Instant::now();
            let (mut loss_sum, mut hits, mut samples) = (0.0f64, 0usize, 0usize);
            for batch in batches(epoch) {
                let (images, labels) = batch?;
                let lr = self.schedule.lr(step, total_steps, steps_per_epoch);
                let at = At {
                    epoch,
                    epochs,
                    step,
                    lr,
                    loss: None,
                };
                stop |= notify(&mut self.callbacks, net, at, |cb, s| cb.on_step_begin(s))?;
                let logits = exec.forward1(net, &images)?;
                let loss = (self.loss)(&logits, &labels)?;
                let loss_value = loss.to_scalar::<f32>()?;
                if !loss_value.is_finite() {
                    return Err(locate_non_finite(net, &images, loss_value, epoch, step));
                }
                let grads = loss.backward()?;
                self.optimizer.step(&named_params(net), &grads, lr)?;
                let n = labels.dims()[0];
                loss_sum += loss_value as f64 * n as f64;
                hits += correct(&logits.detach(), &labels)?;
                samples += n;
                let at = At {
                    epoch,
                    epochs,
                    step,
                    lr,
                    loss: Some(loss_value),
                };
                stop |= notify(&mut self.callbacks, net, at, |cb, s| cb.on_step_end(s))?;
                step += 1;
                if let Some(bar) = &bar {
                    bar.inc(1);
                    bar.set_message(format!("loss {loss_value:.4}"));
                }
                if stop {
                    break;
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let seconds = started.elapsed().as_secs_f64();
            let report = EpochReport {
                epoch: epoch + 1,
                loss: loss_sum / samples.max(1) as f64,
                train_accuracy: hits as f64 / samples.max(1) as f64,
                lr,
                samples,
                seconds,
                images_per_s: samples as f64 / seconds.max(1e-9),
            };
            match mode {
                Progress::Bar => eprintln!(
                    "epoch {}/{epochs}: loss {:.4}, train accuracy {:.4}, {:.1} s ({:.0} images/s)",
                    report.epoch, report.loss, report.train_accuracy, seconds, report.images_per_s
                ),
                Progress::JsonLines => eprintln!(
                    "{}",
                    serde_json::json!({"event": "epoch", "report": &report})
                ),
                _ => {}
            }
            let at = At {
                epoch,
                epochs,
                step,
                lr,
                loss: None,
            };
            stop |= notify(&mut self.callbacks, net, at, |cb, s| {
                cb.on_epoch_end(s, &report)
            })?;
            reports.push(report);
            if stop {
                break;
            }
        }
        Ok(reports)
    }
}

/// Where training stands when a callback event fires.
struct At {
    epoch: usize,
    epochs: usize,
    step: usize,
    lr: f64,
    loss: Option<f32>,
}

/// Fires one event on every callback, in order; returns whether any of them asked to stop.
fn notify(
    callbacks: &mut [Box<dyn Callback>],
    net: &mut Network,
    at: At,
    event: impl Fn(&mut dyn Callback, &mut TrainState) -> Result<()>,
) -> Result<bool> {
    let At {
        epoch,
        epochs,
        step,
        lr,
        loss,
    } = at;
    let mut state = TrainState {
        net,
        epoch,
        epochs,
        step,
        lr,
        loss,
        stop: false,
    };
    for cb in callbacks.iter_mut() {
        event(cb.as_mut(), &mut state)?;
    }
    Ok(state.stop)
}

fn epoch_bar(epoch: usize, epochs: usize, steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("{}/{epochs}", epoch + 1));
    bar
}

/// Re-runs the batch with per-node checks to name the first layer that produced NaN or Inf.
fn locate_non_finite(
    net: &Network,
    images: &Tensor,
    loss: f32,
    epoch: usize,
    step: usize,
) -> Error {
    let mut exec = Executor::new(Mode::Eval, 0);
    exec.check_finite = true;
    match exec.forward1(net, images) {
        Err(e @ Error::NonFinite { .. }) => e,
        _ => Error::NonFiniteLoss { loss, epoch, step },
    }
}

/// Accuracy and mean loss of a network over labelled batches.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalReport {
    pub accuracy: f64,
    pub loss: f64,
    pub samples: usize,
    pub seconds: f64,
}

/// Evaluates `net` in eval mode over `batches`.
pub fn evaluate(
    net: &Network,
    batches: impl Iterator<Item = Result<(Tensor, Tensor)>>,
) -> Result<EvalReport> {
    let mut exec = Executor::new(Mode::Eval, 0);
    let started = Instant::now();
    let (mut loss_sum, mut hits, mut samples) = (0.0f64, 0usize, 0usize);
    for batch in batches {
        let (images, labels) = batch?;
        let logits = exec.forward1(net, &images)?;
        let n = labels.dims()[0];
        loss_sum += cross_entropy(&logits, &labels)?.to_scalar::<f32>()? as f64 * n as f64;
        hits += correct(&logits, &labels)?;
        samples += n;
    }
    if samples == 0 {
        return Err(Error::Config("evaluation set is empty".into()));
    }
    Ok(EvalReport {
        accuracy: hits as f64 / samples as f64,
        loss: loss_sum / samples as f64,
        samples,
        seconds: started.elapsed().as_secs_f64(),
    })
}
