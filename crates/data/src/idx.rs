//! The IDX format of (Fashion-)MNIST: a big-endian header (magic 0x0000_08_NN where 08 = u8
//! data and NN = rank), the dimensions, then the raw bytes. Files may be gzip-compressed.

use std::path::Path;

use crate::error::{format_error, read_maybe_gz};
use crate::{Dataset, Result};

/// Parses one IDX file of u8 values; returns the dimensions and the data.
fn parse_idx(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(format_error(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(format_error(
            path,
            format!(
                "IDX data type 0x{:02x} is not supported (only u8)",
                bytes[2]
            ),
        ));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err(format_error(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes([
                bytes[4 + 4 * i],
                bytes[5 + 4 * i],
                bytes[6 + 4 * i],
                bytes[7 + 4 * i],
            ]) as usize
        })
        .collect();
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match count {
        Some(n) if bytes.len() - header == n => Ok((dims, bytes[header..].to_vec())),
        Some(n) => Err(format_error(
            path,
            format!(
                "IDX header promises {n} values but the file holds {}",
                bytes.len() - header
            ),
        )),
        None => Err(format_error(path, "IDX dimensions overflow")),
    }
}

/// Loads an images file (N, H, W) and its labels file (N) as a one-channel dataset with raw
/// pixel values 0..255.
pub fn load_idx(images: &Path, labels: &Path) -> Result<Dataset> {
    let (dims, pixels) = parse_idx(images, &read_maybe_gz(images)?)?;
    let (ldims, label_bytes) = parse_idx(labels, &read_maybe_gz(labels)?)?;
    if dims.len() != 3 {
        return Err(format_error(
            images,
            format!("expected images of rank 3 (N, H, W), got {dims:?}"),
        ));
    }
    if ldims.len() != 1 || ldims[0] != dims[0] {
        return Err(format_error(
            labels,
            format!(
                "{} labels for {} images",
                ldims.first().unwrap_or(&0),
                dims[0]
            ),
        ));
    }
    Ok(Dataset {
        images: pixels.into_iter().map(f32::from).collect(),
        labels: label_bytes.into_iter().map(u32::from).collect(),
        channels: 1,
        height: dims[1],
        width: dims[2],
    })
}

/// Which half of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Fashion-MNIST from `dir` (the four `*-ubyte.gz` files), raw pixels 0..255.
pub fn load_fashion_mnist(dir: &Path, split: Split) -> Result<Dataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    load_idx(
        &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
    )
}
