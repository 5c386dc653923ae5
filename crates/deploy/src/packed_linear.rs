//! The deploy Linear (spec `PTQMode.DEPLOY`): a cell that computes with packed integer weights
//! through `gstick_quant::kernels`, holding no f32 copy of the weight.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use gstick_nn::{Cell, CellCtx, Param};
use gstick_quant::kernels::{self, PackedWeight};

/// A Linear whose weight lives only in packed integer form.
#[derive(Clone, Debug)]
pub struct PackedLinear {
    pub packed: Arc<PackedWeight>,
    pub bias: Option<Param>,
    /// The quantization summary string (`W4-per_group`).
    pub label: String,
}

struct PackedMatmul(Arc<PackedWeight>);

impl CustomOp1 for PackedMatmul {
    fn name(&self) -> &'static str {
        "gstick-packed-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            return Err(candle_core::Error::Msg(
                "packed linear: f32 input only".into(),
            ));
        };
        let (m, _) = l.shape().dims2()?;
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("packed linear: input not contiguous".into()))?;
        let mut out = vec![0f32; m * self.0.rows];
        kernels::linear(
            &data[start..end],
            m,
            &self.0,
            &mut out,
            gstick_nn::kernels::kernel_threads(),
        )
        .map_err(|e| candle_core::Error::Msg(format!("packed linear: {e}")))?;
        Ok((CpuStorage::F32(out), Shape::from((m, self.0.rows))))
    }
}

impl Cell for PackedLinear {
    fn kind(&self) -> &'static str {
        "PackedLinear"
    }

    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> gstick_nn::Result<Tensor> {
        let [x] = inputs else {
            return Err(gstick_nn::Error::Config(format!(
                "PackedLinear takes 1 input, got {}",
                inputs.len()
            )));
        };
        let mut dims = x.dims().to_vec();
        let cols = *dims.last().unwrap_or(&0);
        if cols != self.packed.cols {
            return Err(gstick_nn::Error::Config(format!(
                "PackedLinear ({}): input has {cols} features, the weight {}",
                self.label, self.packed.cols
            )));
        }
        let x2 = x
            .reshape((x.elem_count() / cols.max(1), cols))?
            .contiguous()?;
        let y = x2.apply_op1_no_bwd(&PackedMatmul(self.packed.clone()))?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.value(ctx.mode))?,
            None => y,
        };
        if let Some(last) = dims.last_mut() {
            *last = self.packed.rows;
        }
        Ok(y.reshape(dims)?)
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        self.bias.iter().map(|b| ("bias", b)).collect()
    }

    fn summary(&self) -> String {
        format!(
            "{} ({} x {}, {} bytes)",
            self.label,
            self.packed.rows,
            self.packed.cols,
            self.packed.bytes()
        )
    }
}
