//! ReLU with a one-pass backward (candle's builds a mask, casts it and multiplies: three passes).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::Elem;

struct Relu;
struct ReluBackward;

fn relu<T: Elem>(x: &[T]) -> Vec<T> {
    // NaN is kept, so NaN propagates as in PyTorch.
    x.iter()
        .map(|&v| {
            if v > T::default() || v.is_nan() {
                v
            } else {
                T::default()
            }
        })
        .collect()
}

fn relu_backward<T: Elem>(x: &[T], dy: &[T]) -> Vec<T> {
    x.iter()
        .zip(dy)
        .map(|(&v, &g)| {
            if v > T::default() || v.is_nan() {
                g
            } else {
                T::default()
            }
        })
        .collect()
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "gstick-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = dispatch1!("relu kernel", s, l, |x| relu(x));
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &ReluBackward)?))
    }
}

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        "gstick-relu-backward"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            return Err(candle_core::Error::Msg(
                "relu backward: shapes differ".into(),
            ));
        }
        let out = dispatch2!("relu kernel", s1, l1, s2, l2, |x, g| relu_backward(x, g));
        Ok((out, l1.shape().clone()))
    }
}

/// max(x, 0), differentiable; other dtypes fall back to candle's relu.
pub fn relu_op(x: &Tensor) -> candle_core::Result<Tensor> {
    match x.dtype() {
        candle_core::DType::F32 | candle_core::DType::F64 => x.contiguous()?.apply_op1(Relu),
        _ => x.relu(),
    }
}
