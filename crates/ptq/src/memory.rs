//! The pre-flight memory estimate of the layer-wise pipeline: what a calibration run holds at
//! its peak, computed from the model's shape and the calibration size before any work starts,
//! so that a run that cannot fit is refused with the amount it needs.

use gstick_models::llama::LlamaConfig;
use serde::Serialize;

/// The calibration phase's resident memory, in bytes, by component.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CalibrationMemory {
    /// Hidden states of every window: the layer's inputs and its float outputs (the quantized
    /// outputs replace the inputs one window at a time).
    pub activations: usize,
    /// Temporaries of one window going through a decoder layer (projections, attention blocks,
    /// the MLP's intermediate values).
    pub window_forward: usize,
    /// One decoder layer's weights in f32, float and fake-quantized, plus the copies a search
    /// makes.
    pub layer_weights: usize,
    /// Observers (Hessians in f64, sampled input rows) and the GPTQ solve's matrices.
    pub statistics: usize,
    /// The quantized integers and parameters of every Linear of the model, kept for export.
    pub quantized_model: usize,
    /// The embedding table, dequantized while the windows are embedded.
    pub embedding: usize,
}

impl CalibrationMemory {
    /// The peak: embedding the windows, or quantizing the last layer with everything before it
    /// kept, whichever is larger.
    pub fn peak(&self) -> usize {
        let embed = self.embedding + self.activations / 2;
        let layer = self.activations
            + self.window_forward
            + self.layer_weights
            + self.statistics
            + self.quantized_model;
        embed.max(layer)
    }
}

/// The estimate for `windows` windows of `seqlen` tokens on a model of shape `c`, with GPTQ's
/// Hessians when `hessian`, `sample_rows` rows kept per observer, and quantization blocks of at
/// least `block` values (the smallest group size, or the input width when per channel).
pub fn calibration_memory(
    c: &LlamaConfig,
    windows: usize,
    seqlen: usize,
    hessian: bool,
    sample_rows: usize,
    block: usize,
) -> CalibrationMemory {
    let f32s = 4;
    let (h, ffn) = (c.hidden, c.intermediate);
    let q_width = c.heads * c.head_dim;
    let kv_width = c.kv_heads * c.head_dim;
    let layer_params = h * (q_width + 2 * kv_width) + q_width * h + 3 * h * ffn + 2 * h;
    // Inputs of the four observed values: q/k/v share one, o, gate/up share one, down.
    let observed = [h, q_width, h, ffn];
    let hessians: usize = if hessian {
        observed.iter().map(|&n| 8 * n * n).sum::<usize>()
            // The solve of the widest Linear holds seven n x n f64 matrices at once (the
            // Hessian's copy, its permutation, the dampened copy, two factors, the inverse, the
            // upper factor), plus the f32 product of a batch while statistics accumulate.
            + observed.iter().map(|&n| 7 * 8 * n * n + 4 * n * n).max().unwrap_or(0)
    } else {
        0
    };
    let samples: usize = observed.iter().map(|&n| f32s * sample_rows * n).sum();
    // q, k, v, attention output, residuals, norms, gate, up, act, product, down: about six
    // hidden-wide and four FFN-wide values per token, plus one 128-row block of scores per head.
    let window_forward = f32s * seqlen * (6 * h + 4 * ffn) + f32s * c.heads * 128 * seqlen;
    let linears = c.layers * (layer_params - 2 * h);
    CalibrationMemory {
        activations: 2 * f32s * windows * seqlen * h,
        window_forward,
        layer_weights: 3 * f32s * layer_params,
        statistics: hessians + samples,
        // i8 values plus two f64 per block.
        quantized_model: linears + linears / block.max(1) * 16,
        embedding: f32s * c.vocab * c.hidden,
    }
}
