//! The cells of an int8 deploy network (what `convert` produces): activations travel as unsigned
//! 8-bit tensors with static (scale, zero point); convolutions and Linear layers multiply them by
//! signed 8-bit weights with 32-bit accumulation and requantize per output channel.

use candle_core::{DType, Device, Tensor};
use gstick_nn::error::expect_inputs;
use gstick_nn::{Cell, CellCtx};
use gstick_quant::int8::im2col::{im2col_hwc_u8, im2col_u8, reorder_to_taps, to_hwc, ConvShape};
use gstick_quant::int8::{gemm_u8i8, gemm_u8i8_strided, ActQuant, Int8Rows, IntIsa, Strides};
use rayon::prelude::*;

fn u8_values(t: &Tensor) -> gstick_nn::Result<Vec<u8>> {
    if t.dtype() != DType::U8 {
        return Err(gstick_nn::Error::Config(format!(
            "an int8 cell received {:?} values; it reads quantized (u8) activations",
            t.dtype()
        )));
    }
    Ok(t.flatten_all()?.to_vec1::<u8>()?)
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
        let u = x.iter().map(|&v| self.quant.quantize(v)).collect();
        u8_tensor(u, inputs[0].dims())
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
        let u = u8_values(&inputs[0])?;
        let x: Vec<f32> = u.iter().map(|&v| self.quant.dequantize(v)).collect();
        Ok(Tensor::from_vec(x, inputs[0].dims(), &Device::Cpu)?)
    }
}

/// u8 -> u8 from one set of parameters to another, through a 256-entry table (optionally with a
/// ReLU applied in between).
#[derive(Clone, Debug)]
pub struct Requantize {
    pub from: ActQuant,
    pub to: ActQuant,
    pub relu: bool,
    table: Vec<u8>,
}

