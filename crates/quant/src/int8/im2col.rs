//! Unfolding one unsigned 8-bit NCHW image into GEMM rows: one row per output position, holding
//! the (channel, ky, kx) window in the weight's order, padded to the GEMM's row length. Positions
//! outside the image read the activation zero point (the quantized 0), and the row padding reads
//! 0 (it meets zero weights).

/// Geometry of a 2-D convolution with symmetric padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl ConvShape {
    pub fn out_hw(&self) -> (usize, usize) {
        let span = |size: usize, k: usize| {
            (size + 2 * self.padding).saturating_sub(self.dilation * (k - 1) + 1) / self.stride + 1
        };
        (
            span(self.height, self.kernel_h),
            span(self.width, self.kernel_w),
        )
    }

    /// Values per window before padding.
    pub fn window(&self) -> usize {
        self.channels * self.kernel_h * self.kernel_w
    }
}

/// Fills `rows` ((oh * ow) x k_padded) from `image` (channels x height x width).
pub fn im2col_u8(image: &[u8], s: &ConvShape, zero_point: u8, k_padded: usize, rows: &mut [u8]) {
    let (oh, ow) = s.out_hw();
    let window = s.window();
    let (kh, kw, d) = (s.kernel_h, s.kernel_w, s.dilation);
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut rows[(oy * ow + ox) * k_padded..(oy * ow + ox + 1) * k_padded];
            let x0 = (ox * s.stride) as isize - s.padding as isize;
            // Whole kernel rows inside the image are copied; only the border is checked.
            let inside_x = x0 >= 0 && x0 as usize + d * (kw - 1) < s.width;
            let mut idx = 0;
            for c in 0..s.channels {
                let plane = &image[c * s.height * s.width..(c + 1) * s.height * s.width];
                for ky in 0..kh {
                    let y = (oy * s.stride + ky * d) as isize - s.padding as isize;
                    let dst = &mut row[idx..idx + kw];
                    idx += kw;
                    if y < 0 || y as usize >= s.height {
                        dst.fill(zero_point);
                        continue;
                    }
                    let line = &plane[y as usize * s.width..(y as usize + 1) * s.width];
                    if inside_x && d == 1 {
                        // Kernel rows are short (1 to 7): a byte loop beats a memcpy call.
                        let src = &line[x0 as usize..x0 as usize + kw];
                        for (v, &u) in dst.iter_mut().zip(src) {
                            *v = u;
                        }
                        continue;
                    }
                    for (kx, v) in dst.iter_mut().enumerate() {
                        let x = x0 + (kx * d) as isize;
                        *v = if x >= 0 && (x as usize) < s.width {
                            line[x as usize]
                        } else {
                            zero_point
                        };
                    }
                }
            }
            row[window..].fill(0);
        }
    }
}

/// Channels-last copy of one channels-first image: `hwc[(y * width + x) * channels + c]`.
pub fn to_hwc(image: &[u8], channels: usize, height: usize, width: usize, hwc: &mut [u8]) {
    let plane = height * width;
    for c in 0..channels {
        for (i, &v) in image[c * plane..(c + 1) * plane].iter().enumerate() {
            hwc[i * channels + c] = v;
        }
    }
}

/// [`im2col_u8`] from a channels-last image, with windows in (ky, kx, channel) order: each tap is
/// one run of `channels` contiguous bytes, so wide layers copy runs instead of single bytes. The
/// weight rows must use the same order (see [`reorder_to_taps`]).
pub fn im2col_hwc_u8(hwc: &[u8], s: &ConvShape, zero_point: u8, k_padded: usize, rows: &mut [u8]) {
    // The common widths copy fixed-size runs (a few vector moves instead of a memcpy call).
    match s.channels {
        4 => unfold_taps(hwc, s, zero_point, k_padded, rows, Run::<4>),
        8 => unfold_taps(hwc, s, zero_point, k_padded, rows, Run::<8>),
        16 => unfold_taps(hwc, s, zero_point, k_padded, rows, Run::<16>),
        32 => unfold_taps(hwc, s, zero_point, k_padded, rows, Run::<32>),
        64 => unfold_taps(hwc, s, zero_point, k_padded, rows, Run::<64>),
        c => unfold_taps(hwc, s, zero_point, k_padded, rows, AnyRun(c)),
    }
}

/// Copies and fills one tap's run of channel bytes.
trait TapRun: Copy {
    fn len(self) -> usize;
    fn copy(self, dst: &mut [u8], src: &[u8]);
    fn fill(self, dst: &mut [u8], value: u8);
}

#[derive(Clone, Copy)]
struct Run<const C: usize>;

