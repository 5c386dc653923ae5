//! Static post-training quantization of CNNs: the fake-quantized network SimQAT's rewrite makes
//! is calibrated instead of trained. Weight ranges come from the weights; each activation fake
//! quantizer is swapped (through the Rewrite API) for an identity observer while calibration
//! batches run in float, then put back with the range the observer saw: the min/max, or
//! percentiles of a deterministic sample of the values.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use gstick_nn::cell::downcast;
use gstick_nn::error::expect_inputs;
use gstick_nn::{Cell, CellCtx, Executor, Mode, Network};

use super::cells::{FakeQuant, QuantConv2d, QuantConvBn, QuantLinear};

/// How an activation range is chosen from calibration data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CalibMethod {
    /// The smallest and largest values seen.
    MinMax,
    /// The given percentile of the values (e.g. 99.99) as the maximum and its mirror as the
    /// minimum: outliers are clipped to buy resolution for the rest.
    Percentile(f64),
}

/// Values kept per observer per batch for percentiles.
const SAMPLE_PER_BATCH: usize = 1 << 16;

#[derive(Debug, Default)]
struct RangeStats {
    min: f32,
    max: f32,
    sample: Vec<f32>,
    seen: u64,
}

/// Identity cell that records the range of what passes through it.
#[derive(Clone, Debug)]
struct RangeObserver {
    stats: Arc<Mutex<RangeStats>>,
    keep_sample: bool,
}

impl Cell for RangeObserver {
    fn kind(&self) -> &'static str {
        "RangeObserver"
    }

    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("RangeObserver", inputs, 1)?;
        let x = &inputs[0];
        let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut s = self
            .stats
            .lock()
            .map_err(|_| gstick_nn::Error::Config("observer lock poisoned".into()))?;
        for &v in &values {
            if !v.is_finite() {
                return Err(gstick_nn::Error::Config(format!(
                    "non-finite activation {v} during calibration"
                )));
            }
        }
        let (lo, hi) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        if s.seen == 0 {
            (s.min, s.max) = (lo, hi);
        } else {
            (s.min, s.max) = (s.min.min(lo), s.max.max(hi));
        }
        s.seen += 1;
        if self.keep_sample {
            let stride = values.len().div_ceil(SAMPLE_PER_BATCH).max(1);
            s.sample.extend(values.iter().step_by(stride));
        }
        Ok(x.clone())
    }
}

/// Sets every quantized layer's weight range from its evaluation-mode weight (what the fake
/// quantizer will see).
pub fn observe_weights(net: &Network) -> crate::Result<()> {
    for (name, node) in net.nodes_recursive() {
        let Some(cell) = node.cell() else { continue };
        let cell = cell.as_ref();
        let layer = |e: gstick_nn::Error| crate::Error::Layer {
            layer: name.clone(),
            message: e.to_string(),
        };
        if let Some(c) = downcast::<QuantConv2d>(cell) {
            c.weight_quant
                .set_range(c.conv.weight.tensor())
                .map_err(layer)?;
        } else if let Some(l) = downcast::<QuantLinear>(cell) {
            l.weight_quant
                .set_range(l.linear.weight.tensor())
                .map_err(layer)?;
        } else if let Some(c) = downcast::<QuantConvBn>(cell) {
            let (w, _, _) = c.eval_parts().map_err(layer)?;
            c.weight_quant.set_range(&w).map_err(layer)?;
        }
    }
    Ok(())
}

/// Swaps every fake quantizer for an observer, remembering the originals in order.
fn swap_in(
    g: &mut Network,
    keep_sample: bool,
    swapped: &mut Vec<(FakeQuant, Arc<Mutex<RangeStats>>)>,
) -> crate::Result<()> {
    g.replace_cells(|site| {
        let Some(fq) = downcast::<FakeQuant>(site.cell.as_ref()) else {
            return Ok::<_, crate::Error>(None);
        };
        let stats = Arc::new(Mutex::new(RangeStats::default()));
        swapped.push((fq.clone(), stats.clone()));
        Ok(Some(
            Box::new(RangeObserver { stats, keep_sample }) as Box<dyn Cell>
        ))
    })?;
    Ok(())
}

/// Puts the fake quantizers back in the order they were taken out.
fn swap_out(g: &mut Network, originals: &mut std::vec::IntoIter<FakeQuant>) -> crate::Result<()> {
    g.replace_cells(|site| {
        if site.cell.kind() != "RangeObserver" {
            return Ok::<_, crate::Error>(None);
        }
        let fq = originals.next().ok_or_else(|| crate::Error::Layer {
            layer: site.qualified.to_string(),
            message: "observer without its fake quantizer".into(),
        })?;
        Ok(Some(Box::new(fq) as Box<dyn Cell>))
    })?;
    Ok(())
}

fn percentile(sorted: &[f32], p: f64) -> f32 {
    let idx = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Calibrates a fake-quantized network (after `SimQat::apply`) on `batches` of float inputs.
/// Returns the number of activation quantizers calibrated. All or nothing.
pub fn calibrate(
    net: &mut Network,
    batches: impl Iterator<Item = gstick_nn::Result<Tensor>>,
    method: CalibMethod,
) -> crate::Result<usize> {
    if let CalibMethod::Percentile(p) = method {
        if !(50.0..=100.0).contains(&p) {
            return Err(crate::Error::Config(gstick_nn::ConfigError::Invalid {
                field: "percentile",
                message: format!("{p} is not in [50, 100]"),
            }));
        }
    }
    observe_weights(net)?;
    let keep = matches!(method, CalibMethod::Percentile(_));
    net.transaction(|g| {
        let mut swapped = Vec::new();
        swap_in(g, keep, &mut swapped)?;
        let mut exec = Executor::new(Mode::Eval, 0);
        let mut any = false;
        for batch in batches {
            exec.forward1(g, &batch?)?;
            any = true;
        }
        if !any {
            return Err(crate::Error::Config(gstick_nn::ConfigError::Invalid {
                field: "calib",
                message: "no calibration batches".into(),
            }));
        }
        let mut originals = Vec::with_capacity(swapped.len());
        for (fq, stats) in swapped {
            let mut s = stats.lock().map_err(|_| {
                crate::Error::Config(gstick_nn::ConfigError::Invalid {
                    field: "calib",
                    message: "observer lock poisoned".into(),
                })
            })?;
            let (lo, hi) = match method {
                CalibMethod::MinMax => (s.min, s.max),
                CalibMethod::Percentile(p) => {
                    s.sample.sort_by(f32::total_cmp);
                    if s.sample.is_empty() {
                        (s.min, s.max)
                    } else {
                        (percentile(&s.sample, 100.0 - p), percentile(&s.sample, p))
                    }
                }
            };
            let dev = candle_core::Device::Cpu;
            fq.quantizer.min.set(&Tensor::new(&[lo.min(0.0)], &dev)?)?;
            fq.quantizer.max.set(&Tensor::new(&[hi.max(0.0)], &dev)?)?;
            originals.push(fq);
        }
        let count = originals.len();
        swap_out(g, &mut originals.into_iter())?;
        Ok(count)
    })
}
