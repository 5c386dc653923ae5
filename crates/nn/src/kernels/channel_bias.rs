//! Adding a per-channel bias to NC... input, with a backward pass that sums the gradient per
//! channel in one sweep (candle's generic reduction over dims 0, 2, 3 is much slower).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::Elem;

fn split(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    match l.dims() {
        [n, c, rest @ ..] => Ok((*n, *c, rest.iter().product())),
        other => Err(candle_core::Error::Msg(format!(
            "channel bias needs (N, C, ...) input, got {other:?}"
        ))),
    }
}

fn add<T: Elem>(x: &[T], b: &[T], c: usize, inner: usize) -> Vec<T> {
    let mut out = x.to_vec();
    for (i, plane) in out.chunks_mut(inner.max(1)).enumerate() {
        let bias = b[i % c];
        for v in plane {
            *v += bias;
        }
    }
    out
}

fn channel_sums<T: Elem>(dy: &[T], c: usize, inner: usize) -> Vec<T> {
    let mut sums = vec![T::default(); c];
    for (i, chunk) in dy.chunks(inner).enumerate() {
        let mut s = T::default();
        for &v in chunk {
            s += v;
        }
        sums[i % c] += s;
    }
    sums
}

struct ChannelBias;
struct ChannelSums;

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "gstick-channel-bias"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, inner) = split(l1)?;
        if l2.dims() != [c] {
            return Err(candle_core::Error::Msg(format!(
                "bias of shape {:?} for {c} channels",
                l2.dims()
            )));
        }
        let out = dispatch2!("channel bias", s1, l1, s2, l2, |x, b| add(x, b, c, inner));
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let db = dy.contiguous()?.apply_op1_no_bwd(&ChannelSums)?;
        Ok((Some(dy.clone()), Some(db)))
    }
}

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "gstick-channel-sums"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, inner) = split(l)?;
        let out = dispatch1!("channel sums", s, l, |v| channel_sums(v, c, inner));
        Ok((out, Shape::from(c)))
    }
}

/// x + b broadcast over every dimension but the channel (dim 1).
pub fn add_channel_bias(x: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(&b.contiguous()?, ChannelBias)
}