impl<const C: usize> TapRun for Run<C> {
    #[inline(always)]
    fn len(self) -> usize {
        C
    }
    #[inline(always)]
    fn copy(self, dst: &mut [u8], src: &[u8]) {
        let dst: &mut [u8; C] = (&mut dst[..C]).try_into().expect("C bytes");
        *dst = src[..C].try_into().expect("C bytes");
    }
    #[inline(always)]
    fn fill(self, dst: &mut [u8], value: u8) {
        let dst: &mut [u8; C] = (&mut dst[..C]).try_into().expect("C bytes");
        *dst = [value; C];
    }
}

#[derive(Clone, Copy)]
struct AnyRun(usize);

impl TapRun for AnyRun {
    fn len(self) -> usize {
        self.0
    }
    fn copy(self, dst: &mut [u8], src: &[u8]) {
        dst[..self.0].copy_from_slice(&src[..self.0]);
    }
    fn fill(self, dst: &mut [u8], value: u8) {
        dst[..self.0].fill(value);
    }
}

#[inline(always)]
fn unfold_taps(
    hwc: &[u8],
    s: &ConvShape,
    zero_point: u8,
    k_padded: usize,
    rows: &mut [u8],
    run: impl TapRun,
) {
    let (oh, ow) = s.out_hw();
    let (c, kh, kw, d) = (run.len(), s.kernel_h, s.kernel_w, s.dilation);
    let window = s.window();
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut rows[(oy * ow + ox) * k_padded..(oy * ow + ox + 1) * k_padded];
            for ky in 0..kh {
                let y = (oy * s.stride + ky * d) as isize - s.padding as isize;
                for kx in 0..kw {
                    let x = (ox * s.stride + kx * d) as isize - s.padding as isize;
                    let dst = &mut row[(ky * kw + kx) * c..];
                    if y >= 0 && x >= 0 && (y as usize) < s.height && (x as usize) < s.width {
                        run.copy(dst, &hwc[(y as usize * s.width + x as usize) * c..]);
                    } else {
                        run.fill(dst, zero_point);
                    }
                }
            }
            row[window..].fill(0);
        }
    }
}

/// The quad layout of [`super::quads`] straight from a channels-first image, with windows in the
/// (ky, kx, channel) order of [`reorder_to_taps`] and each tap's channels padded to a multiple of
/// 4 (`QuadShape::k` is `kh * kw * 4 * channels.div_ceil(4)`): the image goes through
/// [`pad_into_quads`] once, and every tap's group row is then one run of that copy (a plain copy
/// at stride 1), so no position needs a border check. Padding rows are not written (their sums
/// are never stored).
pub fn im2col_quads_u8(
    image: &[u8],
    s: &ConvShape,
    zero_point: u8,
    scratch: &mut Vec<u8>,
    quads: &mut [u8],
) {
    let (oh, ow) = s.out_hw();
    let cq = s.channels.div_ceil(4);
    let shape = super::quads::QuadShape {
        m: oh * ow,
        k: s.kernel_h * s.kernel_w * cq * 4,
    };
    let mp = shape.m_padded();
    let (ph, pw) = pad_into_quads(image, s, zero_point, 0, scratch);
    let (st, d) = (s.stride, s.dilation);
    for ky in 0..s.kernel_h {
        for kx in 0..s.kernel_w {
            for q in 0..cq {
                let g = (ky * s.kernel_w + kx) * cq + q;
                for oy in 0..oh {
                    let at = (g * mp + oy * ow) * 4;
                    let dst = &mut quads[at..at + ow * 4];
                    let src = ((q * ph + oy * st + ky * d) * pw + kx * d) * 4;
                    if st == 1 {
                        dst.copy_from_slice(&scratch[src..src + ow * 4]);
                    } else {
                        for (ox, quad) in dst.chunks_exact_mut(4).enumerate() {
                            let at = src + ox * st * 4;
                            quad.copy_from_slice(&scratch[at..at + 4]);
                        }
                    }
                }
            }
        }
    }
}

