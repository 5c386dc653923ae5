//! The cells of an int8 deploy network (what `convert` produces): activations travel as unsigned
//! 8-bit tensors with static (scale, zero point); convolutions and Linear layers multiply them by
//! signed 8-bit weights with 32-bit accumulation and requantize per output channel.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use gstick_nn::error::expect_inputs;
use gstick_nn::kernels::for_each_chunk;
use gstick_nn::{Cell, CellCtx};
use gstick_quant::int8::im2col::{
    im2col_hwc_u8, im2col_quads_u8, im2col_u8, pad_into_quads, reorder_to_taps, to_hwc, ConvShape,
    InPlaceQuads,
};
use gstick_quant::int8::pair_table::PairTable;
use gstick_quant::int8::quads::{
    gemm_quads, gemm_quads_at, quad_row_sums, quad_row_sums_at, QuadShape,
};
use gstick_quant::int8::{gemm_u8i8, gemm_u8i8_strided, ActQuant, Int8Rows, IntIsa, Strides};

/// Runs `f` on a quantized tensor's values, borrowed in place when they are contiguous (the
/// usual case) rather than copied.
fn with_u8<R>(t: &Tensor, f: impl FnOnce(&[u8]) -> R) -> gstick_nn::Result<R> {
    if t.dtype() != DType::U8 {
        return Err(gstick_nn::Error::Config(format!(
            "an int8 cell received {:?} values; it reads quantized (u8) activations",
            t.dtype()
        )));
    }
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::U8(v)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&v[start..end]));
        }
    }
    Ok(f(&t.flatten_all()?.to_vec1::<u8>()?))
}

/// Elementwise work is split in chunks this long across threads.
const ELEMENT_CHUNK: usize = 1 << 16;

/// `f` of every value, in parallel.
fn map_values<S: Copy + Sync, T: Copy + Default + Send>(
    x: &[S],
    f: impl Fn(S) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    for_each_chunk(&mut out, ELEMENT_CHUNK, |i, dst| {
        let src = &x[i * ELEMENT_CHUNK..i * ELEMENT_CHUNK + dst.len()];
        for (y, &u) in dst.iter_mut().zip(src) {
            *y = f(u);
        }
    });
    out
}

fn u8_tensor(values: Vec<u8>, dims: &[usize]) -> gstick_nn::Result<Tensor> {
    Ok(Tensor::from_vec(values, dims, &Device::Cpu)?)
}

/// What an integer layer produces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Int8Out {
    /// Dequantized f32 (a layer whose consumer is not quantized, such as the logits).
    Float,
    /// Requantized to these parameters, optionally after a fused ReLU.
    Quantized { quant: ActQuant, relu: bool },
}

impl Int8Out {
    fn describe(&self) -> String {
        match self {
            Int8Out::Float => "-> f32".into(),
            Int8Out::Quantized { quant, relu } => format!(
                "{}-> u8 (scale {:.4e}, zero point {})",
                if *relu { "relu " } else { "" },
                quant.scale,
                quant.zero_point
            ),
        }
    }
}

/// The optional fused ReLU, then requantization: what a quantized output does with a value.
#[inline]
fn requantize(quant: &ActQuant, relu: bool, x: f32) -> u8 {
    quant.quantize(if relu { x.max(0.0) } else { x })
}

/// f32 -> u8 with the parameters of the fake quantizer it replaces.
#[derive(Clone, Debug)]
pub struct Quantize {
    pub quant: ActQuant,
}

impl Cell for Quantize {
    fn kind(&self) -> &'static str {
        "Quantize"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("Quantize", inputs, 1)?;
        let x: Vec<f32> = inputs[0].flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        u8_tensor(map_values(&x, |v| self.quant.quantize(v)), inputs[0].dims())
    }
    fn summary(&self) -> String {
        format!(
            "scale {:.4e}, zero point {}",
            self.quant.scale, self.quant.zero_point
        )
    }
}

/// u8 -> f32.
#[derive(Clone, Debug)]
pub struct Dequantize {
    pub quant: ActQuant,
}

