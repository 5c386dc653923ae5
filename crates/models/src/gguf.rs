//! GGUF files (versions 2 and 3): metadata, tensor directory, and tensor data read in place from
//! a memory map. The file is treated as hostile: every count, length, offset and size is checked
//! against the bytes actually present before it is used, so a truncated or corrupted file gives
//! an error naming the file and the problem, never a panic or an out-of-bounds read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use gstick_quant::GgmlType;

use crate::{Error, Result};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, for any integer type that holds a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: the first dimension is the contiguous one (a weight (out, in) is `[in, out]`).
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub bytes: usize,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// The shape in row-major order (candle/PyTorch): the GGUF dimensions reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// An opened GGUF file.
pub struct Gguf {
    path: PathBuf,
    map: memmap2::Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

const MAX_DIMS: usize = 4;
const MAX_NESTING: usize = 4;

impl Gguf {
    /// Opens and validates `path`; tensor data stays in the memory map until asked for.
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).map_err(|e| load_error(path, format!("cannot open: {e}")))?;
        // SAFETY: the map is read-only; a file changed underneath us can give wrong values but
        // every access below is bounds-checked against the map's length.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| load_error(path, format!("cannot map: {e}")))?;
        let parsed = parse(&map).map_err(|message| load_error(path, message))?;
        let index = parsed
            .2
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Gguf {
            path: path.to_path_buf(),
            map,
            version: parsed.0,
            metadata: parsed.1,
            tensors: parsed.2,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A required metadata value, or an error naming the key.
    pub fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key)
            .ok_or_else(|| load_error(&self.path, format!("missing metadata `{key}`")))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.require(key)?.as_u64().ok_or_else(|| {
            load_error(
                &self.path,
                format!("metadata `{key}` is not an unsigned integer"),
            )
        })
    }

    pub fn require_f64(&self, key: &str) -> Result<f64> {
        self.require(key)?
            .as_f64()
            .ok_or_else(|| load_error(&self.path, format!("metadata `{key}` is not a number")))
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.require(key)?
            .as_str()
            .ok_or_else(|| load_error(&self.path, format!("metadata `{key}` is not a string")))
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| load_error(&self.path, format!("missing tensor `{name}`")))
    }

    /// The raw bytes of a tensor, in the file's format.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor_info(name)?;
        Ok(&self.map[t.offset..t.offset + t.bytes])
    }

    /// A tensor dequantized to f32, in row-major shape.
    pub fn dequantize(&self, name: &str) -> Result<Tensor> {
        let shape = self.tensor_info(name)?.shape();
        Ok(Tensor::from_vec(
            self.dequantize_values(name)?,
            shape,
            &Device::Cpu,
        )?)
    }

    /// A tensor's values dequantized to f32, row-major.
    pub fn dequantize_values(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor_info(name)?;
        t.ty.dequantize(self.tensor_bytes(name)?, t.elements())
            .map_err(|e| load_error(&self.path, format!("tensor `{name}`: {e}")))
    }
}

fn load_error(path: &Path, message: String) -> Error {
    Error::Load {
        path: path.display().to_string(),
        message,
    }
}

/// Bounds-checked little-endian reader.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| {
            format!(
                "truncated: {what} at byte {} needs {n} bytes, the file has {}",
                self.pos,
                self.data.len()
            )
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    /// A count that must fit in the rest of the file at `min_bytes` per item.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize, String> {
        let n = self.u64(what)?;
        if n > (self.remaining() / min_bytes.max(1)) as u64 {
            return Err(format!("{what} is {n}, more than the file can hold"));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue, String> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(self.array::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("metadata `{key}`: invalid bool {b}")),
            },
            8 => MetaValue::String(self.string(key)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(format!("metadata `{key}`: arrays nested too deeply"));
                }
                let item_ty = self.u32(key)?;
                let n = self.count(key, 1)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(format!("metadata `{key}`: unknown value type {other}")),
        })
    }
}

type Parsed = (u32, BTreeMap<String, MetaValue>, Vec<TensorInfo>);

fn parse(data: &[u8]) -> Result<Parsed, String> {
    let mut c = Cursor { data, pos: 0 };
    if c.take(4, "magic")
        .map_err(|_| "not a GGUF file (too short)".to_string())?
        != b"GGUF"
    {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} is not supported (2 and 3 are)"
        ));
    }
    let tensor_count = c.count("tensor count", 8)?;
    let kv_count = c.count("metadata count", 8)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = c.string("metadata key")?;
        let ty = c.u32(&key)?;
        let value = c.value(ty, &key, 0)?;
        metadata.insert(key, value);
    }
    let mut infos = Vec::with_capacity(tensor_count);
    for _ in 0..tensor_count {
        let name = c.string("tensor name")?;
        let n_dims = c.u32(&name)? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = c.u64(&name)?;
            dims.push(
                usize::try_from(d)
                    .map_err(|_| format!("tensor `{name}`: dimension {d} too large"))?,
            );
        }
        let ty = GgmlType::from_id(c.u32(&name)?).map_err(|e| format!("tensor `{name}`: {e}"))?;
        let offset = c.u64(&name)?;
        let elements = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}`: size overflows"))?;
        let bytes = ty
            .bytes_for(elements)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        infos.push((name, dims, ty, offset, bytes));
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 16 => a as usize,
            _ => return Err(format!("general.alignment {v:?} is not a power of two")),
        },
    };
    let data_start = c.pos.div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(infos.len());
    let mut names = std::collections::HashSet::new();
    for (name, dims, ty, offset, bytes) in infos {
        if !names.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice"));
        }
        if offset % alignment as u64 != 0 {
            return Err(format!(
                "tensor `{name}`: offset {offset} is not aligned to {alignment}"
            ));
        }
        let start = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data_start));
        let end = start.and_then(|s| s.checked_add(bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= data.len() => tensors.push(TensorInfo { name, dims, ty, offset: start, bytes }),
            _ => {
                return Err(format!(
                    "truncated: tensor `{name}` ({bytes} bytes at data offset {offset}) ends past the end of the file ({} bytes)",
                    data.len()
                ))
            }
        }
    }
    Ok((version, metadata, tensors))
}
