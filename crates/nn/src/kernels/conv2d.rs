//! 2-D convolution by im2col and GEMM, forward and backward.
//!
//! Per image and group, the receptive fields are unrolled into a (C/G*KH*KW, OH*OW) matrix and
//! multiplied by the (O/G, C/G*KH*KW) weight. Images are processed in parallel, each by a
//! single-threaded GEMM; the weight gradient is summed over fixed chunks of images in a fixed
//! order, so results are bit-identical whatever the number of threads.

use super::{for_each_chunk, Elem};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

/// Convolution geometry shared by the three ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    g: ConvGeom,
}

impl Dims {
    fn new(x: &[usize], k: &[usize], g: ConvGeom) -> candle_core::Result<Self> {
        let bad = |m: String| candle_core::Error::Msg(m);
        let (&[n, c, h, w], &[o, cg, kh, kw]) = (x, k) else {
            return Err(bad(format!(
                "conv2d needs NCHW input and OIHW weight, got {x:?} and {k:?}"
            )));
        };
        if g.groups == 0 || c != cg * g.groups || o % g.groups != 0 {
            return Err(bad(format!(
                "conv2d: input has {c} channels, weight {k:?} with {} groups expects {}",
                g.groups,
                cg * g.groups
            )));
        }
        let span = |size: usize, k: usize| -> Option<usize> {
            let eff = g.dilation * (k - 1) + 1;
            (size + 2 * g.padding)
                .checked_sub(eff)
                .map(|v| v / g.stride + 1)
        };
        let (Some(oh), Some(ow)) = (span(h, kh), span(w, kw)) else {
            return Err(bad(format!(
                "conv2d: kernel {kh}x{kw} does not fit input {h}x{w} with padding {}",
                g.padding
            )));
        };
        Ok(Dims {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            oh,
            ow,
            g,
        })
    }
    fn cg(&self) -> usize {
        self.c / self.g.groups
    }
    fn og(&self) -> usize {
        self.o / self.g.groups
    }
    /// Rows of one group's column matrix.
    fn rows(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    fn plane(&self) -> usize {
        self.oh * self.ow
    }
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.g.stride == 1 && self.g.padding == 0
    }
}

/// The output columns `ox` whose input column `ox * stride - pad + offset` lies inside `0..w`.
fn valid_columns(d: &Dims, offset: isize) -> std::ops::Range<usize> {
    let (s, p) = (d.g.stride as isize, d.g.padding as isize);
    // First ox with ox*s - p + offset >= 0, and first ox with ox*s - p + offset >= w.
    let first = |bound: isize| -> usize {
        ((bound + p - offset).max(0) as usize)
            .div_ceil(s as usize)
            .min(d.ow)
    };
    first(0)..first(d.w as isize)
}

/// Unrolls channels `c0..c0+cg` of one image into `cols` (rows x plane).
fn im2col<T: Elem>(img: &[T], d: &Dims, c0: usize, cols: &mut [T]) {
    let (s, p, dil) = (d.g.stride, d.g.padding as isize, d.g.dilation as isize);
    let plane = d.plane();
    for c in 0..d.cg() {
        let chan = &img[(c0 + c) * d.h * d.w..(c0 + c + 1) * d.h * d.w];
        for ki in 0..d.kh {
            for kj in 0..d.kw {
                let row = (c * d.kh + ki) * d.kw + kj;
                let out = &mut cols[row * plane..(row + 1) * plane];
                let offset = kj as isize * dil;
                let valid = valid_columns(d, offset);
                for oy in 0..d.oh {
                    let y = (oy * s) as isize - p + ki as isize * dil;
                    let dst = &mut out[oy * d.ow..(oy + 1) * d.ow];
                    if y < 0 || y >= d.h as isize || valid.is_empty() {
                        dst.fill(T::default());
                        continue;
                    }
                    let src = &chan[y as usize * d.w..(y as usize + 1) * d.w];
                    dst[..valid.start].fill(T::default());
                    dst[valid.end..].fill(T::default());
                    let x0 = (valid.start * s) as isize - p + offset;
                    if s == 1 {
                        dst[valid.clone()]
                            .copy_from_slice(&src[x0 as usize..x0 as usize + valid.len()]);
                    } else {
                        for (k, v) in dst[valid.clone()].iter_mut().enumerate() {
                            *v = src[x0 as usize + k * s];
                        }
                    }
                }
            }
        }
    }
}

