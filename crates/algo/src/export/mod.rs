//! Writing a quantized model in the formats other tools load, and loading it back (deploy mode):
//! Golden Stick's own Hugging Face layout ([`gs`]), the Hugging Face GPTQ format ([`hf_gptq`]) and
//! GGUF ([`gguf`]). Every export goes to a new directory built under a temporary name beside the
//! target and renamed into place, so a failed export leaves nothing half-written and an existing
//! path (the input included) is never overwritten.

pub mod gguf;
pub mod gs;
pub mod hf_gptq;
pub mod onnx;

use std::borrow::Cow;
use std::path::Path;

use candle_core::Tensor;
use safetensors::tensor::View;
use safetensors::Dtype;

use crate::{Error, Result};

/// The formats `gstick quantize` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gs,
    Gptq,
    Gguf,
}

/// What an export did besides writing: the file(s), and anything a user should know (tensors
/// re-rounded onto a grid that did not fit, f16-rounded offsets).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ExportReport {
    pub files: Vec<String>,
    pub notes: Vec<String>,
    /// Largest |w_file − w_ours| over all quantized weights (0 when the file holds exactly the
    /// pipeline's weights).
    pub max_abs_deviation: f64,
}

pub(crate) fn export_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Export {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Builds directory `out` through `write` on a temporary sibling, then renames it into place.
pub fn write_dir_atomically(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<ExportReport>,
) -> Result<ExportReport> {
    if out.exists() {
        return Err(export_error(
            out,
            "already exists; choose a new output directory (inputs are never overwritten)",
        ));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.{}.partial", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| export_error(&tmp, format!("cannot create: {e}")))?;
    let result = write(&tmp).and_then(|report| {
        std::fs::rename(&tmp, out)
            .map_err(|e| export_error(out, format!("moving the export into place: {e}")))?;
        Ok(report)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// A tensor to be written to safetensors: dtype, shape and little-endian bytes.
pub struct OwnedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OwnedTensor {
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        OwnedTensor {
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn f16(shape: Vec<usize>, values: &[f32]) -> Self {
        OwnedTensor {
            dtype: Dtype::F16,
            shape,
            data: values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }

    pub fn i32(shape: Vec<usize>, values: &[i32]) -> Self {
        OwnedTensor {
            dtype: Dtype::I32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let values: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Ok(Self::f32(t.dims().to_vec(), &values))
    }
}

impl View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `tensors` as one safetensors file.
pub(crate) fn save_safetensors(
    tensors: &std::collections::BTreeMap<String, OwnedTensor>,
    path: &Path,
) -> Result<()> {
    safetensors::tensor::serialize_to_file(tensors.iter(), None, path)
        .map_err(|e| export_error(path, e.to_string()))
}

/// Reads a safetensors tensor's raw data as values of a little-endian 4-byte type.
pub(crate) fn le_words<T>(bytes: &[u8], f: impl Fn([u8; 4]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(4)
        .map(|c| f([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Writes `config.json` and `tokenizer.json` of a Hugging Face directory.
pub(crate) fn write_config_and_tokenizer(
    dir: &Path,
    config: serde_json::Value,
    tokenizer: &gstick_models::tokenizer::TextTokenizer,
) -> Result<()> {
    let mut cfg = config;
    if let Some(bos) = tokenizer.bos {
        cfg["bos_token_id"] = bos.into();
    }
    if let Some(eos) = tokenizer.eos {
        cfg["eos_token_id"] = eos.into();
    }
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| export_error(dir, e.to_string()))?;
    std::fs::write(dir.join("config.json"), text)
        .map_err(|e| export_error(dir, format!("writing config.json: {e}")))?;
    tokenizer
        .inner
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| export_error(dir, format!("writing tokenizer.json: {e}")))?;
    Ok(())
}

/// The step the deploy loaders' weight sources share: a quantized Linear's integers, as `read`
/// gave them, are kept in `quantized` (for `rtn::install_quantized`) and the model builder gets
/// the weight they stand for. A read failure names the checkpoint directory.
pub(crate) fn keep_quantized(
    dir: &Path,
    quantized: &mut std::collections::BTreeMap<String, gstick_quant::QuantizedWeight>,
    stem: &str,
    shape: &[usize],
    read: Result<gstick_quant::QuantizedWeight>,
) -> gstick_models::Result<Tensor> {
    let q = read.map_err(|e| gstick_models::Error::Load {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let t = Tensor::from_vec(q.dequantize(), shape, &candle_core::Device::Cpu)?;
    quantized.insert(stem.to_string(), q);
    Ok(t)
}