impl Cell for Dequantize {
    fn kind(&self) -> &'static str {
        "Dequantize"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("Dequantize", inputs, 1)?;
        let x = with_u8(&inputs[0], |u| map_values(u, |v| self.quant.dequantize(v)))?;
        Ok(Tensor::from_vec(x, inputs[0].dims(), &Device::Cpu)?)
    }
}

/// u8 -> u8 from one set of parameters to another, through a 256-entry table (optionally with a
/// ReLU applied in between, and optionally after an integer ReLU `max(u, floor)` on the input:
/// an `Int8ReLU` folded in, the same integers in one pass).
#[derive(Clone, Debug)]
pub struct Requantize {
    pub from: ActQuant,
    pub to: ActQuant,
    pub relu: bool,
    pub floor: Option<u8>,
    table: Vec<u8>,
}

impl Requantize {
    pub fn new(from: ActQuant, to: ActQuant, relu: bool) -> Self {
        Self::with_floor(from, to, relu, None)
    }

    /// [`Requantize::new`] reading `max(u, floor)` instead of `u`.
    pub fn with_floor(from: ActQuant, to: ActQuant, relu: bool, floor: Option<u8>) -> Self {
        let table = (0..=255u8)
            .map(|u| {
                let u = floor.map_or(u, |f| u.max(f));
                requantize(&to, relu, from.dequantize(u))
            })
            .collect();
        Requantize {
            from,
            to,
            relu,
            floor,
            table,
        }
    }
}

impl Cell for Requantize {
    fn kind(&self) -> &'static str {
        "Requantize"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("Requantize", inputs, 1)?;
        let u = with_u8(&inputs[0], |u| map_values(u, |v| self.table[v as usize]))?;
        u8_tensor(u, inputs[0].dims())
    }
    fn summary(&self) -> String {
        format!(
            "{}{}scale {:.4e} -> {:.4e}",
            self.floor
                .map_or(String::new(), |f| format!("max(u, {f}), ")),
            if self.relu { "relu, " } else { "" },
            self.from.scale,
            self.to.scale
        )
    }
}

/// ReLU on quantized values: max(u, zero point).
#[derive(Clone, Debug)]
pub struct Int8Relu {
    pub zero_point: u8,
}

impl Cell for Int8Relu {
    fn kind(&self) -> &'static str {
        "Int8ReLU"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("Int8ReLU", inputs, 1)?;
        let u = with_u8(&inputs[0], |u| map_values(u, |v| v.max(self.zero_point)))?;
        u8_tensor(u, inputs[0].dims())
    }
}

/// Max pooling of quantized NCHW values (order is kept by quantization, so the max commutes).
#[derive(Clone, Debug)]
pub struct Int8MaxPool {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Cell for Int8MaxPool {
    fn kind(&self) -> &'static str {
        "Int8MaxPool2d"
    }
    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("Int8MaxPool2d", inputs, 1)?;
        let (n, c, h, w) = inputs[0].dims4()?;
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        if k == 0 || s == 0 || h + 2 * p < k || w + 2 * p < k {
            return Err(gstick_nn::Error::Config(format!(
                "Int8MaxPool2d: a {k}x{k} window (stride {s}, padding {p}) does not fit {h}x{w}"
            )));
        }
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let mut out = vec![0u8; n * c * oh * ow];
        let pool = |plane: &[u8], dst: &mut [u8]| {
            if (k, s, p) == (2, 2, 0) {
                // The common 2x2 pool: pairs of pairs.
                for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                    let r0 = &plane[2 * oy * w..2 * oy * w + 2 * ow];
                    let r1 = &plane[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow];
                    for ((m, a), b) in row
                        .iter_mut()
                        .zip(r0.chunks_exact(2))
                        .zip(r1.chunks_exact(2))
                    {
                        *m = a[0].max(a[1]).max(b[0].max(b[1]));
                    }
                }
                return;
            }
            if p == 0 {
                // Every window lies inside the plane: no border checks.
                for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                    row.fill(0);
                    for ky in 0..k {
                        let line = &plane[(oy * s + ky) * w..(oy * s + ky + 1) * w];
                        for (ox, m) in row.iter_mut().enumerate() {
                            let window = &line[ox * s..ox * s + k];
                            *m = window.iter().fold(*m, |a, &b| a.max(b));
                        }
                    }
                }
                return;
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = 0u8;
                    for ky in 0..k {
                        for kx in 0..k {
                            let y = (oy * s + ky) as isize - p as isize;
                            let x = (ox * s + kx) as isize - p as isize;
                            if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                                m = m.max(plane[y as usize * w + x as usize]);
                            }
                        }
                    }
                    dst[oy * ow + ox] = m;
                }
            }
        };
        // Planes are small: several per task.
        const PLANES: usize = 32;
        with_u8(&inputs[0], |u| {
            for_each_chunk(&mut out, oh * ow * PLANES, |i, dst| {
                let planes = &u[i * h * w * PLANES..(i * PLANES + dst.len() / (oh * ow)) * h * w];
                for (dst, plane) in dst
                    .chunks_exact_mut(oh * ow)
                    .zip(planes.chunks_exact(h * w))
                {
                    pool(plane, dst)
                }
            })
        })?;
        u8_tensor(out, &[n, c, oh, ow])
    }
    fn summary(&self) -> String {
        format!("{}x{} stride {}", self.kernel, self.kernel, self.stride)
    }
}