/// Adds `cols` (rows x plane) back into channels `c0..c0+cg` of one image's gradient.
fn col2im<T: Elem>(cols: &[T], d: &Dims, c0: usize, img: &mut [T]) {
    let (s, p, dil) = (d.g.stride, d.g.padding as isize, d.g.dilation as isize);
    let plane = d.plane();
    for c in 0..d.cg() {
        let chan = &mut img[(c0 + c) * d.h * d.w..(c0 + c + 1) * d.h * d.w];
        for ki in 0..d.kh {
            for kj in 0..d.kw {
                let row = (c * d.kh + ki) * d.kw + kj;
                let src = &cols[row * plane..(row + 1) * plane];
                let offset = kj as isize * dil;
                let valid = valid_columns(d, offset);
                if valid.is_empty() {
                    continue;
                }
                let x0 = ((valid.start * s) as isize - p + offset) as usize;
                for oy in 0..d.oh {
                    let y = (oy * s) as isize - p + ki as isize * dil;
                    if y < 0 || y >= d.h as isize {
                        continue;
                    }
                    let dst = &mut chan[y as usize * d.w..(y as usize + 1) * d.w];
                    let from = &src[oy * d.ow + valid.start..oy * d.ow + valid.end];
                    if s == 1 {
                        for (t, &g) in dst[x0..x0 + from.len()].iter_mut().zip(from) {
                            *t += g;
                        }
                    } else {
                        for (k, &g) in from.iter().enumerate() {
                            dst[x0 + k * s] += g;
                        }
                    }
                }
            }
        }
    }
}

/// The (rows x plane) column matrix of group `grp` of one image: the image's own channels for a
/// pointwise convolution, else its receptive fields unrolled into `cols`.
fn columns<'a, T: Elem>(img: &'a [T], d: &Dims, grp: usize, cols: &'a mut [T]) -> &'a [T] {
    let size = d.rows() * d.plane();
    if d.is_pointwise() {
        &img[grp * size..(grp + 1) * size]
    } else {
        im2col(img, d, grp * d.cg(), cols);
        cols
    }
}

