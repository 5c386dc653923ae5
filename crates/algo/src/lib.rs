//! Compression algorithms and their configuration. Today: the PTQ configuration with its
//! validation rules, recipe files and per-layer policies (spec §2.3, §2.5).

pub mod ptq_config;

pub use ptq_config::{ConfigError, LayerPolicies, PtqConfig, Recipe};
