//! Calibration observers: identity cells rewritten into a decoder layer in front of the Linears
//! being quantized. Linears that read the same value (q/k/v, gate/up) share one observer, so each
//! statistic is gathered once. An observer accumulates what the algorithms need: the GPTQ
//! Hessian with the first row of every window kept apart (the attention sink, which GPTQ weighs
//! separately), the mean absolute value per input channel (AWQ) and the largest (SmoothQuant),
//! and an evenly spaced sample of
//! input rows (AWQ searches, per-layer error reports). Each forward call is one calibration
//! window.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use gstick_nn::{Cell, CellCtx, Network};
use gstick_rewrite::{NodeId, Op};

use crate::gptq::Hessian;

/// What an observer gathers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObserveSpec {
    pub hessian: bool,
    /// Input rows kept from each forward call (evenly spaced over its tokens).
    pub rows_per_call: usize,
}

/// Statistics of the inputs one observer saw.
#[derive(Debug)]
pub struct InputStats {
    pub cols: usize,
    pub rows_seen: usize,
    pub hessian: Option<Hessian>,
    /// With the Hessian: the first row of every window (position 0, the attention sink),
    /// row-major, one per window.
    pub first_rows: Vec<f32>,
    /// Σ |x_j| over every row seen.
    pub abs_sum: Vec<f64>,
    /// max |x_j| over every row seen (SmoothQuant).
    pub abs_max: Vec<f32>,
    /// min x_j and max x_j over every row seen (static activation quantization).
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    /// Kept rows, row-major (`sample_rows` x `cols`).
    pub sample: Vec<f32>,
    pub sample_rows: usize,
    /// Time spent recording (statistics, not the forward pass).
    pub seconds: f64,
}

impl InputStats {
    fn new(cols: usize, spec: ObserveSpec) -> Self {
        InputStats {
            cols,
            rows_seen: 0,
            hessian: spec.hessian.then(|| Hessian::new(cols)),
            first_rows: Vec::new(),
            abs_sum: vec![0.0; cols],
            abs_max: vec![0.0; cols],
            min: vec![f32::INFINITY; cols],
            max: vec![f32::NEG_INFINITY; cols],
            sample: Vec::new(),
            sample_rows: 0,
            seconds: 0.0,
        }
    }

    /// The statistics of the inputs divided channel-wise by `s` (x_j / s_j), as seen by a
    /// Linear after an AWQ scale was folded into its producer.
    pub fn divided_by(&self, s: &[f32]) -> InputStats {
        let c = self.cols;
        let hessian = self.hessian.as_ref().map(|h| {
            let mut h = h.clone();
            for i in 0..c {
                for j in 0..c {
                    h.h[i * c + j] /= s[i] as f64 * s[j] as f64;
                }
            }
            h
        });
        InputStats {
            cols: c,
            rows_seen: self.rows_seen,
            hessian,
            first_rows: self
                .first_rows
                .iter()
                .enumerate()
                .map(|(i, v)| v / s[i % c])
                .collect(),
            abs_sum: self
                .abs_sum
                .iter()
                .zip(s)
                .map(|(a, &v)| a / v as f64)
                .collect(),
            abs_max: self.abs_max.iter().zip(s).map(|(a, &v)| a / v).collect(),
            // s > 0, so the order is kept.
            min: self.min.iter().zip(s).map(|(a, &v)| a / v).collect(),
            max: self.max.iter().zip(s).map(|(a, &v)| a / v).collect(),
            sample: self
                .sample
                .iter()
                .enumerate()
                .map(|(i, v)| v / s[i % c])
                .collect(),
            sample_rows: self.sample_rows,
            seconds: self.seconds,
        }
    }

