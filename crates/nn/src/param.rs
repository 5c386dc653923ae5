use candle_core::{Tensor, Var};

use crate::{Mode, Network};
use gstick_rewrite::Op;

/// A named tensor of a cell. Weights are trainable unless frozen; buffers (BatchNorm running
/// statistics) are saved in checkpoints but never trained. Cloning a `Param` shares its storage.
#[derive(Clone, Debug)]
pub struct Param {
    var: Var,
    trainable: bool,
    buffer: bool,
}

impl Param {
    /// A trainable weight.
    pub fn weight(t: Tensor) -> crate::Result<Self> {
        Ok(Param {
            var: Var::from_tensor(&t)?,
            trainable: true,
            buffer: false,
        })
    }

    /// A buffer: saved and loaded, never trained.
    pub fn buffer(t: Tensor) -> crate::Result<Self> {
        Ok(Param {
            var: Var::from_tensor(&t)?,
            trainable: false,
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
        self.trainable && !self.buffer
    }

    pub fn is_buffer(&self) -> bool {
        self.buffer
    }

    /// Marks a weight trainable or frozen; buffers stay untrainable.
    pub fn set_trainable(&mut self, trainable: bool) {
        self.trainable = trainable;
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
/// Returns how many parameters changed.
pub fn set_trainable(net: &mut Network, prefixes: &[&str], trainable: bool) -> usize {
    fn walk(g: &mut Network, prefix: &str, prefixes: &[&str], trainable: bool, count: &mut usize) {
        let ids = g.node_ids().to_vec();
        for id in ids {
            let Ok(node) = g.node_mut(id) else { continue };
            let name = if prefix.is_empty() {
                node.name().to_string()
            } else {
                format!("{prefix}.{}", node.name())
            };
            match node.op_mut() {
                Op::Cell(cell) => {
                    for (local, p) in cell.params_mut() {
                        let full = format!("{name}.{local}");
                        if prefixes.iter().any(|pre| full.starts_with(pre)) && !p.is_buffer() {
                            p.set_trainable(trainable);
                            *count += 1;
                        }
                    }
                }
                Op::SubGraph { graph, .. } => walk(graph, &name, prefixes, trainable, count),
                Op::Input { .. } => {}
            }
        }
    }
    let mut count = 0;
    walk(net, "", prefixes, trainable, &mut count);
    count
}
