//! Writing a quantized model in the formats other tools load: Golden Stick's own Hugging Face
//! layout ([`gs`]), the Hugging Face GPTQ format ([`hf_gptq`]), compressed-tensors
//! ([`compressed_tensors`], vLLM's and llm-compressor's), GGUF ([`gguf`]), and int8 CNNs as
//! ONNX QDQ ([`onnx`]). Exporters read the neutral [`QuantizedModel`] and the source model's
//! float tensors, one tensor at a time from its memory-mapped file, so an export never holds the
//! whole float model. Every export goes to a new directory built under a temporary name and
//! renamed into place: a failed export leaves nothing half-written, and an existing path (the
//! input included) is never overwritten.

pub mod compressed_tensors;
pub mod gguf;
pub mod gs;
pub mod hf_gptq;
pub mod onnx;
mod tensors;

use std::path::Path;

use gstick_models::gguf::Gguf;
use gstick_models::llama::{LlamaConfig, WeightSource};
use gstick_models::tokenizer::TextTokenizer;
use gstick_quant::QuantizedModel;

/// Errors of the exporters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Graph(#[from] gstick_rewrite::Error),
    #[error(transparent)]
    Model(#[from] gstick_models::Error),
    #[error(transparent)]
    Nn(#[from] gstick_nn::Error),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("{path}: {message}")]
    Export { path: String, message: String },
    #[error("layer `{layer}`: {message}")]
    Layer { layer: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The formats a quantized LLM is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Golden Stick directory (msModelSlim names, `quantization_description.json`).
    Gs,
    /// Hugging Face GPTQ format (`qweight`/`qzeros`/`scales`/`g_idx`).
    Gptq,
    /// GGUF with Q8_0 / Q4_0 / Q4_1 tensors (metadata from a GGUF source).
    Gguf,
    /// compressed-tensors (`int-quantized` / `pack-quantized`), as vLLM and llm-compressor.
    CompressedTensors,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Gs => "gs",
            Format::Gptq => "gptq",
            Format::Gguf => "gguf",
            Format::CompressedTensors => "compressed-tensors",
        }
    }
}

/// What an export did besides writing: the file(s), and anything a user should know (tensors
/// re-rounded onto a grid that did not fit).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ExportReport {
    pub files: Vec<String>,
    pub notes: Vec<String>,
    /// Largest |w_file − w_ours| over all quantized weights (0 when the file holds exactly the
    /// algorithm's weights).
    pub max_abs_deviation: f64,
}

/// The source model an export reads its float tensors and metadata from.
pub struct Source<'a> {
    pub config: &'a LlamaConfig,
    pub tokenizer: &'a TextTokenizer,
    /// Float tensors by Hugging Face name, read on demand.
    pub weights: &'a mut dyn WeightSource,
    /// The source GGUF file, whose metadata (tokenizer included) a GGUF export copies.
    pub gguf: Option<&'a Gguf>,
}

/// Writes `model` in `format` to the new directory `out`.
pub fn save(
    model: &QuantizedModel,
    source: &mut Source,
    format: Format,
    out: &Path,
) -> Result<ExportReport> {
    // GGUF and the GPTQ format have no way to say that a layer's input is quantized; writing
    // the weights alone would hand over a different kind of model than was made.
    if let (Format::Gptq | Format::Gguf, Some((layer, a))) =
        (format, model.first_activation_quantized())
    {
        return Err(export_error(
            out,
            format!(
                "`{layer}` quantizes its input ({}), which the {} format cannot express; use the gs format",
                a.name(),
                match format {
                    Format::Gguf => "GGUF",
                    _ => "Hugging Face GPTQ",
                }
            ),
        ));
    }
    if let (Format::Gptq | Format::Gguf | Format::CompressedTensors, Some((attn, q))) =
        (format, model.first_kv_quantized())
    {
        return Err(export_error(
            out,
            format!(
                "`{attn}` has an int8 KV cache ({}), which the {} format cannot express; use the gs format",
                q.name(),
                match format {
                    Format::Gguf => "GGUF",
                    Format::CompressedTensors => "compressed-tensors (as written here)",
                    _ => "Hugging Face GPTQ",
                }
            ),
        ));
    }
    match format {
        Format::Gs => gs::write_gs(model, source, out),
        Format::Gptq => hf_gptq::write_gptq(model, source, out),
        Format::Gguf => gguf::write_gguf(model, source, out),
        Format::CompressedTensors => {
            compressed_tensors::write_compressed_tensors(model, source, out)
        }
    }
}

pub(crate) fn export_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Export {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Builds directory `out` through `write` on a temporary sibling, then renames it into place.
pub fn write_dir_atomically<T>(out: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    gstick_nn::atomic::write_dir(out, write)
}

/// Writes `config.json` and `tokenizer.json` of a Hugging Face directory.
pub(crate) fn write_config_and_tokenizer(
    dir: &Path,
    config: serde_json::Value,
    tokenizer: &TextTokenizer,
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