/// Integer weights of a conv or Linear: w = (q - zero_point) * scale per output channel, and the
/// float bias. The stored q is the fake quantizer's unsigned grid point minus 128, which always
/// fits a signed byte; symmetric ranges give zero points of 0 (or -1 when the nudged zero point
/// rounded to 127).
#[derive(Clone, Debug)]
pub struct Int8Weights {
    pub rows: Int8Rows,
    pub scales: Vec<f32>,
    pub zero_points: Vec<i32>,
    pub bias: Vec<f32>,
    /// A BatchNorm kept after the layer (SimQAT without folding), applied per channel in the
    /// order its evaluation uses, so the deploy network rounds as the training network did.
    pub batch_norm: Option<BnAffine>,
}

/// Evaluation-mode BatchNorm per channel: (y - mean) / sqrt(var + eps) * gamma + beta.
#[derive(Clone, Debug)]
pub struct BnAffine {
    pub mean: Vec<f32>,
    /// sqrt(var + eps).
    pub denom: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

impl Int8Weights {
    /// Whether any weight zero point is not 0 (then the activation sums are needed).
    fn offset(&self) -> bool {
        self.zero_points.iter().any(|&z| z != 0)
    }
}

/// One output channel's epilogue with everything that does not depend on the position folded in
/// advance: the value is `(acc + offset - zw * a_sum) * mult + add`, where `acc = sum_k u_k q_k`
/// and `a_sum = sum_k u_k`. For a float output that is
/// y = s_in s_w sum_k (u_k - zp_in)(q_k - zp_w) + bias, then the kept BatchNorm; for a quantized
/// output `mult` and `add` also carry the output's
/// 1/scale and offset, so the value is y's position on the output grid plus 0.5 (see [`Grid`]).
#[derive(Clone, Copy, Debug)]
struct ChannelAffine {
    mult: f32,
    add: f32,
    /// -zp_in * row_sum + k * zp_in * zp_w.
    offset: i32,
    zw: i32,
}

impl ChannelAffine {
    #[inline(always)]
    fn value(&self, acc: i32, a_sum: i32) -> f32 {
        (acc + self.offset - self.zw * a_sum) as f32 * self.mult + self.add
    }
}

/// Clamping to a quantized output's grid: values are grid positions plus 0.5, so truncation
/// rounds. The lower bound is the grid's 0, or its zero point under a fused ReLU.
#[derive(Clone, Copy, Debug)]
struct Grid {
    lo: f32,
    hi: f32,
}

impl Grid {
    fn new(quant: &ActQuant, relu: bool) -> Self {
        let position = |x: f32| {
            let t = (x.clamp(quant.min, quant.max) - quant.min) / quant.scale + 0.5;
            // Degenerate parameters must not break the unchecked cast of `to_u8`.
            if t.is_finite() {
                t.clamp(0.5, 255.5)
            } else {
                0.5
            }
        };
        Grid {
            lo: if relu { position(0.0) } else { 0.5 },
            hi: position(quant.max),
        }
    }

