//! Rotary position embeddings: the frequencies, their scaling variants, and the cos/sin tables.

use std::cell::RefCell;
use std::f64::consts::PI;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// How the base frequencies are stretched for contexts longer than training.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (every frequency divided by it).
    Linear {
        factor: f64,
    },
    /// Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: f64,
    },
    /// Per-frequency divisors (llama.cpp's `rope_freqs` tensor), one per pair of dimensions.
    Factors(Vec<f64>),
}

/// Rotary position embedding settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    pub fn new(theta: f64) -> Self {
        Rope {
            theta,
            scaling: RopeScaling::None,
        }
    }

    /// The `head_dim / 2` angular frequencies, scaled.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        (0..head_dim / 2)
            .map(|i| {
                let f = self.theta.powf(-2.0 * i as f64 / head_dim as f64);
                match &self.scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear { factor } => f / factor,
                    RopeScaling::Factors(divisors) => f / divisors.get(i).copied().unwrap_or(1.0),
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_positions,
                    } => {
                        let wavelen = 2.0 * PI / f;
                        let low_wavelen = original_max_positions / low_freq_factor;
                        let high_wavelen = original_max_positions / high_freq_factor;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_max_positions / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }

    /// cos and sin tables (t, head_dim) for positions start..start+t, each frequency repeated for
    /// both halves of the head (the rotate-half convention).
    pub fn tables(
        &self,
        head_dim: usize,
        start: usize,
        t: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.half_tables(head_dim, start, t);
        let both_halves = |v: &[f32]| -> Vec<f32> {
            v.chunks(head_dim / 2)
                .flat_map(|row| row.iter().chain(row).copied())
                .collect()
        };
        let make = |v| Tensor::from_vec(v, (t, head_dim), device)?.to_dtype(dtype);
        Ok((make(both_halves(&half.cos))?, make(both_halves(&half.sin))?))
    }

    /// cos and sin of every (position, frequency) for positions start..start+t, as f32 rows of
    /// head_dim / 2 (what the fused attention reads; [`Rope::tables`] widens them). The last
    /// tables are kept per thread: every layer of a forward pass asks for the same ones.
    pub fn half_tables(&self, head_dim: usize, start: usize, t: usize) -> Arc<RopeTables> {
        thread_local! {
            static LAST: RefCell<Option<CachedTables>> = const { RefCell::new(None) };
        }
        LAST.with_borrow_mut(|last| {
            if let Some((rope, d, s, n, tables)) = last.as_ref() {
                if rope == self && (*d, *s, *n) == (head_dim, start, t) {
                    return tables.clone();
                }
            }
            let freqs = self.inv_freq(head_dim);
            let mut cos = Vec::with_capacity(t * freqs.len());
            let mut sin = Vec::with_capacity(t * freqs.len());
            for pos in start..start + t {
                for f in &freqs {
                    let angle = pos as f64 * f;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
            let tables = Arc::new(RopeTables { cos, sin });
            *last = Some((self.clone(), head_dim, start, t, tables.clone()));
            tables
        })
    }
}

/// The last tables made on a thread, with what they were made for (rope, head_dim, start, t).
type CachedTables = (Rope, usize, usize, usize, Arc<RopeTables>);

/// cos and sin rows (positions, head_dim / 2), row-major.
#[derive(Debug)]
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}
