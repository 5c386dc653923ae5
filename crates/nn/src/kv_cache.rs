//! Keys and values of earlier positions, kept per attention node during incremental decoding, so
//! each new token attends to the prefix without recomputing it.

use std::collections::HashMap;

use candle_core::Tensor;

/// Cached (keys, values) per attention node, each (B, kv_heads, positions, head_dim).
#[derive(Default, Debug)]
pub struct KvCache {
    entries: HashMap<String, (Tensor, Tensor)>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many positions node `node` has cached.
    pub fn positions(&self, node: &str) -> usize {
        self.entries
            .get(node)
            .map_or(0, |(k, _)| k.dims().get(2).copied().unwrap_or(0))
    }

    pub fn get(&self, node: &str) -> Option<&(Tensor, Tensor)> {
        self.entries.get(node)
    }

    pub fn store(&mut self, node: &str, keys: Tensor, values: Tensor) {
        self.entries.insert(node.to_string(), (keys, values));
    }

    /// Forgets everything (a new sequence starts).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}
