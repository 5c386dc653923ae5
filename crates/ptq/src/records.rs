//! What the pipeline reports per Linear and per decoder layer, and the summary table.

use serde::Serialize;

/// What happened to one Linear.
#[derive(Clone, Debug, Serialize)]
pub struct LinearRecord {
    /// Full name (`model.layers.3.self_attn.q_proj`).
    pub name: String,
    /// The original's summary string (`GPTQ-W4-per_group`) or `NA`.
    pub summary: String,
    pub rows: usize,
    pub cols: usize,
    /// ‖f(X) − q(X)‖² / ‖f(X)‖² on the observer's sampled input rows, with the activation
    /// quantization if any (0 when not quantized).
    pub relative_output_error: f64,
    /// GPTQ's dampening, as a fraction of the mean Hessian diagonal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gptq_damp: Option<f64>,
    /// The smoothing strength α (SmoothQuant's, or the one OSL chose).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smooth_alpha: Option<f64>,
    pub seconds: f64,
}

/// Where a layer's time went, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LayerTiming {
    /// Forward passes (float with observers, then quantized), without the statistics.
    pub forward: f64,
    /// Statistics inside the observers (Hessian accumulation, sampling).
    pub statistics: f64,
    /// Scale and clip searches.
    pub search: f64,
    /// Quantization (RTN, or the GPTQ solve).
    pub quantize: f64,
    pub total: f64,
}

impl LayerTiming {
    /// The sum of several layers' timings.
    pub fn total_of(layers: &[LayerRecord]) -> LayerTiming {
        layers.iter().fold(LayerTiming::default(), |mut a, l| {
            a.forward += l.timing.forward;
            a.statistics += l.timing.statistics;
            a.search += l.timing.search;
            a.quantize += l.timing.quantize;
            a.total += l.timing.total;
            a
        })
    }
}

/// An attention whose KV cache was quantized.
#[derive(Clone, Debug, Serialize)]
pub struct KvRecord {
    /// Full name of the attention (`model.layers.3.self_attn.attention`).
    pub name: String,
    /// `C8-per_channel` or `C8-per_token`.
    pub summary: String,
}

/// What happened to one decoder layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerRecord {
    pub index: usize,
    /// Σ‖y − ŷ‖² / Σ‖y‖² between the float and the quantized layer's outputs on the same inputs.
    pub relative_output_error: f64,
    pub timing: LayerTiming,
    pub linears: Vec<LinearRecord>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kv_caches: Vec<KvRecord>,
}

/// The per-layer summary table: one row per Linear with its summary string and errors.
pub fn summary_table(layers: &[LayerRecord]) -> String {
    let mut s = format!(
        "{:<40} {:<26} {:>12} {:>12}\n",
        "layer", "quantization", "rel. error", "layer error"
    );
    for l in layers {
        for (k, lin) in l.linears.iter().enumerate() {
            let layer_err = if k == 0 {
                format!("{:.3e}", l.relative_output_error)
            } else {
                String::new()
            };
            s.push_str(&format!(
                "{:<40} {:<26} {:>12.3e} {:>12}\n",
                lin.name, lin.summary, lin.relative_output_error, layer_err
            ));
        }
        for kv in &l.kv_caches {
            s.push_str(&format!("{:<40} {:<26}\n", kv.name, kv.summary));
        }
    }
    s
}
