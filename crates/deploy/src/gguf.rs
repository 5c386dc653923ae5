//! Reading a GGUF file with its Q8_0, Q4_0 and Q4_1 Linear weights kept as stored, on the kernels
//! (q/k rows taken in our rotate-half order from llama.cpp's permuted layout).

use std::path::Path;

use candle_core::Tensor;
use gstick_models::gguf::Gguf;
use gstick_models::llama::{gguf_name, gguf_row, GgufWeights, LlamaConfig, WeightSource};
use gstick_quant::kernels::PackedWeight;
use gstick_quant::GgmlType;

use crate::install::DeployWeight;
use crate::load::PackedReader;
use crate::{load_error, Result};

pub(crate) struct GgufReader<'a> {
    weights: GgufWeights<'a>,
}

impl<'a> GgufReader<'a> {
    pub(crate) fn new(gguf: &'a Gguf) -> Result<Self> {
        Ok(GgufReader {
            weights: GgufWeights::new(gguf)?,
        })
    }
}

impl PackedReader for GgufReader<'_> {
    fn config(&self) -> Result<LlamaConfig> {
        Ok(self.weights.config.clone())
    }

    fn packed(&mut self, name: &str, shape: &[usize]) -> Result<Option<(DeployWeight, String)>> {
        let (&[rows, cols], true) = (shape, name.starts_with("model.layers.")) else {
            return Ok(None);
        };
        let gguf = self.weights.gguf;
        let Some(gname) = gguf_name(name) else {
            return Ok(None);
        };
        let info = gguf.tensor_info(&gname)?;
        if !matches!(info.ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1) {
            return Ok(None);
        }
        if info.shape() != shape {
            return Err(load_error(
                gguf.path(),
                format!("`{gname}` is {:?}, {shape:?} expected", info.shape()),
            ));
        }
        let heads = self
            .weights
            .config
            .rope_heads(name)
            .filter(|_| self.weights.permuted_qk);
        let source_row = |r: usize| heads.map_or(r, |h| gguf_row(r, rows, h));
        let packed =
            PackedWeight::from_ggml(info.ty, gguf.tensor_bytes(&gname)?, rows, cols, source_row)
                .map_err(|e| load_error(gguf.path(), format!("`{gname}`: {e}")))?;
        Ok(Some((
            DeployWeight::Packed(packed),
            info.ty.name().to_string(),
        )))
    }

    fn float(&mut self, name: &str, shape: &[usize]) -> gstick_models::Result<Tensor> {
        self.weights.weight(name, shape)
    }

    fn path(&self) -> &Path {
        self.weights.gguf.path()
    }
}
