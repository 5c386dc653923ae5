use candle_core::{DType, Device, Tensor, D};

use crate::{Cell, CellCtx, Error, Result};

/// Rotary position embedding settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// Linear position scaling (positions are divided by this factor); 1.0 = none.
    pub linear_factor: f64,
}

/// Causal multi-head self-attention over projected q, k, v (B, T, heads * head_dim) with rotary
/// position embeddings (rotate-half convention) and grouped-query attention: each of the
/// `kv_heads` key/value heads serves `heads / kv_heads` query heads. Output (B, T, heads * head_dim).
/// The projections stay separate Linear nodes so that quantization passes see them.
#[derive(Clone, Debug)]
pub struct CausalSelfAttention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope: Rope,
}

impl CausalSelfAttention {
    pub fn new(heads: usize, kv_heads: usize, head_dim: usize, rope: Rope) -> Result<Self> {
        if heads == 0 || kv_heads == 0 || head_dim == 0 || head_dim % 2 != 0 || heads % kv_heads != 0 {
            return Err(Error::Config(format!(
                "attention needs heads divisible by kv_heads and an even head_dim (heads {heads}, kv_heads {kv_heads}, head_dim {head_dim})"
            )));
        }
        Ok(CausalSelfAttention { heads, kv_heads, head_dim, rope })
    }

    /// cos and sin tables (T, head_dim) for positions 0..t, duplicated over the two halves.
    fn rope_tables(&self, t: usize, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(t * self.head_dim);
        let mut sin = Vec::with_capacity(t * self.head_dim);
        for pos in 0..t {
            let p = pos as f64 / self.rope.linear_factor;
            let row: Vec<f64> = (0..half).map(|i| p * self.rope.theta.powf(-2.0 * i as f64 / self.head_dim as f64)).collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|a| a.cos() as f32));
                sin.extend(row.iter().map(|a| a.sin() as f32));
            }
        }
        let make = |v| Tensor::from_vec(v, (t, self.head_dim), device)?.to_dtype(dtype);
        Ok((make(cos)?, make(sin)?))
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
            return Err(Error::Config(format!("attention input width {width}, expected {heads} heads x {}", self.head_dim)));
        }
        Ok(x.reshape((b, t, heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
    }
}

impl Cell for CausalSelfAttention {
    fn kind(&self) -> &'static str {
        "CausalSelfAttention"
    }

    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> Result<Tensor> {
        let [q, k, v] = inputs else {
            return Err(Error::Arity { kind: "CausalSelfAttention", expected: "3 (q, k, v)".into(), got: inputs.len() });
        };
        let (b, t, _) = q.dims3()?;
        let (cos, sin) = self.rope_tables(t, q.dtype(), q.device())?;
        let q = Self::rotate(&self.split_heads(q, self.heads)?, &cos, &sin)?;
        let k = Self::rotate(&self.split_heads(k, self.kv_heads)?, &cos, &sin)?;
        let v = self.split_heads(v, self.kv_heads)?;
        // Grouped-query attention: query head h reads key/value head h / group.
        let group = self.heads / self.kv_heads;
        let q = q.reshape((b, self.kv_heads, group * t, self.head_dim))?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = scores.reshape((b, self.kv_heads, group, t, t))?;
        let scores = scores.broadcast_add(&causal_mask(t, scores.dtype(), scores.device())?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let out = probs.reshape((b, self.kv_heads, group * t, t))?.matmul(&v)?;
        let out = out.reshape((b, self.heads, t, self.head_dim))?.transpose(1, 2)?;
        Ok(out.reshape((b, t, self.heads * self.head_dim))?)
    }

    fn summary(&self) -> String {
        format!("{} heads, {} kv heads, head dim {}, rope theta {}", self.heads, self.kv_heads, self.head_dim, self.rope.theta)
    }
}

/// (T, T) with 0 on and below the diagonal and -inf above it.
fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?.to_dtype(dtype)?)
}
