use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{Tensor, Var};

use crate::{Mode, Network};
use gstick_rewrite::Op;

/// A named tensor of a cell. Weights are trainable unless frozen; buffers (BatchNorm running
/// statistics) are saved in checkpoints but never trained. Cloning a `Param` shares its storage
/// and its trainable flag: a parameter is frozen wherever it is used (tied weights included), and
/// freezing needs no mutable access to the cells that hold it.
#[derive(Clone, Debug)]
pub struct Param {
    var: Var,
    trainable: Arc<AtomicBool>,
    buffer: bool,
}

impl Param {
    /// A trainable weight.
    pub fn weight(t: Tensor) -> crate::Result<Self> {
        Ok(Param {
            var: Var::from_tensor(&t)?,
            trainable: Arc::new(AtomicBool::new(true)),
            buffer: false,
        })
    }

    /// A buffer: saved and loaded, never trained.
    pub fn buffer(t: Tensor) -> crate::Result<Self> {
        Ok(Param {
            var: Var::from_tensor(&t)?,
            trainable: Arc::new(AtomicBool::new(false)),
            buffer: true,
        })
    }

    /// The current value, tracked by autodiff when trainable.
    pub fn tensor(&self) -> &Tensor {
        self.var.as_tensor()
    }

    pub fn var(&self) -> &Var {
        &self.var
    }

    /// Overwrites the value in place (every clone of this parameter sees it).
    pub fn set(&self, value: &Tensor) -> crate::Result<()> {
        let value = value.to_dtype(self.var.dtype())?;
        Ok(self.var.set(&value)?)
    }

    pub fn is_trainable(&self) -> bool {
        self.trainable.load(Ordering::Relaxed) && !self.buffer
    }

    pub fn is_buffer(&self) -> bool {
        self.buffer
    }

    /// Marks a weight trainable or frozen (every clone sees it); buffers stay untrainable.
    pub fn set_trainable(&self, trainable: bool) {
        self.trainable.store(trainable, Ordering::Relaxed);
    }

    /// The tensor a forward pass in `mode` reads. Only a trainable weight in training mode is
    /// tracked by autodiff; everywhere else it is detached, so evaluation records no backward
    /// graph and each intermediate tensor is freed as soon as it is used.
    pub fn value(&self, mode: Mode) -> Tensor {
        if mode == Mode::Train && self.is_trainable() {
            self.var.as_tensor().clone()
        } else {
            self.var.as_tensor().detach()
        }
    }
}

/// Every parameter of the network by hierarchical name (`layer1.0.conv1.weight`), in execution
/// order, descending into sub-graphs.
pub fn named_params(net: &Network) -> Vec<(String, Param)> {
    let mut out = Vec::new();
    for (name, node) in net.nodes_recursive() {
        if let Op::Cell(cell) = node.op() {
            for (local, p) in cell.params() {
                out.push((format!("{name}.{local}"), p.clone()));
            }
        }
    }
    out
}

/// Marks every parameter whose name starts with one of `prefixes` trainable or frozen.
/// Returns how many parameters (by name) changed.
pub fn set_trainable(net: &Network, prefixes: &[&str], trainable: bool) -> usize {
    let mut count = 0;
    for (name, p) in named_params(net) {
        if prefixes.iter().any(|pre| name.starts_with(pre)) && !p.is_buffer() {
            p.set_trainable(trainable);
            count += 1;
        }
    }
    count
}
