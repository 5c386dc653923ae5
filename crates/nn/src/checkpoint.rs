//! Checkpoints: every parameter and buffer by hierarchical name, in a safetensors file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{atomic, named_params, Error, Network, Result};

/// Saves all parameters and buffers of `net` to `path` atomically.
pub fn save(net: &Network, path: &Path) -> Result<()> {
    let tensors: HashMap<String, Tensor> = named_params(net)
        .into_iter()
        .map(|(name, p)| (name, p.tensor().detach()))
        .collect();
    atomic::write_with(path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp)
            .map_err(|e| checkpoint_error(tmp, e.to_string()))
    })
}

/// Loads a checkpoint into `net`. Every parameter of the network must be in the file with the
/// same shape, and the file may hold nothing else; otherwise nothing is changed and the error
/// lists what is missing, unexpected or mis-shaped.
pub fn load(net: &Network, path: &Path) -> Result<()> {
    let file = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| checkpoint_error(path, e.to_string()))?;
    load_tensors(net, &file).map_err(|message| checkpoint_error(path, message))
}

/// Copies `tensors` into the network's parameters, all or nothing.
pub fn load_tensors(
    net: &Network,
    tensors: &HashMap<String, Tensor>,
) -> std::result::Result<(), String> {
    let params = named_params(net);
    let mut problems = Vec::new();
    for (name, p) in &params {
        match tensors.get(name) {
            None => problems.push(format!("missing `{name}`")),
            Some(t) if t.dims() != p.tensor().dims() => problems.push(format!(
                "`{name}` has shape {:?} in the file but {:?} in the network",
                t.dims(),
                p.tensor().dims()
            )),
            Some(_) => {}
        }
    }
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|k| !params.iter().any(|(n, _)| n == *k))
        .collect();
    extra.sort();
    problems.extend(extra.into_iter().map(|k| format!("unexpected `{k}`")));
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    for (name, p) in &params {
        if let Some(t) = tensors.get(name) {
            p.set(t).map_err(|e| format!("`{name}`: {e}"))?;
        }
    }
    Ok(())
}

fn checkpoint_error(path: &Path, message: String) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        message,
    }
}
