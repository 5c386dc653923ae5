//! CPU kernels that candle does not provide fast enough, exposed as candle custom ops with
//! their own backward passes (so autodiff goes through them).

pub mod channel_bias;
pub mod conv2d;
pub mod max_pool2d;
pub mod relu;

/// Float element types the kernels are written for.
pub trait Elem: Copy + Default + PartialOrd + Send + Sync + 'static + std::ops::AddAssign {
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn is_nan(self) -> bool;
}

impl Elem for f32 {
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Elem for f64 {
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// The contiguous slice behind a storage and layout, or an error for a strided view (callers make
/// inputs contiguous before applying an op).
pub(crate) fn contiguous<'a, T>(
    data: &'a [T],
    layout: &candle_core::Layout,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(candle_core::Error::Msg(
            "kernel needs a contiguous tensor".into(),
        )),
    }
}
