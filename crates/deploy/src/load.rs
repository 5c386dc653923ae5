//! Loading a model path into a runnable network: a GGUF file, a float Hugging Face directory, or
//! a quantized directory (Golden Stick, Hugging Face GPTQ or compressed-tensors format) whose Linears run on the
//! integer kernels. Every quantized format goes through one skeleton builder: the network is
//! built from `config.json` with a placeholder in place of each quantized weight, and the packed
//! weights are installed afterwards, so no f32 copy of a quantized weight is ever made.

use std::collections::BTreeMap;
use std::path::Path;

use crate::install::{install_linears, DeployReport, DeployWeight};
use crate::{load_error, Result};
use candle_core::{DType, Device, Tensor};
use gstick_models::gguf::Gguf;
use gstick_models::hf::HfCheckpoint;
use gstick_models::llama::{
    build_llama, load_llama_gguf, load_llama_hf, LlamaConfig, WeightSource,
};
use gstick_models::tokenizer::{tokenizer_from_gguf, tokenizer_from_hf, TextTokenizer};
use gstick_nn::Network;

/// A causal LM ready to run, with its tokenizer.
pub struct Lm {
    pub net: Network,
    pub config: LlamaConfig,
    pub tokenizer: TextTokenizer,
    /// What runs on the integer kernels (`None`: everything is float).
    pub deploy: Option<DeployReport>,
}

/// Loads a causal LM: a GGUF file (dequantized to f32, the reference every quantized model is
/// compared with), a float Hugging Face directory, or a quantized directory in the Golden Stick
/// or GPTQ format, whose quantized Linears run on the integer kernels.
pub fn load(path: &Path) -> Result<Lm> {
    if !path.is_dir() {
        let gguf = Gguf::open(path)?;
        let tokenizer = tokenizer_from_gguf(&gguf)?;
        let (net, config) = load_llama_gguf(&gguf)?;
        return Ok(Lm {
            net,
            config,
            tokenizer,
            deploy: None,
        });
    }
    let ck = HfCheckpoint::open(path)?;
    let tokenizer = tokenizer_from_hf(&ck)?;
    let (net, config, deploy) = match quantized_format(path)? {
        Some("gs") => on_kernels(&mut crate::gs::GsReader::open(ck)?)?,
        Some("compressed-tensors") => {
            on_kernels(&mut crate::compressed_tensors::CtReader::open(ck)?)?
        }
        Some(_) => on_kernels(&mut crate::gptq::GptqReader::open(ck)?)?,
        None => {
            drop(ck);
            let (net, config) = load_llama_hf(path)?;
            (net, config, None)
        }
    };
    Ok(Lm {
        net,
        config,
        tokenizer,
        deploy,
    })
}

/// Loads a GGUF file with its Q8_0, Q4_0 and Q4_1 Linear weights on the integer kernels, as
/// stored (other tensors are dequantized to f32).
pub fn load_gguf_on_kernels(path: &Path) -> Result<Lm> {
    let gguf = Gguf::open(path)?;
    let tokenizer = tokenizer_from_gguf(&gguf)?;
    let (net, config, deploy) = on_kernels(&mut crate::gguf::GgufReader::new(&gguf)?)?;
    Ok(Lm {
        net,
        config,
        tokenizer,
        deploy,
    })
}

/// `gs` for a Golden Stick quantized directory, `gptq` for the Hugging Face GPTQ format,
/// `compressed-tensors` for vLLM's / llm-compressor's, `None`
/// for a float checkpoint; any other quantization method is refused, naming it.
pub fn quantized_format(dir: &Path) -> Result<Option<&'static str>> {
    if dir.join("quantization_description.json").exists() {
        return Ok(Some("gs"));
    }
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config)
        .map_err(|e| load_error(&config, format!("cannot read: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| load_error(&config, e.to_string()))?;
    match v["quantization_config"]["quant_method"].as_str() {
        None => Ok(None),
        Some("gptq") => Ok(Some("gptq")),
        Some("compressed-tensors") => Ok(Some("compressed-tensors")),
        Some("golden-stick") => Ok(Some("gs")),
        Some(other) => Err(load_error(
            &config,
            format!(
                "quantization method `{other}` is not supported (Golden Stick reads gptq, compressed-tensors and its own format)"
            ),
        )),
    }
}

/// A format's view of a checkpoint: a tensor's packed weight when the checkpoint stores it
/// quantized, otherwise the float tensor.
pub(crate) trait PackedReader {
    /// The model's configuration.
    fn config(&self) -> Result<LlamaConfig>;
    /// The deploy weight and its label for tensor `name` (`….weight`) of `shape`, or `None`
    /// when the tensor is stored in float.
    fn packed(&mut self, name: &str, shape: &[usize]) -> Result<Option<(DeployWeight, String)>>;
    /// A float tensor.
    fn float(&mut self, name: &str, shape: &[usize]) -> gstick_models::Result<Tensor>;
    /// Where the checkpoint lives, for error messages.
    fn path(&self) -> &Path;
    /// Attentions whose KV cache is int8, by full name (formats that cannot say so have none).
    fn kv_caches(&mut self) -> Result<BTreeMap<String, gstick_quant::KvQuant>> {
        Ok(BTreeMap::new())
    }
}

/// The weight source of the skeleton: quantized weights are set aside (a one-value placeholder
/// goes into the graph) and float tensors are read as they are.
struct Skeleton<'r> {
    reader: &'r mut dyn PackedReader,
    packed: BTreeMap<String, (DeployWeight, String)>,
}

impl WeightSource for Skeleton<'_> {
    fn weight(&mut self, name: &str, shape: &[usize]) -> gstick_models::Result<Tensor> {
        let read = self
            .reader
            .packed(name, shape)
            .map_err(|e| gstick_models::Error::Load {
                path: self.reader.path().display().to_string(),
                message: e.to_string(),
            })?;
        match read {
            Some(p) => {
                let stem = name.strip_suffix(".weight").unwrap_or(name);
                self.packed.insert(stem.to_string(), p);
                Ok(Tensor::zeros(1, DType::F32, &Device::Cpu)?)
            }
            None => self.reader.float(name, shape),
        }
    }
}

/// Builds the model from `reader` with its quantized Linears on the kernels.
pub(crate) fn on_kernels(
    reader: &mut dyn PackedReader,
) -> Result<(Network, LlamaConfig, Option<DeployReport>)> {
    let config = reader.config()?;
    let mut skeleton = Skeleton {
        reader,
        packed: BTreeMap::new(),
    };
    let mut net = build_llama(&config, &mut skeleton)?;
    let packed = std::mem::take(&mut skeleton.packed);
    let report = install_linears(&mut net, packed)?;
    let caches = skeleton.reader.kv_caches()?;
    gstick_nn::cells::install_kv_quant(&mut net, &caches)?;
    Ok((net, config, Some(report)))
}