    /// The Hessian GPTQ works with: the running 2/n Σ x xᵀ, with the first row of every window
    /// (the attention sink) weighted up until those rows make at least `sink_share` of the
    /// trace. Every query reads the sink's key and value, so an error there reaches every
    /// position; plain GPTQ (share 0) counts the sink as one token in `seqlen` and moves
    /// rounding error onto the channels only it uses. Where the sink's inputs are massive
    /// already (some MLP down projections), its share is above the target and nothing changes:
    /// weighting it further would sacrifice every other token to it.
    pub fn gptq_hessian(&self, sink_share: f64) -> Option<Hessian> {
        let mut h = self.hessian.clone()?;
        let c = self.cols;
        let trace: f64 = (0..c).map(|i| h.h[i * c + i]).sum();
        let scale = 2.0 / h.samples.max(1) as f64;
        let sink: f64 = scale
            * self
                .first_rows
                .iter()
                .map(|&v| v as f64 * v as f64)
                .sum::<f64>();
        if sink_share <= 0.0 || sink <= 0.0 || sink >= sink_share * trace {
            return Some(h);
        }
        // (1 + k) sink = share (trace + k sink)  =>  k = (share trace - sink) / (sink (1 - share)).
        let share = sink_share.min(0.99);
        let extra = scale * (share * trace - sink) / (sink * (1.0 - share));
        for row in self.first_rows.chunks_exact(c) {
            for i in 0..c {
                let a = extra * row[i] as f64;
                for (hij, &xj) in h.h[i * c..(i + 1) * c].iter_mut().zip(row) {
                    *hij += a * xj as f64;
                }
            }
        }
        Some(h)
    }

    /// The smallest and largest input value over every channel and row seen (the range of
    /// static per-tensor activation quantization).
    pub fn range(&self) -> (f32, f32) {
        let lo = self.min.iter().fold(f32::INFINITY, |a, &b| a.min(b));
        let hi = self.max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        (lo, hi)
    }

    /// mean_t |x_tj| per input channel.
    pub fn abs_mean(&self) -> Vec<f64> {
        let n = self.rows_seen.max(1) as f64;
        self.abs_sum.iter().map(|s| s / n).collect()
    }

    /// Records `rows` input rows made of windows of `window` consecutive rows each.
    fn record(&mut self, x: &[f32], rows: usize, window: usize, spec: ObserveSpec) {
        let start = std::time::Instant::now();
        let c = self.cols;
        let path = gstick_nn::kernels::vector_math::MathPath::best();
        for row in x.chunks_exact(c) {
            gstick_nn::kernels::vector_math::add_abs(path, &mut self.abs_sum, row);
            for (((m, lo), hi), &v) in self
                .abs_max
                .iter_mut()
                .zip(self.min.iter_mut())
                .zip(self.max.iter_mut())
                .zip(row)
            {
                let a = v.abs();
                *m = if a > *m { a } else { *m };
                *lo = if v < *lo { v } else { *lo };
                *hi = if v > *hi { v } else { *hi };
            }
        }
        let window = window.clamp(1, rows.max(1));
        if let Some(h) = &mut self.hessian {
            h.add(x, rows);
            for first in x.chunks(window * c) {
                self.first_rows.extend_from_slice(&first[..c]);
            }
        }
        let keep = spec.rows_per_call.min(rows);
        for k in 0..keep {
            let r = k * rows / keep;
            self.sample.extend_from_slice(&x[r * c..(r + 1) * c]);
        }
        self.sample_rows += keep;
        self.rows_seen += rows;
        self.seconds += start.elapsed().as_secs_f64();
    }
}

/// The identity cell that records its input.
#[derive(Clone, Debug)]
pub struct InputObserver {
    pub spec: ObserveSpec,
    pub stats: SharedStats,
}

