//! Reading a Hugging Face GPTQ directory (`formats::gptq` tensors, one `quantization_config`)
//! onto the kernels.

use std::path::Path;

use candle_core::Tensor;
use gstick_models::hf::HfCheckpoint;
use gstick_models::llama::{LlamaConfig, WeightSource};
use gstick_quant::formats::gptq::{decode, GptqLayout};
use gstick_quant::kernels::PackedWeight;
use gstick_quant::{Granularity, QuantizedWeight};
use safetensors::Dtype;

use crate::install::DeployWeight;
use crate::load::PackedReader;
use crate::{load_error, Result};

/// The label a loaded quantized Linear carries (`W4-per_group`).
pub(crate) fn label(q: &QuantizedWeight) -> String {
    let granularity = match q.scheme.granularity {
        Granularity::PerGroup(_) => "per_group",
        _ => "per_channel",
    };
    format!("W{}-{granularity}", q.scheme.bits)
}

pub(crate) struct GptqReader {
    ck: HfCheckpoint,
    layout: GptqLayout,
}

impl GptqReader {
    /// Checks the `quantization_config`: 2, 4 or 8 bits, no act-order reordering.
    pub(crate) fn open(ck: HfCheckpoint) -> Result<Self> {
        let dir = ck.dir().to_path_buf();
        let qc = &ck.config["quantization_config"];
        if qc["quant_method"].as_str() != Some("gptq") {
            return Err(load_error(
                &dir,
                "config.json has no GPTQ quantization_config",
            ));
        }
        let bits = qc["bits"].as_u64().unwrap_or(0) as u32;
        if !GptqLayout::supported_bits(bits) {
            return Err(load_error(
                &dir,
                format!("{bits}-bit GPTQ checkpoints are not supported (2, 4, 8)"),
            ));
        }
        if qc["desc_act"].as_bool() == Some(true) {
            return Err(load_error(
                &dir,
                "act-order (desc_act) checkpoints with reordered g_idx are not supported yet",
            ));
        }
        if qc["checkpoint_format"]
            .as_str()
            .is_some_and(|f| f != "gptq")
        {
            return Err(load_error(
                &dir,
                "only checkpoint_format \"gptq\" is supported",
            ));
        }
        let group = qc["group_size"].as_i64().unwrap_or(-1);
        let layout = GptqLayout {
            bits,
            group: (group > 0).then_some(group as usize),
            symmetric: qc["sym"].as_bool().unwrap_or(true),
        };
        Ok(GptqReader { ck, layout })
    }

    /// One Linear's weight from its packed tensors, every shape checked.
    fn read(&self, stem: &str, rows: usize, cols: usize) -> Result<QuantizedWeight> {
        let bad = |m: String| load_error(self.ck.dir(), format!("`{stem}`: {m}"));
        let shapes = self
            .layout
            .shapes(rows, cols)
            .map_err(|e| bad(e.to_string()))?;
        let read = |suffix: &str, dtype: Dtype, shape: [usize; 2]| -> Result<Vec<u8>> {
            let (d, s, data) = self.ck.raw(&format!("{stem}.{suffix}"))?;
            if d != dtype || s != shape {
                return Err(bad(format!(
                    "{suffix} is {d:?} {s:?}, {dtype:?} {shape:?} expected"
                )));
            }
            Ok(data)
        };
        let words = |b: Vec<u8>| -> Vec<u32> {
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let qweight = words(read("qweight", Dtype::I32, shapes.qweight)?);
        let qzeros = words(read("qzeros", Dtype::I32, shapes.qzeros)?);
        let scales: Vec<f64> = read("scales", Dtype::F16, shapes.scales)?
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect();
        decode(rows, cols, self.layout, &qweight, &qzeros, &scales).map_err(|e| bad(e.to_string()))
    }
}

impl PackedReader for GptqReader {
    fn config(&self) -> Result<LlamaConfig> {
        Ok(LlamaConfig::from_hf(&self.ck)?)
    }

    fn packed(&mut self, name: &str, shape: &[usize]) -> Result<Option<(DeployWeight, String)>> {
        let stem = name.strip_suffix(".weight").unwrap_or(name);
        match shape {
            &[rows, cols] if self.ck.has(&format!("{stem}.qweight")) => {
                let q = self.read(stem, rows, cols)?;
                Ok(Some((
                    DeployWeight::Packed(PackedWeight::from_quantized(&q)),
                    label(&q),
                )))
            }
            _ => Ok(None),
        }
    }

    fn float(&mut self, name: &str, shape: &[usize]) -> gstick_models::Result<Tensor> {
        self.ck.weight(name, shape)
    }

    fn path(&self) -> &Path {
        self.ck.dir()
    }
}