    #[inline(always)]
    fn to_u8(self, t: f32) -> u8 {
        let t = t.max(self.lo).min(self.hi);
        // SAFETY: `t` is in [lo, hi] within [0.5, 255.5] (`max` maps a NaN to `lo`), so it is
        // finite and fits an i32. The unchecked truncation vectorizes; the saturating cast
        // compiles to a branch per value.
        unsafe { t.to_int_unchecked::<i32>() as u8 }
    }
}

impl Int8Weights {
    /// Every output channel's epilogue; `out` folds in a quantized output's grid.
    fn channels(&self, input: &ActQuant, out: Option<&ActQuant>) -> Vec<ChannelAffine> {
        let (zx, k) = (input.zero_point as i32, self.rows.cols as i32);
        (0..self.rows.rows)
            .map(|o| {
                let (mut mult, mut add) = (input.scale * self.scales[o], self.bias[o]);
                if let Some(b) = &self.batch_norm {
                    let g = b.gamma[o] / b.denom[o];
                    (mult, add) = (mult * g, (add - b.mean[o]) * g + b.beta[o]);
                }
                if let Some(q) = out {
                    (mult, add) = (mult / q.scale, (add - q.min) / q.scale + 0.5);
                }
                ChannelAffine {
                    mult,
                    add,
                    offset: -zx * self.rows.row_sums[o] + k * zx * self.zero_points[o],
                    zw: self.zero_points[o],
                }
            })
            .collect()
    }
}

/// Writes one output channel's values from its accumulators (and the activation sums, needed
/// only when the channel's weight zero point is not 0).
trait Finish: Copy + Default + Send {
    fn finish(acc: &[i32], sums: &[i32], ch: &ChannelAffine, grid: Option<Grid>, dst: &mut [Self]);

    /// One value, for layers too small to finish by channel runs.
    fn one(value: f32, grid: Option<Grid>) -> Self;
}

impl Finish for f32 {
    fn finish(acc: &[i32], sums: &[i32], ch: &ChannelAffine, _: Option<Grid>, dst: &mut [f32]) {
        if ch.zw == 0 {
            for (y, &a) in dst.iter_mut().zip(acc) {
                *y = ch.value(a, 0);
            }
        } else {
            for ((y, &a), &s) in dst.iter_mut().zip(acc).zip(sums) {
                *y = ch.value(a, s);
            }
        }
    }

    fn one(value: f32, _: Option<Grid>) -> f32 {
        value
    }
}

impl Finish for u8 {
    fn finish(acc: &[i32], sums: &[i32], ch: &ChannelAffine, grid: Option<Grid>, dst: &mut [u8]) {
        let grid = grid.expect("a quantized output has a grid");
        // The same loop compiled for wider vectors where the CPU has them; the float operations
        // are the same, so the bytes are too.
        #[cfg(target_arch = "x86_64")]
        match IntIsa::detect() {
            // SAFETY: `detect` only names instruction sets this CPU supports.
            IntIsa::Avx512Vnni => return unsafe { finish_u8_avx512(acc, sums, ch, grid, dst) },
            IntIsa::Avx2 => return unsafe { finish_u8_avx2(acc, sums, ch, grid, dst) },
            IntIsa::Portable => {}
        }
        finish_u8(acc, sums, ch, grid, dst)
    }

