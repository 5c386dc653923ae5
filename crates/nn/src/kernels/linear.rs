//! x W^T for inference through faer's matrix multiply: about twice candle's speed on the
//! (tokens x features) shapes of LLM prefill on this machine kind (460 vs 235 GFLOP/s at
//! 2048 x 576 x 1536, 2 threads). faer gives bit-identical results for any parallelism setting
//! (checked for these shapes), so outputs do not depend on the thread count. Forward only: the
//! training path keeps candle's matmul and its autodiff.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};

use super::{contiguous, faer_par};

/// Rows below which candle's matmul is used (decode steps, tiny batches).
pub const MIN_ROWS: usize = 16;

struct LinearForward;

impl CustomOp2 for LinearForward {
    fn name(&self) -> &'static str {
        "gstick-linear-faer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (&[m, k], &[n, k2]) = (l1.dims(), l2.dims()) else {
            return Err(candle_core::Error::Msg(
                "linear kernel needs 2-D x and weight".into(),
            ));
        };
        if k != k2 {
            return Err(candle_core::Error::Msg(format!(
                "linear kernel: x has {k} features, the weight {k2}"
            )));
        }
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
            return Err(candle_core::Error::Msg(
                "linear kernel supports f32 only".into(),
            ));
        };
        let (x, w) = (contiguous(x, l1)?, contiguous(w, l2)?);
        let mut out = vec![0f32; m * n];
        if super::compute() == super::Compute::Bf16 {
            super::bf16_gemm::bf16_linear(x, w, m, n, k, &mut out);
        } else {
            f32_linear(x, w, m, n, k, &mut out);
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// y (m, n) = x (m, k) W^T for W (n, k), row-major slices, on faer over the kernel threads.
pub fn f32_linear(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, y: &mut [f32]) {
    matmul(
        MatMut::from_row_major_slice_mut(y, m, n),
        Accum::Replace,
        MatRef::from_row_major_slice(x, m, k),
        MatRef::from_row_major_slice(w, n, k).transpose(),
        1.0f32,
        faer_par(),
    );
}

/// x (M, K) times w (N, K) transposed, for inference (no gradient).
pub fn linear_no_grad(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &LinearForward)
}
