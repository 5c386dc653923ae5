//! Keys and values of earlier positions, kept per attention node during incremental decoding, so
//! each new token attends to the prefix without recomputing it. Stored token-major, the layout
//! the projections produce and the fused attention reads: a decode step appends one row per
//! sequence instead of copying the whole cache.

use std::collections::HashMap;

/// The cached keys and values of one sequence at one attention node: (positions, width) rows,
/// keys already rotated. An attention with an int8 KV cache (`gstick_quant::kv`) keeps its rows
/// in `qkeys`/`qvalues` (with per-row scales when they are per token) and leaves the f32 rows
/// empty.
#[derive(Clone, Debug, Default)]
pub struct KvRows {
    pub width: usize,
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
    pub qkeys: Vec<i8>,
    pub qvalues: Vec<i8>,
    pub key_scales: Vec<f32>,
    pub value_scales: Vec<f32>,
}

impl KvRows {
    pub fn positions(&self) -> usize {
        (self.keys.len() + self.qkeys.len()) / self.width.max(1)
    }

    /// Bytes held by the rows and their scales.
    pub fn bytes(&self) -> usize {
        4 * (self.keys.len() + self.values.len() + self.key_scales.len() + self.value_scales.len())
            + self.qkeys.len()
            + self.qvalues.len()
    }
}

/// Cached rows per attention node, one [`KvRows`] per sequence of the batch.
#[derive(Default, Debug)]
pub struct KvCache {
    entries: HashMap<String, Vec<KvRows>>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many positions node `node` has cached.
    pub fn positions(&self, node: &str) -> usize {
        self.entries
            .get(node)
            .and_then(|rows| rows.first())
            .map_or(0, KvRows::positions)
    }

    /// The rows of node `node` for a batch of `batch` sequences of `width` values per position,
    /// created empty on first use. A batch size or width that differs from what is cached is an
    /// error (a new sequence needs [`KvCache::clear`]).
    pub fn rows_mut(
        &mut self,
        node: &str,
        batch: usize,
        width: usize,
    ) -> crate::Result<&mut [KvRows]> {
        let rows = self.entries.entry(node.to_string()).or_insert_with(|| {
            vec![
                KvRows {
                    width,
                    ..KvRows::default()
                };
                batch
            ]
        });
        if rows.len() != batch || rows.iter().any(|r| r.width != width) {
            return Err(crate::Error::Config(format!(
                "the KV cache of `{node}` holds {} sequence(s) of width {}, the input has {batch} of width {width}",
                rows.len(),
                rows.first().map_or(0, |r| r.width)
            )));
        }
        Ok(rows)
    }

    /// Bytes held by the cached keys and values.
    pub fn bytes(&self) -> usize {
        self.entries.values().flatten().map(KvRows::bytes).sum()
    }

    /// Forgets everything (a new sequence starts).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}