    fn one(value: f32, grid: Option<Grid>) -> u8 {
        grid.expect("a quantized output has a grid").to_u8(value)
    }
}

#[inline(always)]
fn finish_u8(acc: &[i32], sums: &[i32], ch: &ChannelAffine, grid: Grid, dst: &mut [u8]) {
    if ch.zw == 0 {
        for (y, &a) in dst.iter_mut().zip(acc) {
            *y = grid.to_u8(ch.value(a, 0));
        }
    } else {
        for ((y, &a), &s) in dst.iter_mut().zip(acc).zip(sums) {
            *y = grid.to_u8(ch.value(a, s));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn finish_u8_avx512(
    acc: &[i32],
    sums: &[i32],
    ch: &ChannelAffine,
    grid: Grid,
    dst: &mut [u8],
) {
    finish_u8(acc, sums, ch, grid, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn finish_u8_avx2(
    acc: &[i32],
    sums: &[i32],
    ch: &ChannelAffine,
    grid: Grid,
    dst: &mut [u8],
) {
    finish_u8(acc, sums, ch, grid, dst)
}

/// The channels' epilogues and, for a quantized output, its grid.
fn epilogue(
    weights: &Int8Weights,
    input: &ActQuant,
    out: &Int8Out,
) -> (Vec<ChannelAffine>, Option<Grid>) {
    match out {
        Int8Out::Float => (weights.channels(input, None), None),
        Int8Out::Quantized { quant, relu } => (
            weights.channels(input, Some(quant)),
            Some(Grid::new(quant, *relu)),
        ),
    }
}

/// Sum of the first `cols` bytes of each `stride`-long row of `a`, into `out`.
fn row_sums(a: &[u8], stride: usize, cols: usize, out: &mut [i32]) {
    for (s, r) in out.iter_mut().zip(a.chunks_exact(stride)) {
        *s = r[..cols].iter().map(|&v| v as i32).sum();
    }
}

/// Conv2d on quantized input with int8 weights (groups of 1).
#[derive(Clone, Debug)]
pub struct Int8Conv2d {
    pub weights: Int8Weights,
    pub input: ActQuant,
    pub out: Int8Out,
    pub kernel: (usize, usize),
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    /// The weights in (ky, kx, channel) order for channels-last unfolding, made on first use.
    pub taps: std::sync::Arc<std::sync::OnceLock<Int8Rows>>,
    /// The same with each tap's channels padded to whole quads, for the VNNI path.
    pub quad_taps: std::sync::Arc<std::sync::OnceLock<Int8Rows>>,
}

/// A zeroed buffer whose slice starts on a 64-byte boundary, so the GEMM's 64-byte loads and
/// stores of whole row blocks do not straddle cache lines.
struct Aligned<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    fn zeroed(len: usize) -> Self {
        let spare = 64 / std::mem::size_of::<T>();
        let buf = vec![T::default(); len + spare];
        let start = buf.as_ptr().align_offset(64).min(spare);
        Aligned { buf, start, len }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Channels from which unfolding goes through a channels-last copy (runs of this many bytes
/// beat single-byte gathers).
const HWC_MIN_CHANNELS: usize = 4;

impl Int8Conv2d {
    /// The weights in (ky, kx, channel) order, each tap's channels padded to `padded` with zeros.
    fn taps_padded(&self, padded: usize) -> Int8Rows {
        let w = &self.weights.rows;
        let mut values = Vec::with_capacity(w.rows * w.cols);
        for r in 0..w.rows {
            values.extend_from_slice(&w.data[r * w.k_padded..r * w.k_padded + w.cols]);
        }
        let (kh, kw) = self.kernel;
        let channels = w.cols / (kh * kw);
        let taps = reorder_to_taps(&values, w.rows, channels, padded, (kh, kw));
        Int8Rows::new(&taps, w.rows, padded * kh * kw)
    }

    /// The weights for channels-last unfolding (made on first use).
    fn tap_rows(&self) -> &Int8Rows {
        let channels = self.weights.rows.cols / (self.kernel.0 * self.kernel.1);
        self.taps.get_or_init(|| self.taps_padded(channels))
    }

    /// The weights for the quad layout: taps with channels padded to whole quads.
    fn quad_rows(&self) -> &Int8Rows {
        let channels = self.weights.rows.cols / (self.kernel.0 * self.kernel.1);
        self.quad_taps
            .get_or_init(|| self.taps_padded(channels.div_ceil(4) * 4))
    }

    /// Every image: unfold, multiply (stored channel-major), then finish each channel's values.
    /// With VNNI the image is interleaved into padded planes of channel quads; a stride-1
    /// convolution multiplies them in place ([`InPlaceQuads`]), others are unfolded into the quad
    /// layout first; either GEMM writes channel-major sums directly. Without VNNI the image is
    /// unfolded into row-major windows (channels-last for wide layers). One run of images per
    /// thread; integer sums make the result independent of the split and path.
    fn images<T: Finish>(&self, x: &[u8], shape: &ConvShape) -> Vec<T> {
        let (oh, ow) = shape.out_hw();
        let positions = oh * ow;
        let co = self.weights.rows.rows;
        let image_len = shape.channels * shape.height * shape.width;
        let n = x.len() / image_len.max(1);
        let mut out = vec![T::default(); n * co * positions];
        let isa = IntIsa::detect();
        let (channels, grid) = epilogue(&self.weights, &self.input, &self.out);
        let offsets = self.weights.offset();
        let zp = self.input.zero_point;
        let quad = isa == IntIsa::Avx512Vnni;
        let in_place = if quad { InPlaceQuads::new(shape) } else { None };
        // Rows of the GEMM: the in-place layout has `pitch - ow` discarded rows per line.
        let gemm_rows = in_place.as_ref().map_or(positions, |p| p.rows);
        let hwc = !quad && shape.channels >= HWC_MIN_CHANNELS;
        let weights = match (quad, hwc) {
            (true, _) => self.quad_rows(),
            (false, true) => self.tap_rows(),
            (false, false) => &self.weights.rows,
        };
        let (kp, cols) = (weights.k_padded, weights.cols);
        let qshape = QuadShape {
            m: positions,
            k: cols,
        };
        let threads = gstick_nn::kernels::kernel_threads().max(1);
        let per_task = n.div_ceil(threads).max(1);
        let out_len = co * positions;
        for_each_chunk(&mut out, out_len * per_task, |i, dst_images| {
            let first = i * per_task;
            let src_images =
                &x[first * image_len..(first + dst_images.len() / out_len) * image_len];
            // Buffers allocated once per thread.
            let mut unfolded = Aligned::<u8>::zeroed(match (quad, &in_place) {
                (true, Some(_)) => 0,
                (true, None) => qshape.len(),
                (false, _) => positions * kp,
            });
            let unfolded = unfolded.as_mut_slice();
            let mut scratch = Vec::new();
            let mut acc = Aligned::<i32>::zeroed(gemm_rows * co);
            let acc = acc.as_mut_slice();
            let mut sums = vec![0i32; gemm_rows];
            let mut virtual_rows =
                vec![T::default(); if in_place.is_some() { gemm_rows } else { 0 }];
            for (dst, image) in dst_images
                .chunks_exact_mut(out_len)
                .zip(src_images.chunks_exact(image_len))
            {
                if let Some(p) = &in_place {
                    pad_into_quads(image, shape, zp, p.tail, &mut scratch);
                    gemm_quads_at(isa, &scratch, &p.bases, p.rows, weights, acc);
                    if offsets {
                        quad_row_sums_at(isa, &scratch, &p.bases, p.rows, &mut sums);
                    }
                    // Every virtual row is finished in one vector loop (lines are short), then
                    // each output line is copied out, the border rows left behind.
                    for ((ch, dst), acc) in channels
                        .iter()
                        .zip(dst.chunks_exact_mut(positions))
                        .zip(acc.chunks_exact(p.rows))
                    {
                        T::finish(acc, &sums, ch, grid, &mut virtual_rows);
                        for (line, src) in dst
                            .chunks_exact_mut(ow)
                            .zip(virtual_rows.chunks_exact(p.pitch))
                        {
                            line.copy_from_slice(&src[..ow]);
                        }
                    }
                    continue;
                }
                if quad {
                    im2col_quads_u8(image, shape, zp, &mut scratch, unfolded);
                    gemm_quads(isa, unfolded, qshape, weights, acc);
                    if offsets {
                        quad_row_sums(unfolded, qshape, &mut sums);
                    }
                } else {
                    if hwc {
                        scratch.resize(image_len, 0);
                        let (c, h, w) = (shape.channels, shape.height, shape.width);
                        to_hwc(image, c, h, w, &mut scratch);
                        im2col_hwc_u8(&scratch, shape, zp, kp, unfolded);
                    } else {
                        im2col_u8(image, shape, zp, kp, unfolded);
                    }
                    let strides = Strides {
                        row: 1,
                        col: positions,
                    };
                    gemm_u8i8_strided(isa, unfolded, positions, weights, acc, strides);
                    if offsets {
                        row_sums(unfolded, kp, cols, &mut sums);
                    }
                }
                for ((ch, dst), acc) in channels
                    .iter()
                    .zip(dst.chunks_exact_mut(positions))
                    .zip(acc.chunks_exact(positions))
                {
                    T::finish(acc, &sums, ch, grid, dst);
                }
            }
        });
        out
    }
}

impl Cell for Int8Conv2d {
    fn kind(&self) -> &'static str {
        "Int8Conv2d"
    }

    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("Int8Conv2d", inputs, 1)?;
        let (n, c, h, w) = inputs[0].dims4()?;
        let shape = ConvShape {
            channels: c,
            height: h,
            width: w,
            kernel_h: self.kernel.0,
            kernel_w: self.kernel.1,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        };
        if shape.window() != self.weights.rows.cols {
            return Err(gstick_nn::Error::Config(format!(
                "Int8Conv2d: input has {c} channels, the weight expects {}",
                self.weights.rows.cols / (self.kernel.0 * self.kernel.1)
            )));
        }
        let (oh, ow) = shape.out_hw();
        let co = self.weights.rows.rows;
        let dims = [n, co, oh, ow];
        match self.out {
            Int8Out::Float => Ok(Tensor::from_vec(
                with_u8(&inputs[0], |x| self.images::<f32>(x, &shape))?,
                &dims[..],
                &Device::Cpu,
            )?),
            Int8Out::Quantized { .. } => u8_tensor(
                with_u8(&inputs[0], |x| self.images::<u8>(x, &shape))?,
                &dims,
            ),
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} -> {} channels, {}x{} {}",
            self.weights.rows.cols / (self.kernel.0 * self.kernel.1),
            self.weights.rows.rows,
            self.kernel.0,
            self.kernel.1,
            self.out.describe()
        )
    }
}

/// Linear on quantized (batch, features) input with int8 weights.
#[derive(Clone, Debug)]
pub struct Int8Linear {
    pub weights: Int8Weights,
    pub input: ActQuant,
    pub out: Int8Out,
}

impl Int8Linear {
    /// Rows in fixed chunks across threads (integer sums are exact, so the split does not
    /// matter); each chunk is padded, multiplied and finished.
    fn rows<T: Finish>(&self, x: &[u8], m: usize) -> Vec<T> {
        const CHUNK: usize = 64;
        let (n, k, kp) = (
            self.weights.rows.rows,
            self.weights.rows.cols,
            self.weights.rows.k_padded,
        );
        let isa = IntIsa::detect();
        let (channels, grid) = epilogue(&self.weights, &self.input, &self.out);
        let offsets = self.weights.offset();
        let mut out = vec![T::default(); m * n];
        for_each_chunk(&mut out, CHUNK * n, |i, dst| {
            let src = &x[i * CHUNK * k..(i * CHUNK + dst.len() / n) * k];
            let mr = src.len() / k.max(1);
            let mut padded = vec![0u8; mr * kp];
            for (d, s) in padded.chunks_exact_mut(kp).zip(src.chunks_exact(k)) {
                d[..k].copy_from_slice(s);
            }
            let mut acc = vec![0i32; mr * n];
            gemm_u8i8(isa, &padded, mr, &self.weights.rows, &mut acc);
            let mut sums = vec![0; mr];
            if offsets {
                row_sums(&padded, kp, k, &mut sums);
            }
            for ((dst, acc), &s) in dst.chunks_exact_mut(n).zip(acc.chunks_exact(n)).zip(&sums) {
                for ((y, &a), ch) in dst.iter_mut().zip(acc).zip(&channels) {
                    *y = T::one(ch.value(a, s), grid);
                }
            }
        });
        out
    }
}

impl Cell for Int8Linear {
    fn kind(&self) -> &'static str {
        "Int8Linear"
    }

    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("Int8Linear", inputs, 1)?;
        let (m, k) = inputs[0].dims2()?;
        if k != self.weights.rows.cols {
            return Err(gstick_nn::Error::Config(format!(
                "Int8Linear: input has {k} features, the weight {}",
                self.weights.rows.cols
            )));
        }
        let dims = [m, self.weights.rows.rows];
        match self.out {
            Int8Out::Float => Ok(Tensor::from_vec(
                with_u8(&inputs[0], |x| self.rows::<f32>(x, m))?,
                &dims[..],
                &Device::Cpu,
            )?),
            Int8Out::Quantized { .. } => {
                u8_tensor(with_u8(&inputs[0], |x| self.rows::<u8>(x, m))?, &dims)
            }
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} -> {} {}",
            self.weights.rows.cols,
            self.weights.rows.rows,
            self.out.describe()
        )
    }
}

/// Sum of two quantized tensors (the residual Add), dequantized then requantized. A quantized
/// output is looked up in a table over every pair of inputs, made from the same arithmetic; a
/// `Requantize` that followed it (with its ReLU folded in) is composed into that table.
#[derive(Clone, Debug)]
pub struct Int8Add {
    pub a: ActQuant,
    pub b: ActQuant,
    pub out: Int8Out,
    /// Applied to the quantized sum (kept for export; computed through the table).
    pub then: Option<Requantize>,
    /// The quantized output of every input pair.
    table: Option<std::sync::Arc<PairTable>>,
}

impl Int8Add {
    pub fn new(a: ActQuant, b: ActQuant, out: Int8Out) -> Self {
        let table = match out {
            Int8Out::Float => None,
            Int8Out::Quantized { quant, relu } => {
                Some(std::sync::Arc::new(PairTable::from_fn(|u, v| {
                    requantize(&quant, relu, a.dequantize(u) + b.dequantize(v))
                })))
            }
        };
        Int8Add {
            a,
            b,
            out,
            then: None,
            table,
        }
    }

    /// This Add followed by `next`, in one table lookup (the same integers as the two cells);
    /// `None` when the sum is not quantized or already has a follower.
    pub fn then_requantize(&self, next: Requantize) -> Option<Int8Add> {
        if self.then.is_some() {
            return None;
        }
        let table = self.table.as_ref()?;
        let composed = std::sync::Arc::new(table.then(|u| next.table[u as usize]));
        Some(Int8Add {
            then: Some(next),
            table: Some(composed),
            ..self.clone()
        })
    }
}

impl Cell for Int8Add {
    fn kind(&self) -> &'static str {
        "Int8Add"
    }

    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("Int8Add", inputs, 2)?;
        let dims = inputs[0].dims();
        if dims != inputs[1].dims() {
            return Err(gstick_nn::Error::Config(format!(
                "Int8Add: shapes {dims:?} and {:?} differ",
                inputs[1].dims()
            )));
        }
        fn zip_map<T: Copy + Default + Send>(
            x: &[u8],
            y: &[u8],
            f: impl Fn(u8, u8) -> T + Sync,
        ) -> Vec<T> {
            let mut out = vec![T::default(); x.len()];
            for_each_chunk(&mut out, ELEMENT_CHUNK, |i, dst| {
                let range = i * ELEMENT_CHUNK..i * ELEMENT_CHUNK + dst.len();
                let (x, y) = (&x[range.clone()], &y[range]);
                for ((d, &u), &v) in dst.iter_mut().zip(x).zip(y) {
                    *d = f(u, v);
                }
            });
            out
        }
        let (a, b) = (self.a, self.b);
        with_u8(&inputs[0], |x| {
            with_u8(&inputs[1], |y| match &self.table {
                Some(table) => {
                    let isa = IntIsa::detect();
                    let mut out = vec![0u8; x.len()];
                    for_each_chunk(&mut out, ELEMENT_CHUNK, |i, dst| {
                        let range = i * ELEMENT_CHUNK..i * ELEMENT_CHUNK + dst.len();
                        table.apply(isa, &x[range.clone()], &y[range], dst);
                    });
                    u8_tensor(out, dims)
                }
                None => Ok(Tensor::from_vec(
                    zip_map(x, y, |u, v| a.dequantize(u) + b.dequantize(v)),
                    dims,
                    &Device::Cpu,
                )?),
            })
        })??
    }

    fn summary(&self) -> String {
        match &self.then {
            Some(r) => format!("{}, then {}", self.out.describe(), r.summary()),
            None => self.out.describe(),
        }
    }
}
