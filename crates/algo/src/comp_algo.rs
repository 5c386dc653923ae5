//! The one interface every compression algorithm implements (spec §2.1).

use gstick_nn::train::Callback;
use gstick_nn::Network;

/// A compression algorithm: `apply` turns a float network into its training (or calibration)
/// form, `convert` turns that into the deploy form. Both edit the network through the Rewrite API
/// and are all or nothing.
pub trait CompAlgo {
    /// The algorithm's name as the original prints it (`SimulatedQuantizationAwareTraining`).
    fn name(&self) -> &'static str;

    /// Rewrites `net` into its compressed training form (fake-quantized, masked, gated, ...).
    fn apply(&mut self, net: &mut Network) -> crate::Result<()>;

    /// Rewrites the training form into the deploy form. The default leaves it as it is.
    fn convert(&self, _net: &mut Network) -> crate::Result<()> {
        Ok(())
    }

    /// Callbacks the training loop must run (temperature schedules, BN re-calibration, ...).
    fn callbacks(&self) -> crate::Result<Vec<Box<dyn Callback>>> {
        Ok(Vec::new())
    }

    /// The loss to train with, given the task's loss; the default keeps it.
    fn loss(&self, loss: LossFn) -> LossFn {
        loss
    }

    /// One row per cell the algorithm handles: (qualified name, what was done or `NA`).
    fn summary(&self, net: &Network) -> Vec<(String, String)>;
}

/// A loss over (logits, labels), as the trainer takes it.
pub use gstick_nn::train::LossFn;

/// The summary as the original prints it: a title row, then one row per cell.
pub fn summary_table(title: &str, rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(5);
    let mut s = format!("{title}\n{:<width$}  info\n", "layer");
    for (name, info) in rows {
        s.push_str(&format!("{name:<width$}  {info}\n"));
    }
    s
}