impl Cell for InputObserver {
    fn kind(&self) -> &'static str {
        "InputObserver"
    }

    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        let x = inputs
            .first()
            .ok_or_else(|| gstick_nn::Error::Config("observer without input".into()))?;
        let cols = *x
            .dims()
            .last()
            .ok_or_else(|| gstick_nn::Error::Config("observer input is a scalar".into()))?;
        let rows = x.elem_count() / cols.max(1);
        // (batch, tokens, features): each batch entry is a window; a matrix is one window.
        let window = match x.dims() {
            [.., t, _] if x.rank() >= 3 => *t,
            _ => rows,
        };
        let mut guard = self
            .stats
            .lock()
            .map_err(|_| gstick_nn::Error::Config("observer lock poisoned".into()))?;
        let stats = guard.get_or_insert_with(|| InputStats::new(cols, self.spec));
        if stats.cols != cols {
            return Err(gstick_nn::Error::Config(format!(
                "observer saw {cols} features after {}",
                stats.cols
            )));
        }
        // The input's own storage, read in place (no copy of the activations).
        let x32 = x.to_dtype(candle_core::DType::F32)?;
        gstick_nn::kernels::with_f32(&x32, |values| stats.record(values, rows, window, self.spec))?;
        Ok(x.clone())
    }
}

/// Statistics filled by an observer while the layer runs.
type SharedStats = Arc<Mutex<Option<InputStats>>>;

/// Observers placed in a layer: each one's node, the value it observes, the Linears reading
/// through it, and its statistics.
pub struct Observers {
    entries: Vec<(NodeId, NodeId, Vec<String>, SharedStats)>,
}

impl Observers {
    /// Puts one observer after each value that a node in `targets` reads (its first input), and
    /// rewires those nodes to read through it.
    pub fn insert(g: &mut Network, targets: &[String], spec: ObserveSpec) -> crate::Result<Self> {
        let mut by_source: BTreeMap<NodeId, Vec<(NodeId, String)>> = BTreeMap::new();
        for name in targets {
            let id = g.find(name)?;
            let src = *g
                .node(id)?
                .inputs()
                .first()
                .ok_or_else(|| crate::Error::Layer {
                    layer: name.clone(),
                    message: "a Linear without input".into(),
                })?;
            by_source.entry(src).or_default().push((id, name.clone()));
        }
        let mut entries = Vec::new();
        g.transaction(|g| {
            for (src, users) in &by_source {
                let stats: SharedStats = Arc::default();
                let cell = InputObserver {
                    spec,
                    stats: stats.clone(),
                };
                let name = format!("{}.observer", users[0].1);
                let obs = g.insert(
                    g.after(*src),
                    &name,
                    Op::Cell(Box::new(cell) as Box<dyn Cell>),
                    &[*src],
                )?;
                for (user, _) in users {
                    g.set_input(*user, 0, obs)?;
                }
                let names = users.iter().map(|(_, n)| n.clone()).collect();
                entries.push((obs, *src, names, stats));
            }
            Ok::<_, crate::Error>(())
        })?;
        Ok(Observers { entries })
    }

    /// Takes the observers out again (their readers read the observed values directly) and
    /// returns the statistics by Linear name; Linears sharing an input share the statistics.
    pub fn remove(self, g: &mut Network) -> crate::Result<BTreeMap<String, Arc<InputStats>>> {
        let mut out = BTreeMap::new();
        g.transaction(|g| {
            for (obs, src, _, _) in &self.entries {
                g.replace_all_uses(*obs, *src)?;
                g.erase(*obs)?;
            }
            Ok::<_, crate::Error>(())
        })?;
        for (_, _, names, stats) in self.entries {
            let stats = stats
                .lock()
                .map_err(|_| crate::Error::Layer {
                    layer: names.join(", "),
                    message: "observer lock poisoned".into(),
                })?
                .take();
            let Some(stats) = stats else {
                return Err(crate::Error::Layer {
                    layer: names.join(", "),
                    message: "the observer saw no input (was the layer run?)".into(),
                });
            };
            let shared = Arc::new(stats);
            for n in names {
                out.insert(n, shared.clone());
            }
        }
        Ok(out)
    }
}
