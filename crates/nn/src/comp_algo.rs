//! The one interface every compression algorithm implements (spec §2.1), and the error a
//! configuration gives when it cannot be used.

use crate::train::{Callback, LossFn};
use crate::Network;

/// A compression algorithm: `apply` turns a float network into its compressed form (training,
/// calibration or already quantized), `convert` turns that into the deploy form. Both edit the
/// network through the Rewrite API and are all or nothing.
pub trait CompAlgo {
    /// The algorithm's errors.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The algorithm's name as the original prints it (`SimulatedQuantizationAwareTraining`).
    fn name(&self) -> &'static str;

    /// Rewrites `net` into its compressed form (fake-quantized, masked, gated, calibrated, ...).
    fn apply(&mut self, net: &mut Network) -> Result<(), Self::Error>;

    /// Rewrites the compressed form into the deploy form. The default leaves it as it is.
    fn convert(&self, _net: &mut Network) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Callbacks the training loop must run (temperature schedules, BN re-calibration, ...).
    fn callbacks(&self) -> Result<Vec<Box<dyn Callback>>, Self::Error> {
        Ok(Vec::new())
    }

    /// The loss to train with, given the task's loss; the default keeps it.
    fn loss(&self, loss: LossFn) -> LossFn {
        loss
    }

    /// One row per cell the algorithm handles: (qualified name, what was done or `NA`).
    fn summary(&self, net: &Network) -> Vec<(String, String)>;
}

/// The summary as the original prints it: a title row, then one row per cell.
pub fn summary_table(title: &str, rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(5);
    let mut s = format!("{title}\n{:<width$}  info\n", "layer");
    for (name, info) in rows {
        s.push_str(&format!("{name:<width$}  {info}\n"));
    }
    s
}

/// A configuration an algorithm cannot use; each error names the field or file at fault.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A valid setting this build does not implement (refused rather than silently ignored).
    #[error("{field} = {value}: {message}")]
    NotImplemented {
        field: &'static str,
        value: String,
        message: String,
    },
    #[error("recipe {path}: {message}")]
    Recipe { path: String, message: String },
    #[error("layer `{layer}` matches two layer policies: `{first}` and `{second}`")]
    PolicyConflict {
        layer: String,
        first: String,
        second: String,
    },
}

/// The error for an unusable `field`.
pub fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}
