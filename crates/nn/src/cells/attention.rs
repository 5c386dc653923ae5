use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, D};
use gstick_quant::kv::{self, KvQuant};

use super::Rope;
use crate::kernels::attention::{attend, AttentionDims};
use crate::kernels::rows::rotate_heads;
use crate::kernels::with_f32;
use crate::{Cell, CellCtx, Error, KvRows, Mode, Result};

/// Multi-head self-attention over projected q, k, v (B, T, heads * head_dim): causal or
/// bidirectional, with optional rotary position embeddings (rotate-half convention) and
/// grouped-query attention (each of the `kv_heads` key/value heads serves `heads / kv_heads` query
/// heads). Output (B, T, heads * head_dim). The projections stay separate Linear nodes so that
/// quantization passes see them.
#[derive(Clone, Debug)]
pub struct SelfAttention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope: Option<Rope>,
    /// Each position attends only to itself and earlier positions (decoders).
    pub causal: bool,
    /// An int8 KV cache: keys (after RoPE) and values are quantized as they enter the cache,
    /// and without a cache (perplexity, calibration) quantized and read back the same way.
    pub kv_quant: Option<KvQuant>,
    /// Calibration: records the largest |key| and |value| per channel (static KV scales).
    pub kv_observer: Option<Arc<Mutex<KvRange>>>,
}

/// The largest magnitude per channel of the rotated keys and of the values an attention saw.
/// With RoPE a key channel's value depends on the position (each pair of channels is rotated by
/// an angle that grows with it), so for keys the magnitude of the channel's pair,
/// `sqrt(k_i^2 + k_(i + d/2)^2)`, is recorded instead: it bounds the channel at every position,
/// not only at those the calibration windows reached. (Calibrated on 512-token windows, plain
/// key maxima cost SmolLM2 6.5% perplexity on 2048-token windows, where the slow pairs have
/// turned further.)
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvRange {
    pub key_absmax: Vec<f32>,
    pub value_absmax: Vec<f32>,
}

impl KvRange {
    /// Records rows of `width`; `pair_half` is d/2 of the rotated heads when keys are rotated.
    fn record(&mut self, k: &[f32], v: &[f32], width: usize, pair_half: Option<usize>) {
        fn keep(a: &mut f32, b: f32) {
            // NaN is not recorded here; the executor's finiteness check reports it.
            *a = if b > *a { b } else { *a };
        }
        self.key_absmax.resize(width, 0.0);
        self.value_absmax.resize(width, 0.0);
        for row in v.chunks_exact(width) {
            for (a, &b) in self.value_absmax.iter_mut().zip(row) {
                keep(a, b.abs());
            }
        }
        for row in k.chunks_exact(width) {
            match pair_half {
                Some(half) => {
                    for head in 0..width / (2 * half) {
                        let base = head * 2 * half;
                        for i in base..base + half {
                            let norm = (row[i] * row[i] + row[i + half] * row[i + half]).sqrt();
                            keep(&mut self.key_absmax[i], norm);
                            keep(&mut self.key_absmax[i + half], norm);
                        }
                    }
                }
                None => {
                    for (a, &b) in self.key_absmax.iter_mut().zip(row) {
                        keep(a, b.abs());
                    }
                }
            }
        }
    }
}

/// Quantizes rows (keys or values) and appends them; a row that is not finite is an error.
fn append_quantized(
    quant: &KvQuant,
    keys: bool,
    x: &[f32],
    width: usize,
    q: &mut Vec<i8>,
    scales: &mut Vec<f32>,
) -> Result<()> {
    kv::append_rows(quant, keys, x, width, q, scales).map_err(|row| {
        Error::Config(format!(
            "the {} of position {row} hold NaN or infinity",
            if keys { "keys" } else { "values" }
        ))
    })
}

impl SelfAttention {
    /// Causal attention with RoPE, as in Llama-family decoders.
    pub fn causal(heads: usize, kv_heads: usize, head_dim: usize, rope: Rope) -> Result<Self> {
        Self::new(heads, kv_heads, head_dim, Some(rope), true)
    }

