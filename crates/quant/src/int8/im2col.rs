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
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut rows[(oy * ow + ox) * k_padded..(oy * ow + ox + 1) * k_padded];
            let mut idx = 0;
            for c in 0..s.channels {
                let plane = &image[c * s.height * s.width..(c + 1) * s.height * s.width];
                for ky in 0..s.kernel_h {
                    let y = (oy * s.stride + ky * s.dilation) as isize - s.padding as isize;
                    for kx in 0..s.kernel_w {
                        let x = (ox * s.stride + kx * s.dilation) as isize - s.padding as isize;
                        row[idx] = if y >= 0
                            && x >= 0
                            && (y as usize) < s.height
                            && (x as usize) < s.width
                        {
                            plane[y as usize * s.width + x as usize]
                        } else {
                            zero_point
                        };
                        idx += 1;
                    }
                }
            }
            row[window..].fill(0);
        }
    }
}
