//! Hugging Face checkpoint directories: `config.json` plus `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Tensors are memory-mapped and converted to f32 on demand
//! (f32, f16 and bf16 are accepted); shapes are checked against what the model needs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Tensor};

use crate::llama::WeightSource;
use crate::{Error, Result};

/// An opened checkpoint directory.
pub struct HfCheckpoint {
    dir: PathBuf,
    pub config: serde_json::Value,
    tensors: MmapedSafetensors,
    names: BTreeSet<String>,
}

impl HfCheckpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let err = |m: String| Error::Load {
            path: dir.display().to_string(),
            message: m,
        };
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| err(format!("cannot read config.json: {e}")))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| err(format!("config.json is not valid JSON: {e}")))?;
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| err(format!("cannot read the shard index: {e}")))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| err(format!("shard index is not valid JSON: {e}")))?;
            let map = v["weight_map"]
                .as_object()
                .ok_or_else(|| err("shard index has no weight_map".into()))?;
            let shards: BTreeSet<&str> = map.values().filter_map(|s| s.as_str()).collect();
            shards
                .into_iter()
                .map(|s| {
                    // Shard names come from the file: keep them inside the directory.
                    if s.contains('/') || s.contains("..") {
                        Err(err(format!(
                            "shard name `{s}` points outside the directory"
                        )))
                    } else {
                        Ok(dir.join(s))
                    }
                })
                .collect::<Result<_>>()?
        } else {
            return Err(err(
                "no model.safetensors or model.safetensors.index.json".into()
            ));
        };
        // SAFETY: read-only maps; the safetensors reader validates headers and offsets.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| err(format!("invalid safetensors: {e}")))?;
        let names = tensors.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(HfCheckpoint {
            dir: dir.to_path_buf(),
            config,
            tensors,
            names,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// A tensor converted to f32, after checking that it exists, is a float type and has `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let err = |m: String| Error::Load {
            path: self.dir.display().to_string(),
            message: m,
        };
        if !self.has(name) {
            return Err(err(format!("missing tensor `{name}`")));
        }
        let view = self
            .tensors
            .get(name)
            .map_err(|e| err(format!("tensor `{name}`: {e}")))?;
        if view.shape() != shape {
            return Err(err(format!(
                "tensor `{name}` has shape {:?}, the configuration needs {shape:?}",
                view.shape()
            )));
        }
        let t = self
            .tensors
            .load(name, &candle_core::Device::Cpu)
            .map_err(|e| err(format!("tensor `{name}`: {e}")))?;
        match t.dtype() {
            DType::F32 => Ok(t),
            DType::F16 | DType::BF16 => Ok(t.to_dtype(DType::F32)?),
            other => Err(err(format!(
                "tensor `{name}` has dtype {other:?}; f32, f16 or bf16 expected"
            ))),
        }
    }

    /// A tensor's dtype, shape and raw little-endian bytes, in whatever dtype it is stored
    /// (quantized checkpoints hold integers).
    pub fn raw(&self, name: &str) -> Result<(safetensors::Dtype, Vec<usize>, Vec<u8>)> {
        let view = self.tensors.get(name).map_err(|e| Error::Load {
            path: self.dir.display().to_string(),
            message: format!("tensor `{name}`: {e}"),
        })?;
        Ok((view.dtype(), view.shape().to_vec(), view.data().to_vec()))
    }

    /// A required integer from config.json.
    pub fn config_usize(&self, key: &str) -> Result<usize> {
        self.config[key]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| Error::Load {
                path: self.dir.join("config.json").display().to_string(),
                message: format!("`{key}` is missing or not a non-negative integer"),
            })
    }

    /// A required number from config.json.
    pub fn config_f64(&self, key: &str) -> Result<f64> {
        self.config[key].as_f64().ok_or_else(|| Error::Load {
            path: self.dir.join("config.json").display().to_string(),
            message: format!("`{key}` is missing or not a number"),
        })
    }
}

impl WeightSource for HfCheckpoint {
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.tensor(name, shape)
    }
}

impl WeightSource for &HfCheckpoint {
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.tensor(name, shape)
    }
}
