//! A model to compress, as it lies on disk, and the calibration windows cut from a text.

use std::path::{Path, PathBuf};

use gstick_models::gguf::Gguf;
use gstick_models::hf::HfCheckpoint;
use gstick_models::layerwise::{calibration_windows, LayerwiseLm};
use gstick_models::llama::{GgufWeights, LlamaConfig, WeightSource};
use gstick_models::tokenizer::{tokenizer_from_gguf, tokenizer_from_hf, TextTokenizer};

use crate::{Error, Result};

enum Kind {
    Gguf(Gguf),
    Hf(HfCheckpoint),
}

/// A float model on disk: a GGUF file or a Hugging Face checkpoint directory, memory mapped.
/// Its tensors are read on demand, one at a time.
pub struct Source {
    path: PathBuf,
    kind: Kind,
    pub config: LlamaConfig,
    pub tokenizer: TextTokenizer,
}

impl Source {
    /// Opens a GGUF file or a float Hugging Face directory. An already quantized directory is
    /// refused (quantizing it again would compound the errors of both runs).
    pub fn open(path: &Path) -> Result<Source> {
        let kind = if path.is_dir() {
            if let Some(format) = gstick_deploy::quantized_format(path)? {
                return Err(Error::Input {
                    path: path.display().to_string(),
                    message: format!(
                        "already quantized ({format} format); quantize the float model it came from"
                    ),
                });
            }
            Kind::Hf(HfCheckpoint::open(path)?)
        } else {
            Kind::Gguf(Gguf::open(path)?)
        };
        let (config, tokenizer) = match &kind {
            Kind::Gguf(g) => (LlamaConfig::from_gguf(g)?, tokenizer_from_gguf(g)?),
            Kind::Hf(ck) => (LlamaConfig::from_hf(ck)?, tokenizer_from_hf(ck)?),
        };
        Ok(Source {
            path: path.to_path_buf(),
            kind,
            config,
            tokenizer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF file, when the source is one (a GGUF export copies its metadata).
    pub fn gguf(&self) -> Option<&Gguf> {
        match &self.kind {
            Kind::Gguf(g) => Some(g),
            Kind::Hf(_) => None,
        }
    }

    /// The float tensors by Hugging Face name.
    pub fn weights(&self) -> Result<Box<dyn WeightSource + '_>> {
        Ok(match &self.kind {
            Kind::Gguf(g) => Box::new(GgufWeights::new(g)?),
            Kind::Hf(ck) => Box::new(ck),
        })
    }

    /// The model built one part at a time (embedding, a decoder layer, the head).
    pub fn layerwise(&self) -> Result<LayerwiseLm<Box<dyn WeightSource + '_>>> {
        Ok(LayerwiseLm::new(self.config.clone(), self.weights()?)?)
    }

    /// Bytes of the source files (they are memory mapped and read over a run).
    pub fn file_bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        match &self.kind {
            Kind::Gguf(_) => size(&self.path),
            Kind::Hf(_) => std::fs::read_dir(&self.path)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                        .map(|e| size(&e.path()))
                        .sum()
                })
                .unwrap_or(0),
        }
    }
}

/// Calibration windows: token ids the quantizer runs through the model.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    pub windows: Vec<Vec<u32>>,
}

impl Calibration {
    /// `count` windows of `seqlen` tokens at seeded random positions of `text` (tokenized
    /// with the source's tokenizer).
    pub fn from_text(
        source: &Source,
        text: &str,
        count: usize,
        seqlen: usize,
        seed: u64,
    ) -> Result<Calibration> {
        let ids = source.tokenizer.encode(text)?;
        Ok(Calibration {
            windows: calibration_windows(&ids, count, seqlen, seed)?,
        })
    }

    /// One short sentence: enough for RTN, which learns nothing from data, to measure each
    /// layer's output error.
    pub fn probe(source: &Source) -> Result<Calibration> {
        Ok(Calibration {
            windows: vec![source
                .tokenizer
                .encode("The quick brown fox jumps over the lazy dog.")?],
        })
    }

    /// Tokens per window (of the first).
    pub fn seqlen(&self) -> usize {
        self.windows.first().map_or(0, |w| w.len())
    }
}