/// dst (m x n) = [dst +] a (m x k) * b (k x n), each given as (pointer, row stride, col stride).
/// SAFETY (for callers): every pointer with its strides must stay inside its allocation.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    accumulate: bool,
    a: (*const T, isize, isize),
    b: (*const T, isize, isize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        n as isize,
        accumulate,
        a.0,
        a.2,
        a.1,
        b.0,
        b.2,
        b.1,
        T::ONE,
        T::ONE,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

fn forward<T: Elem>(x: &[T], k: &[T], d: &Dims) -> Vec<T> {
    let (plane, rows, og) = (d.plane(), d.rows(), d.og());
    let mut out = vec![T::default(); d.n * d.o * plane];
    for_each_chunk(&mut out, d.o * plane, |i, out_img| {
        let img = &x[i * d.c * d.h * d.w..(i + 1) * d.c * d.h * d.w];
        let mut cols = if d.is_pointwise() {
            Vec::new()
        } else {
            vec![T::default(); rows * plane]
        };
        for grp in 0..d.g.groups {
            let src = columns(img, d, grp, &mut cols);
            let wg = &k[grp * og * rows..(grp + 1) * og * rows];
            let dst = &mut out_img[grp * og * plane..(grp + 1) * og * plane];
            // SAFETY: wg is og x rows, src is rows x plane, dst is og x plane, all row-major.
            unsafe {
                matmul(
                    og,
                    plane,
                    rows,
                    dst.as_mut_ptr(),
                    false,
                    (wg.as_ptr(), rows as isize, 1),
                    (src.as_ptr(), plane as isize, 1),
                )
            };
        }
    });
    out
}

fn backward_input<T: Elem>(dy: &[T], k: &[T], d: &Dims) -> Vec<T> {
    let (plane, rows, og) = (d.plane(), d.rows(), d.og());
    let mut dx = vec![T::default(); d.n * d.c * d.h * d.w];
    for_each_chunk(&mut dx, d.c * d.h * d.w, |i, dx_img| {
        let dy_img = &dy[i * d.o * plane..(i + 1) * d.o * plane];
        let mut cols = vec![T::default(); rows * plane];
        for grp in 0..d.g.groups {
            let wg = &k[grp * og * rows..(grp + 1) * og * rows];
            let dyg = &dy_img[grp * og * plane..(grp + 1) * og * plane];
            // cols (rows x plane) = wg^T (rows x og) * dyg (og x plane).
            // SAFETY: wg read transposed (row stride 1, col stride rows) stays within og*rows.
            unsafe {
                matmul(
                    rows,
                    plane,
                    og,
                    cols.as_mut_ptr(),
                    false,
                    (wg.as_ptr(), 1, rows as isize),
                    (dyg.as_ptr(), plane as isize, 1),
                )
            };
            if d.is_pointwise() {
                dx_img[grp * rows * plane..(grp + 1) * rows * plane].copy_from_slice(&cols);
            } else {
                col2im(&cols, d, grp * d.cg(), dx_img);
            }
        }
    });
    dx
}

/// Images per chunk of the weight gradient; fixed so the summation order never changes.
const WEIGHT_GRAD_CHUNK: usize = 8;

fn backward_weight<T: Elem>(x: &[T], dy: &[T], d: &Dims) -> Vec<T> {
    let (plane, rows, og) = (d.plane(), d.rows(), d.og());
    let wsize = d.o * rows;
    let chunks = d.n.div_ceil(WEIGHT_GRAD_CHUNK);
    let mut partials = vec![T::default(); chunks * wsize];
    for_each_chunk(&mut partials, wsize, |chunk, dw| {
        let start = chunk * WEIGHT_GRAD_CHUNK;
        let mut cols = vec![T::default(); rows * plane];
        for i in start..(start + WEIGHT_GRAD_CHUNK).min(d.n) {
            let img = &x[i * d.c * d.h * d.w..(i + 1) * d.c * d.h * d.w];
            let dy_img = &dy[i * d.o * plane..(i + 1) * d.o * plane];
            for grp in 0..d.g.groups {
                let src = columns(img, d, grp, &mut cols);
                let dyg = &dy_img[grp * og * plane..(grp + 1) * og * plane];
                let dst = &mut dw[grp * og * rows..(grp + 1) * og * rows];
                // dst (og x rows) += dyg (og x plane) * src^T (plane x rows).
                // SAFETY: src read transposed (row stride 1, col stride plane) stays within rows*plane.
                unsafe {
                    matmul(
                        og,
                        rows,
                        plane,
                        dst.as_mut_ptr(),
                        true,
                        (dyg.as_ptr(), plane as isize, 1),
                        (src.as_ptr(), 1, plane as isize),
                    )
                };
            }
        }
    });
    let mut total = vec![T::default(); wsize];
    for p in partials.chunks(wsize) {
        for (t, &v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// y = conv2d(x, weight); arguments (x, weight).
struct Conv2dForward(ConvGeom);
/// dx from (dy, weight), for input shape `.1`.
struct Conv2dBackwardInput(ConvGeom, Shape);
/// dweight from (x, dy), for weight shape `.1`.
struct Conv2dBackwardWeight(ConvGeom, Shape);

impl CustomOp2 for Conv2dForward {
    fn name(&self) -> &'static str {
        "gstick-conv2d"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1.dims(), l2.dims(), self.0)?;
        let out = dispatch2!("conv2d kernel", s1, l1, s2, l2, |x, k| forward(x, k, &d));
        Ok((out, Shape::from((d.n, d.o, d.oh, d.ow))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        k: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(k, &Conv2dBackwardInput(self.0, x.shape().clone()))?;
        let dk = x.apply_op2_no_bwd(&dy, &Conv2dBackwardWeight(self.0, k.shape().clone()))?;
        Ok((Some(dx), Some(dk)))
    }
}

impl CustomOp2 for Conv2dBackwardInput {
    fn name(&self) -> &'static str {
        "gstick-conv2d-backward-input"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::new(self.1.dims(), l2.dims(), self.0)?;
        if l1.dims() != [d.n, d.o, d.oh, d.ow] {
            return Err(candle_core::Error::Msg(format!(
                "conv2d backward: gradient shape {:?} does not match",
                l1.dims()
            )));
        }
        let out = dispatch2!("conv2d kernel", s1, l1, s2, l2, |dy, k| backward_input(
            dy, k, &d
        ));
        Ok((out, self.1.clone()))
    }
}

impl CustomOp2 for Conv2dBackwardWeight {
    fn name(&self) -> &'static str {
        "gstick-conv2d-backward-weight"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1.dims(), self.1.dims(), self.0)?;
        if l2.dims() != [d.n, d.o, d.oh, d.ow] {
            return Err(candle_core::Error::Msg(format!(
                "conv2d backward: gradient shape {:?} does not match",
                l2.dims()
            )));
        }
        let out = dispatch2!("conv2d kernel", s1, l1, s2, l2, |x, dy| backward_weight(
            x, dy, &d
        ));
        Ok((out, self.1.clone()))
    }
}

/// conv2d(x, weight) through the im2col kernel, differentiable in both arguments.
pub fn conv2d(x: &Tensor, weight: &Tensor, geom: ConvGeom) -> candle_core::Result<Tensor> {
    if geom.stride == 0 || geom.dilation == 0 {
        return Err(candle_core::Error::Msg(
            "conv2d: stride and dilation must be at least 1".into(),
        ));
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv2dForward(geom))
}