/// Interleaves a channels-first image into `scratch` as padded planes of 4-channel quads: plane
/// q holds channels 4q..4q+3 of every position of the (height + 2 padding) x (width + 2 padding)
/// padded image, the zero point around the image and 0 in the padding channels (which meet zero
/// weights and must not add to the activation sums). `tail` more quads of zero point follow the
/// last plane. Returns the padded height and width.
pub fn pad_into_quads(
    image: &[u8],
    s: &ConvShape,
    zero_point: u8,
    tail: usize,
    scratch: &mut Vec<u8>,
) -> (usize, usize) {
    let cq = s.channels.div_ceil(4);
    let plane = s.height * s.width;
    let (ph, pw) = (s.height + 2 * s.padding, s.width + 2 * s.padding);
    scratch.clear();
    scratch.resize((cq * ph * pw + tail) * 4, zero_point);
    let real = s.channels - 4 * (cq - 1);
    if real < 4 {
        // The last quad's padding channels hold 0 everywhere.
        let last = &mut scratch[(cq - 1) * ph * pw * 4..cq * ph * pw * 4];
        for quad in last.chunks_exact_mut(4) {
            quad[real..].fill(0);
        }
    }
    let zeros = vec![0u8; s.width];
    for q in 0..cq {
        for y in 0..s.height {
            let line = |b: usize| match 4 * q + b {
                c if c < s.channels => {
                    &image[c * plane + y * s.width..c * plane + (y + 1) * s.width]
                }
                _ => zeros.as_slice(),
            };
            let at = ((q * ph + y + s.padding) * pw + s.padding) * 4;
            interleave4(
                &mut scratch[at..at + s.width * 4],
                [line(0), line(1), line(2), line(3)],
            );
        }
    }
    (ph, pw)
}

/// A stride-1 convolution read in place from [`pad_into_quads`]'s planes, with no unfolded copy.
/// Output position (oy, ox) is computed as virtual row `oy * pitch + ox`: the rows of every
/// padded-image line, the last `pitch - ow` of which fall on the border and are discarded. Tap
/// group g = ((ky * kw + kx) * quads + q) of virtual row r is then the quad at `bases[g] + r` of
/// the planes, so each group is one contiguous run, as in [`super::quads`]'s layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InPlaceQuads {
    /// Where each tap group's rows start, in quads.
    pub bases: Vec<usize>,
    /// Virtual rows per output line (the padded width).
    pub pitch: usize,
    /// Virtual rows in all (`oh * pitch`).
    pub rows: usize,
    /// Quads of zero point [`pad_into_quads`] must add after the planes, so that the last
    /// group's padded row block stays inside the scratch.
    pub tail: usize,
}

impl InPlaceQuads {
    /// The layout of `s`, or `None` when the stride is not 1.
    pub fn new(s: &ConvShape) -> Option<InPlaceQuads> {
        if s.stride != 1 {
            return None;
        }
        let (oh, _) = s.out_hw();
        let cq = s.channels.div_ceil(4);
        let (ph, pw) = (s.height + 2 * s.padding, s.width + 2 * s.padding);
        let d = s.dilation;
        let mut bases = Vec::with_capacity(s.kernel_h * s.kernel_w * cq);
        for ky in 0..s.kernel_h {
            for kx in 0..s.kernel_w {
                for q in 0..cq {
                    bases.push((q * ph + ky * d) * pw + kx * d);
                }
            }
        }
        let rows = oh * pw;
        let padded_rows = rows.div_ceil(super::quads::ROW_BLOCK).max(1) * super::quads::ROW_BLOCK;
        let end = bases.iter().map(|b| b + padded_rows).max().unwrap_or(0);
        Some(InPlaceQuads {
            bases,
            pitch: pw,
            rows,
            tail: end.saturating_sub(cq * ph * pw),
        })
    }
}

/// `dst[4i + b] = lines[b][i]`, compiled for wide vectors where the CPU has them (the bytes are
/// the same either way).
fn interleave4(dst: &mut [u8], lines: [&[u8]; 4]) {
    #[inline(always)]
    fn body(dst: &mut [u8], [a, b, c, d]: [&[u8]; 4]) {
        let n = dst.len() / 4;
        let (a, b, c, d) = (&a[..n], &b[..n], &c[..n], &d[..n]);
        for (i, q) in dst.chunks_exact_mut(4).enumerate() {
            q.copy_from_slice(&[a[i], b[i], c[i], d[i]]);
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn wide(dst: &mut [u8], lines: [&[u8]; 4]) {
        body(dst, lines)
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: the features were just detected.
        return unsafe { wide(dst, lines) };
    }
    body(dst, lines)
}

/// Weight rows from (channel, ky, kx) order to the (ky, kx, channel) order of [`im2col_hwc_u8`]
/// and [`im2col_quads_u8`], each tap's channels padded with zero weights to `padded_channels`;
/// `values` is (rows, channels * kh * kw), the result (rows, padded_channels * kh * kw).
pub fn reorder_to_taps(
    values: &[i8],
    rows: usize,
    channels: usize,
    padded_channels: usize,
    (kh, kw): (usize, usize),
) -> Vec<i8> {
    let (k, kp) = (channels * kh * kw, padded_channels * kh * kw);
    let mut out = vec![0i8; rows * kp];
    for r in 0..rows {
        for c in 0..channels {
            for t in 0..kh * kw {
                out[r * kp + t * padded_channels + c] = values[r * k + c * kh * kw + t];
            }
        }
    }
    out
}
