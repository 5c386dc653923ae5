use candle_core::{DType, Device, Tensor, D};

use super::Rope;
use crate::{Cell, CellCtx, Error, Result};

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
        let (b, t, _) = q.dims3()?;
        // With a cache (incremental decoding), these t tokens follow `offset` cached positions.
        let node = ctx.node;
        let offset = ctx.cache.as_deref().map_or(0, |c| c.positions(node));
        let (mut q, mut k) = (
            self.split_heads(q, self.heads)?,
            self.split_heads(k, self.kv_heads)?,
        );
        if let Some(rope) = &self.rope {
            let (cos, sin) = rope.tables(self.head_dim, offset, t, q.dtype(), q.device())?;
            q = Self::rotate(&q, &cos, &sin)?;
            k = Self::rotate(&k, &cos, &sin)?;
        }
        let mut v = self.split_heads(v, self.kv_heads)?;
        if let Some(cache) = ctx.cache.as_deref_mut() {
            if let Some((k0, v0)) = cache.get(node) {
                k = Tensor::cat(&[k0, &k], 2)?;
                v = Tensor::cat(&[v0, &v], 2)?;
            }
            cache.store(node, k.clone(), v.clone());
        }
        let total = offset + t;
        // Grouped-query attention: query head h reads key/value head h / group. Queries go in
        // blocks of rows so the score matrix stays small (cache-sized, no huge allocations) and
        // each block only reads the keys it may attend to.
        let group = self.heads / self.kv_heads;
        let q = (q.reshape((b, self.kv_heads, group, t, self.head_dim))?
            / (self.head_dim as f64).sqrt())?;
        let mut blocks = Vec::with_capacity(t.div_ceil(QUERY_BLOCK));
        for r0 in (0..t).step_by(QUERY_BLOCK) {
            let rows = QUERY_BLOCK.min(t - r0);
            let keys = if self.causal {
                offset + r0 + rows
            } else {
                total
            };
            let qb =
                q.narrow(3, r0, rows)?
                    .reshape((b, self.kv_heads, group * rows, self.head_dim))?;
            let kb = k.narrow(2, 0, keys)?;
            let vb = v.narrow(2, 0, keys)?;
            let scores = qb
                .matmul(&kb.t()?)?
                .reshape((b, self.kv_heads, group, rows, keys))?;
            let scores = if self.causal {
                let mask = causal_mask(offset + r0, rows, keys, scores.dtype(), scores.device())?;
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
        format!(
            "{} heads, {} kv heads, head dim {}, {rope}, {mask}",
            self.heads, self.kv_heads, self.head_dim
        )
    }
}

/// Query rows per attention block: the largest score block (9 heads x 128 x 2048 f32) stays under
/// the allocator's 16 MiB large-object limit, so its memory is reused instead of faulted in anew.
const QUERY_BLOCK: usize = 128;

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