impl Requantize {
    pub fn new(from: ActQuant, to: ActQuant, relu: bool) -> Self {
        let table = (0..=255u8)
            .map(|u| requantize(&to, relu, from.dequantize(u)))
            .collect();
        Requantize {
            from,
            to,
            relu,
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
        let u = u8_values(&inputs[0])?;
        u8_tensor(
            u.iter().map(|&v| self.table[v as usize]).collect(),
            inputs[0].dims(),
        )
    }
    fn summary(&self) -> String {
        format!(
            "{}scale {:.4e} -> {:.4e}",
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
        let u = u8_values(&inputs[0])?;
        u8_tensor(
            u.iter().map(|&v| v.max(self.zero_point)).collect(),
            inputs[0].dims(),
        )
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
        let u = u8_values(&inputs[0])?;
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let mut out = vec![0u8; n * c * oh * ow];
        for (plane, dst) in u.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
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
        }
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

/// One output channel's dequantization, y = s_in s_w * sum_k (u_k - zp_in)(q_k - zp_w) + bias,
/// from the GEMM's sum_k u_k q_k and the activation sum sum_k u_k, with everything that does not depend on the position
/// folded in advance.
struct ChannelAffine {
    mult: f32,
    /// -zp_in * row_sum + k * zp_in * zp_w.
    offset: i32,
    zw: i32,
    bias: f32,
    bn: Option<(f32, f32, f32, f32)>,
}

impl ChannelAffine {
    #[inline]
    fn value(&self, acc: i32, a_sum: i32) -> f32 {
        let y = (acc + self.offset - self.zw * a_sum) as f32 * self.mult + self.bias;
        match self.bn {
            None => y,
            Some((mean, denom, gamma, beta)) => (y - mean) / denom * gamma + beta,
        }
    }
}

impl Int8Weights {
    fn channels(&self, input: &ActQuant) -> Vec<ChannelAffine> {
        let (zx, k) = (input.zero_point as i32, self.rows.cols as i32);
        (0..self.rows.rows)
            .map(|o| ChannelAffine {
                mult: input.scale * self.scales[o],
                offset: -zx * self.rows.row_sums[o] + k * zx * self.zero_points[o],
                zw: self.zero_points[o],
                bias: self.bias[o],
                bn: self
                    .batch_norm
                    .as_ref()
                    .map(|b| (b.mean[o], b.denom[o], b.gamma[o], b.beta[o])),
            })
            .collect()
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
}

/// Channels from which unfolding goes through a channels-last copy (runs of this many bytes
/// beat single-byte gathers).
const HWC_MIN_CHANNELS: usize = 4;

impl Int8Conv2d {
    fn tap_rows(&self) -> &Int8Rows {
        self.taps.get_or_init(|| {
            let w = &self.weights.rows;
            let mut values = Vec::with_capacity(w.rows * w.cols);
            for r in 0..w.rows {
                values.extend_from_slice(&w.data[r * w.k_padded..r * w.k_padded + w.cols]);
            }
            let channels = w.cols / (self.kernel.0 * self.kernel.1);
            let taps = reorder_to_taps(&values, w.rows, channels, self.kernel.0, self.kernel.1);
            Int8Rows::new(&taps, w.rows, w.cols)
        })
    }

    /// Every image: unfold, multiply (stored channel-major), then `finish` each channel's
    /// dequantized value. One image per task; integer sums make the result independent of how
    /// images are split across threads.
    fn images<T: Copy + Default + Send>(
        &self,
        x: &[u8],
        shape: &ConvShape,
        finish: impl Fn(f32) -> T + Sync,
    ) -> Vec<T> {
        let (oh, ow) = shape.out_hw();
        let positions = oh * ow;
        let (co, kp, cols) = (
            self.weights.rows.rows,
            self.weights.rows.k_padded,
            self.weights.rows.cols,
        );
        let image_len = shape.channels * shape.height * shape.width;
        let n = x.len() / image_len.max(1);
        let mut out = vec![T::default(); n * co * positions];
        let isa = IntIsa::detect();
        let channels = self.weights.channels(&self.input);
        let offsets = self.weights.offset();
        let hwc = shape.channels >= HWC_MIN_CHANNELS;
        let weights = if hwc {
            self.tap_rows()
        } else {
            &self.weights.rows
        };
        // One run of whole images per thread, each with its buffers allocated once.
        let threads = gstick_nn::kernels::kernel_threads().max(1);
        let per_task = n.div_ceil(threads).max(1);
        let out_len = co * positions;
        out.par_chunks_mut(out_len * per_task)
            .zip(x.par_chunks(image_len * per_task))
            .for_each(|(dst_images, src_images)| {
                let mut rows = vec![0u8; positions * kp];
                let mut acc = vec![0i32; positions * co];
                let mut channels_last = vec![0u8; if hwc { image_len } else { 0 }];
                let mut sums = vec![0i32; positions];
                for (dst, image) in dst_images
                    .chunks_exact_mut(out_len)
                    .zip(src_images.chunks_exact(image_len))
                {
                    if hwc {
                        to_hwc(
                            image,
                            shape.channels,
                            shape.height,
                            shape.width,
                            &mut channels_last,
                        );
                        im2col_hwc_u8(&channels_last, shape, self.input.zero_point, kp, &mut rows);
                    } else {
                        im2col_u8(image, shape, self.input.zero_point, kp, &mut rows);
                    }
                    let strides = Strides {
                        row: 1,
                        col: positions,
                    };
                    gemm_u8i8_strided(isa, &rows, positions, weights, &mut acc, strides);
                    if offsets {
                        row_sums(&rows, kp, cols, &mut sums);
                    }
                    for (o, ch) in channels.iter().enumerate() {
                        let (src, dst) = (
                            &acc[o * positions..(o + 1) * positions],
                            &mut dst[o * positions..(o + 1) * positions],
                        );
                        for ((y, &a), &s) in dst.iter_mut().zip(src).zip(&sums) {
                            *y = finish(ch.value(a, s));
                        }
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
        let x = u8_values(&inputs[0])?;
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
            Int8Out::Float => {
                let y = self.images(&x, &shape, |v| v);
                Ok(Tensor::from_vec(y, &dims[..], &Device::Cpu)?)
            }
            Int8Out::Quantized { quant, relu } => {
                let y = self.images(&x, &shape, |v| requantize(&quant, relu, v));
                u8_tensor(y, &dims)
            }
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
    fn rows<T: Copy + Default + Send>(
        &self,
        x: &[u8],
        m: usize,
        finish: impl Fn(f32) -> T + Sync,
    ) -> Vec<T> {
        const CHUNK: usize = 64;
        let (n, k, kp) = (
            self.weights.rows.rows,
            self.weights.rows.cols,
            self.weights.rows.k_padded,
        );
        let isa = IntIsa::detect();
        let channels = self.weights.channels(&self.input);
        let offsets = self.weights.offset();
        let mut out = vec![T::default(); m * n];
        out.par_chunks_mut(CHUNK * n)
            .zip(x.par_chunks(CHUNK * k))
            .for_each(|(dst, src)| {
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
                for (i, (y, &a)) in dst.iter_mut().zip(&acc).enumerate() {
                    *y = finish(channels[i % n].value(a, sums[i / n]));
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
        let x = u8_values(&inputs[0])?;
        match self.out {
            Int8Out::Float => {
                let y = self.rows(&x, m, |v| v);
                Ok(Tensor::from_vec(
                    y,
                    (m, self.weights.rows.rows),
                    &Device::Cpu,
                )?)
            }
            Int8Out::Quantized { quant, relu } => {
                let y = self.rows(&x, m, |v| requantize(&quant, relu, v));
                u8_tensor(y, &[m, self.weights.rows.rows])
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

/// Sum of two quantized tensors (the residual Add), dequantized then requantized.
#[derive(Clone, Debug)]
pub struct Int8Add {
    pub a: ActQuant,
    pub b: ActQuant,
    pub out: Int8Out,
}

impl Cell for Int8Add {
    fn kind(&self) -> &'static str {
        "Int8Add"
    }

    fn forward(&self, inputs: &[Tensor], _ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        expect_inputs("Int8Add", inputs, 2)?;
        if inputs[0].dims() != inputs[1].dims() {
            return Err(gstick_nn::Error::Config(format!(
                "Int8Add: shapes {:?} and {:?} differ",
                inputs[0].dims(),
                inputs[1].dims()
            )));
        }
        let (x, y) = (u8_values(&inputs[0])?, u8_values(&inputs[1])?);
        let sums = x
            .iter()
            .zip(&y)
            .map(|(&u, &v)| self.a.dequantize(u) + self.b.dequantize(v));
        let dims = inputs[0].dims();
        match self.out {
            Int8Out::Float => Ok(Tensor::from_vec(
                sums.collect::<Vec<f32>>(),
                dims,
                &Device::Cpu,
            )?),
            Int8Out::Quantized { quant, relu } => {
                u8_tensor(sums.map(|s| requantize(&quant, relu, s)).collect(), dims)
            }
        }
    }

    fn summary(&self) -> String {
        self.out.describe()
    }
}
