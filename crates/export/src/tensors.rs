//! Tensors on their way into a safetensors file. Quantized tensors are small and built in
//! memory; float tensors are read from the source only when the writer asks for their bytes, so
//! one float tensor at a time is in memory.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use gstick_models::llama::WeightSource;
use gstick_quant::{QuantizedModel, QuantizedWeight};
use safetensors::tensor::View;
use safetensors::Dtype;

use crate::{export_error, Error, Result};

/// A tensor built in memory: dtype, shape and little-endian bytes.
pub(crate) struct OwnedTensor {
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

    pub fn i8(shape: Vec<usize>, values: &[i8]) -> Self {
        OwnedTensor {
            dtype: Dtype::I8,
            shape,
            data: values.iter().map(|&v| v as u8).collect(),
        }
    }

    pub fn i64(shape: Vec<usize>, values: impl IntoIterator<Item = i64>) -> Self {
        OwnedTensor {
            dtype: Dtype::I64,
            shape,
            data: values.into_iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn i32(shape: Vec<usize>, values: impl IntoIterator<Item = i32>) -> Self {
        OwnedTensor {
            dtype: Dtype::I32,
            shape,
            data: values.into_iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Float tensors of the exported model: the algorithm's overrides, else the source's tensor.
/// The first read error is kept and reported after writing.
pub(crate) struct FloatReader<'m, 'a> {
    pub model: &'m QuantizedModel,
    pub weights: &'a mut dyn WeightSource,
    pub error: Option<Error>,
}

impl FloatReader<'_, '_> {
    /// The values of tensor `name` of `shape`, row-major.
    pub fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some(t) = self.model.float_overrides.get(name) {
            return Ok(t.values.clone());
        }
        Ok(self.weights.values(name, shape)?)
    }
}

/// One tensor of a safetensors export.
pub(crate) enum ExportTensor<'r, 'm, 'a> {
    Owned(OwnedTensor),
    /// An f32 tensor read from the source when its bytes are written.
    Float {
        name: String,
        shape: Vec<usize>,
        reader: &'r RefCell<FloatReader<'m, 'a>>,
    },
}

impl View for &ExportTensor<'_, '_, '_> {
    fn dtype(&self) -> Dtype {
        match self {
            ExportTensor::Owned(t) => t.dtype,
            ExportTensor::Float { .. } => Dtype::F32,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            ExportTensor::Owned(t) => &t.shape,
            ExportTensor::Float { shape, .. } => shape,
        }
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            ExportTensor::Owned(t) => Cow::Borrowed(&t.data),
            ExportTensor::Float {
                name,
                shape,
                reader,
            } => {
                let mut reader = reader.borrow_mut();
                let len = self.data_len();
                match reader.read(name, shape) {
                    Ok(v) if 4 * v.len() == len => {
                        Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect())
                    }
                    Ok(v) => {
                        reader.error.get_or_insert(Error::Layer {
                            layer: name.clone(),
                            message: format!("{} values read, {shape:?} expected", v.len()),
                        });
                        Cow::Owned(vec![0; len])
                    }
                    Err(e) => {
                        reader.error.get_or_insert(e);
                        // Keep the file's layout; the export fails after writing.
                        Cow::Owned(vec![0; len])
                    }
                }
            }
        }
    }

    fn data_len(&self) -> usize {
        match self {
            ExportTensor::Owned(t) => t.data.len(),
            ExportTensor::Float { shape, .. } => 4 * shape.iter().product::<usize>(),
        }
    }
}

/// Writes the model's `model.safetensors` in `dir`: every float tensor read from the source as
/// the file is written (or taken from the model's overrides), every quantized Linear's tensors
/// from `quantized(parameter name, weight)`. Returns the float tensors' names. A float tensor
/// that could not be read fails the export (the caller's temporary directory is then removed).
pub(crate) fn write_model_safetensors(
    model: &QuantizedModel,
    weights: &mut dyn WeightSource,
    specs: Vec<(String, Vec<usize>)>,
    dir: &Path,
    extra: Vec<(String, OwnedTensor)>,
    mut quantized: impl FnMut(&str, &QuantizedWeight) -> Result<Vec<(String, OwnedTensor)>>,
) -> Result<Vec<String>> {
    let reader = RefCell::new(FloatReader {
        model,
        weights,
        error: None,
    });
    let mut tensors = BTreeMap::new();
    let mut floats = Vec::new();
    for (name, shape) in specs {
        match model.weight_for(&name) {
            Some(w) => {
                for (n, t) in quantized(&name, w)? {
                    tensors.insert(n, ExportTensor::Owned(t));
                }
            }
            None => {
                floats.push(name.clone());
                let view = ExportTensor::Float {
                    name: name.clone(),
                    shape,
                    reader: &reader,
                };
                tensors.insert(name, view);
            }
        }
    }
    for (n, t) in extra {
        tensors.insert(n, ExportTensor::Owned(t));
    }
    let path = dir.join("model.safetensors");
    safetensors::tensor::serialize_to_file(tensors.iter(), None, &path)
        .map_err(|e| export_error(&path, e.to_string()))?;
    drop(tensors);
    match reader.into_inner().error {
        Some(e) => Err(e),
        None => Ok(floats),
    }
}
