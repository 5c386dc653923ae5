//! Max pooling with padding, forward and backward. The backward pass routes each output
//! gradient to the first maximum of its window (PyTorch's rule), found again from the input.

use super::{for_each_chunk, Elem};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl PoolGeom {
    fn out_size(&self, size: usize) -> candle_core::Result<usize> {
        (size + 2 * self.padding)
            .checked_sub(self.kernel)
            .map(|v| v / self.stride + 1)
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "max pool: kernel {} larger than padded input {size}",
                    self.kernel
                ))
            })
    }

    /// Index in the plane of the first maximum of output cell (oy, ox); None if the window lies in padding.
    fn argmax<T: Elem>(
        &self,
        plane: &[T],
        h: usize,
        w: usize,
        oy: usize,
        ox: usize,
    ) -> Option<usize> {
        if self.padding == 0 {
            return Some(self.argmax_inside(plane, w, oy, ox));
        }
        let mut best: Option<(usize, T)> = None;
        for ki in 0..self.kernel {
            let y = (oy * self.stride + ki) as isize - self.padding as isize;
            if y < 0 || y >= h as isize {
                continue;
            }
            for kj in 0..self.kernel {
                let x = (ox * self.stride + kj) as isize - self.padding as isize;
                if x < 0 || x >= w as isize {
                    continue;
                }
                let idx = y as usize * w + x as usize;
                let v = plane[idx];
                // A NaN wins and stays, so NaN propagates as in PyTorch.
                if best.is_none_or(|(_, b)| v > b || (v.is_nan() && !b.is_nan())) {
                    best = Some((idx, v));
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

impl PoolGeom {
    /// [`PoolGeom::argmax`] for a window that lies inside the plane (no padding): no bounds tests.
    fn argmax_inside<T: Elem>(&self, plane: &[T], w: usize, oy: usize, ox: usize) -> usize {
        let (y0, x0) = (oy * self.stride, ox * self.stride);
        let mut best = y0 * w + x0;
        let mut best_value = plane[best];
        for ki in 0..self.kernel {
            let start = (y0 + ki) * w + x0;
            for (kj, &v) in plane[start..start + self.kernel].iter().enumerate() {
                if v > best_value || (v.is_nan() && !best_value.is_nan()) {
                    best = start + kj;
                    best_value = v;
                }
            }
        }
        best
    }
}

fn dims4(l: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    match *l.dims() {
        [n, c, h, w] => Ok((n, c, h, w)),
        ref other => Err(candle_core::Error::Msg(format!(
            "max pool needs NCHW input, got {other:?}"
        ))),
    }
}

fn forward<T: Elem>(
    x: &[T],
    (n, c, h, w): (usize, usize, usize, usize),
    g: PoolGeom,
    oh: usize,
    ow: usize,
) -> Vec<T> {
    let mut out = vec![T::NEG_INFINITY; n * c * oh * ow];
    for_each_chunk(&mut out, oh * ow, |p, dst| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                if let Some(i) = g.argmax(plane, h, w, oy, ox) {
                    dst[oy * ow + ox] = plane[i];
                }
            }
        }
    });
    out
}

fn backward<T: Elem>(
    x: &[T],
    dy: &[T],
    (n, c, h, w): (usize, usize, usize, usize),
    g: PoolGeom,
    oh: usize,
    ow: usize,
) -> Vec<T> {
    let mut dx = vec![T::default(); n * c * h * w];
    for_each_chunk(&mut dx, h * w, |p, dst| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        let grad = &dy[p * oh * ow..(p + 1) * oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                if let Some(i) = g.argmax(plane, h, w, oy, ox) {
                    dst[i] += grad[oy * ow + ox];
                }
            }
        }
    });
    dx
}

struct MaxPoolForward(PoolGeom);
struct MaxPoolBackward(PoolGeom);

impl CustomOp1 for MaxPoolForward {
    fn name(&self) -> &'static str {
        "gstick-max-pool2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims4(l)?;
        let (oh, ow) = (self.0.out_size(d.2)?, self.0.out_size(d.3)?);
        let out = dispatch1!("max pool kernel", s, l, |x| forward(x, d, self.0, oh, ow));
        Ok((out, Shape::from((d.0, d.1, oh, ow))))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &dy.contiguous()?,
            &MaxPoolBackward(self.0),
        )?))
    }
}

impl CustomOp2 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "gstick-max-pool2d-backward"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims4(l1)?;
        let (oh, ow) = (self.0.out_size(d.2)?, self.0.out_size(d.3)?);
        if l2.dims() != [d.0, d.1, oh, ow] {
            return Err(candle_core::Error::Msg(format!(
                "max pool backward: gradient shape {:?} does not match",
                l2.dims()
            )));
        }
        let out = dispatch2!("max pool kernel", s1, l1, s2, l2, |x, g| backward(
            x, g, d, self.0, oh, ow
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// Max pooling of NCHW input with a square window; padding counts as -infinity.
pub fn max_pool2d(x: &Tensor, geom: PoolGeom) -> candle_core::Result<Tensor> {
    if geom.kernel == 0 || geom.stride == 0 || geom.padding * 2 > geom.kernel {
        return Err(candle_core::Error::Msg(format!(
            "max pool: invalid geometry {geom:?}"
        )));
    }
    x.contiguous()?.apply_op1(MaxPoolForward(geom))
}