    /// Bidirectional attention without position rotation, as in BERT encoders.
    pub fn bidirectional(heads: usize, head_dim: usize) -> Result<Self> {
        Self::new(heads, heads, head_dim, None, false)
    }

    pub fn new(
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        rope: Option<Rope>,
        causal: bool,
    ) -> Result<Self> {
        if heads == 0
            || kv_heads == 0
            || head_dim == 0
            || !head_dim.is_multiple_of(2)
            || !heads.is_multiple_of(kv_heads)
        {
            return Err(Error::Config(format!(
                "attention needs heads divisible by kv_heads and an even head_dim (heads {heads}, kv_heads {kv_heads}, head_dim {head_dim})"
            )));
        }
        Ok(SelfAttention {
            heads,
            kv_heads,
            head_dim,
            rope,
            causal,
            kv_quant: None,
            kv_observer: None,
        })
    }

    /// x (B, H, T, D) rotated: x * cos + rotate_half(x) * sin.
    fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
    }

    /// (B, T, H * D) -> (B, H, T, D)
    fn split_heads(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, width) = x.dims3()?;
        if width != heads * self.head_dim {
            return Err(Error::Config(format!(
                "attention input width {width}, expected {heads} heads x {}",
                self.head_dim
            )));
        }
        Ok(x.reshape((b, t, heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }
}

impl SelfAttention {
    /// Inference on the fused kernel: token-major q/k/v, RoPE and the 1/sqrt(head_dim) scale
    /// applied in one pass, keys and values appended to the cache when there is one.
    fn forward_fused(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        ctx: &mut CellCtx,
    ) -> Result<Tensor> {
        let (b, t, q_width) = q.dims3()?;
        let (d, kv_width) = (self.head_dim, self.kv_heads * self.head_dim);
        for (name, x, width) in [
            ("q", q, self.heads * d),
            ("k", k, kv_width),
            ("v", v, kv_width),
        ] {
            if x.dims() != [b, t, width] {
                return Err(Error::Config(format!(
                    "attention {name} has shape {:?}, expected ({b}, {t}, {width})",
                    x.dims()
                )));
            }
        }
        let node = ctx.node;
        let offset = ctx.cache.as_deref().map_or(0, |c| c.positions(node));
        let tables = self.rope.as_ref().map(|r| r.half_tables(d, offset, t));
        let dims = AttentionDims {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: d,
            causal: self.causal,
        };
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; b * t * q_width];
        let mut cache_rows = match ctx.cache.as_deref_mut() {
            Some(cache) => Some(cache.rows_mut(node, b, kv_width)?),
            None => None,
        };
        with_f32(q, |q| {
            with_f32(k, |k| {
                with_f32(v, |v| {
                    for s in 0..b {
                        let qs = &q[s * t * q_width..(s + 1) * t * q_width];
                        let (ks, vs) = (
                            &k[s * t * kv_width..(s + 1) * t * kv_width],
                            &v[s * t * kv_width..(s + 1) * t * kv_width],
                        );
                        let mut qr = vec![0f32; qs.len()];
                        let mut kr = vec![0f32; ks.len()];
                        match &tables {
                            Some(tab) => {
                                rotate_heads(qs, d, &tab.cos, &tab.sin, scale, &mut qr);
                                rotate_heads(ks, d, &tab.cos, &tab.sin, 1.0, &mut kr);
                            }
                            None => {
                                qr.iter_mut().zip(qs).for_each(|(o, x)| *o = x * scale);
                                kr.copy_from_slice(ks);
                            }
                        }
                        let out_s = &mut out[s * t * q_width..(s + 1) * t * q_width];
                        if let Some(obs) = &self.kv_observer {
                            if let Ok(mut range) = obs.lock() {
                                let half = self.rope.as_ref().map(|_| d / 2);
                                range.record(&kr, vs, kv_width, half);
                            }
                        }
                        match (&self.kv_quant, cache_rows.as_deref_mut()) {
                            (None, Some(rows)) => {
                                let cached = &mut rows[s];
                                cached.keys.extend_from_slice(&kr);
                                cached.values.extend_from_slice(vs);
                                attend(dims, &qr, &cached.keys, &cached.values, out_s);
                            }
                            (None, None) => attend(dims, &qr, &kr, vs, out_s),
                            (Some(quant), rows) => {
                                // The int8 rows: the cache's, or this call's alone.
                                let mut own = KvRows::default();
                                let cached = match rows {
                                    Some(rows) => &mut rows[s],
                                    None => &mut own,
                                };
                                append_quantized(
                                    quant,
                                    true,
                                    &kr,
                                    kv_width,
                                    &mut cached.qkeys,
                                    &mut cached.key_scales,
                                )?;
                                append_quantized(
                                    quant,
                                    false,
                                    vs,
                                    kv_width,
                                    &mut cached.qvalues,
                                    &mut cached.value_scales,
                                )?;
                                let (mut kd, mut vd) = (Vec::new(), Vec::new());
                                kv::dequantize_rows(
                                    quant,
                                    true,
                                    &cached.qkeys,
                                    &cached.key_scales,
                                    kv_width,
                                    &mut kd,
                                );
                                kv::dequantize_rows(
                                    quant,
                                    false,
                                    &cached.qvalues,
                                    &cached.value_scales,
                                    kv_width,
                                    &mut vd,
                                );
                                attend(dims, &qr, &kd, &vd, out_s);
                            }
                        }
                    }
                    Ok::<(), Error>(())
                })
            })
        })????;
        Ok(Tensor::from_vec(out, (b, t, q_width), q.device())?)
    }

    /// The same attention from candle's ops, which autodiff can differentiate (training) and
    /// which the fused kernel is tested against.
    pub fn forward_reference(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let (mut q, mut k) = (
            self.split_heads(q, self.heads)?,
            self.split_heads(k, self.kv_heads)?,
        );
        if let Some(rope) = &self.rope {
            let (cos, sin) = rope.tables(self.head_dim, 0, t, q.dtype(), q.device())?;
            q = Self::rotate(&q, &cos, &sin)?;
            k = Self::rotate(&k, &cos, &sin)?;
        }
        let v = self.split_heads(v, self.kv_heads)?;
        // Grouped-query attention: query head h reads key/value head h / group. Queries go in
        // blocks of rows so the score matrix stays small and each block only reads the keys it
        // may attend to.
        let group = self.heads / self.kv_heads;
        let q = (q.reshape((b, self.kv_heads, group, t, self.head_dim))?
            / (self.head_dim as f64).sqrt())?;
        let mut blocks = Vec::with_capacity(t.div_ceil(REFERENCE_QUERY_BLOCK));
        for r0 in (0..t).step_by(REFERENCE_QUERY_BLOCK) {
            let rows = REFERENCE_QUERY_BLOCK.min(t - r0);
            let keys = if self.causal { r0 + rows } else { t };
            let qb =
                q.narrow(3, r0, rows)?
                    .reshape((b, self.kv_heads, group * rows, self.head_dim))?;
            let kb = k.narrow(2, 0, keys)?;
            let vb = v.narrow(2, 0, keys)?;
            let scores = qb
                .matmul(&kb.t()?)?
                .reshape((b, self.kv_heads, group, rows, keys))?;
            let scores = if self.causal {
                let mask = causal_mask(r0, rows, keys, scores.dtype(), scores.device())?;
                scores.broadcast_add(&mask)?
            } else {
                scores
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let out = probs
                .reshape((b, self.kv_heads, group * rows, keys))?
                .matmul(&vb)?;
            blocks.push(out.reshape((b, self.kv_heads, group, rows, self.head_dim))?);
        }
        let out = Tensor::cat(&blocks, 3)?; // (B, kv, group, T, D) = (B, heads, T, D)
        let out = out
            .reshape((b, self.heads, t, self.head_dim))?
            .transpose(1, 2)?;
        Ok(out.reshape((b, t, self.heads * self.head_dim))?)
    }
}

impl Cell for SelfAttention {
    fn kind(&self) -> &'static str {
        "SelfAttention"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> Result<Tensor> {
        let [q, k, v] = inputs else {
            return Err(Error::Arity {
                kind: "SelfAttention",
                expected: "3 (q, k, v)".into(),
                got: inputs.len(),
            });
        };
        let f32_inputs = [q, k, v].iter().all(|t| t.dtype() == DType::F32);
        if ctx.mode == Mode::Eval && f32_inputs {
            return self.forward_fused(q, k, v, ctx);
        }
        if self.kv_quant.is_some() || self.kv_observer.is_some() {
            return Err(Error::Config(format!(
                "KV-cache quantization and its calibration run in f32 inference (Mode::Eval); got {:?} in {:?} mode",
                q.dtype(),
                ctx.mode
            )));
        }
        if ctx.cache.is_some() {
            return Err(Error::Config(format!(
                "the KV cache serves f32 inference (Mode::Eval); got {:?} in {:?} mode",
                q.dtype(),
                ctx.mode
            )));
        }
        self.forward_reference(q, k, v)
    }

    fn summary(&self) -> String {
        let rope = self
            .rope
            .as_ref()
            .map_or("no rope".to_string(), |r| format!("rope theta {}", r.theta));
        let mask = if self.causal {
            "causal"
        } else {
            "bidirectional"
        };
        let kv = match &self.kv_quant {
            Some(q) => format!(", KV cache int8 {}", q.name()),
            None => String::new(),
        };
        format!(
            "{} heads, {} kv heads, head dim {}, {rope}, {mask}{kv}",
            self.heads, self.kv_heads, self.head_dim
        )
    }
}

/// Query rows per block of the reference path: the largest score block (9 heads x 128 x 2048 f32)
/// stays under the allocator's 16 MiB large-object limit, so its memory is reused.
const REFERENCE_QUERY_BLOCK: usize = 128;

/// (rows, keys) for query positions r0..r0+rows: 0 where the key position is at or before the
/// query position, -inf after it.
fn causal_mask(
    r0: usize,
    rows: usize,
    keys: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mask: Vec<f32> = (0..rows)
        .flat_map(|i| (0..keys).map(move |j| if j <= r0 + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(mask, (rows, keys), device)?.to_dtype(dtype)?)
}

/// Gives each attention named in `caches` (qualified name, `model.layers.0.self_attn.attention`)
/// its int8 KV cache. All or nothing: a name that is not an attention of the network, or static
/// scales whose width is not the attention's key/value width, is an error naming it and leaves
/// the network as it was.
pub fn install_kv_quant(
    net: &mut crate::Network,
    caches: &std::collections::BTreeMap<String, KvQuant>,
) -> Result<()> {
    if caches.is_empty() {
        return Ok(());
    }
    net.transaction(|g| {
        let replaced = g.replace_cells(|site| {
            let (Some(attn), Some(quant)) = (
                crate::cell::downcast::<SelfAttention>(site.cell.as_ref()),
                caches.get(site.qualified),
            ) else {
                return Ok::<_, Error>(None);
            };
            let width = attn.kv_heads * attn.head_dim;
            if let KvQuant::StaticPerChannel {
                key_scales,
                value_scales,
            } = quant
            {
                if key_scales.len() != width || value_scales.len() != width {
                    return Err(Error::Config(format!(
                        "`{}`: KV scales for {} and {} channels, the attention has {width}",
                        site.qualified,
                        key_scales.len(),
                        value_scales.len()
                    )));
                }
            }
            let mut attn = attn.clone();
            attn.kv_quant = Some(quant.clone());
            Ok(Some(Box::new(attn) as Box<dyn Cell>))
        })?;
        match caches.keys().find(|k| !replaced.contains(k)) {
            Some(name) => Err(Error::Config(format!(
                "a KV-cache quantization for `{name}`, which is not an attention of the network"
            ))),
            None => Ok(()),
        }
    })
}
