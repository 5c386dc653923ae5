//! PTQ as a `CompAlgo` on a network held in memory (spec §2.5 `PTQ.apply`): the inputs of the
//! first decoder layer are computed from the calibration windows, then the same layer-wise
//! pipeline as the bounded-memory path runs over the network's `DecoderLayer` sub-graphs, which
//! come out quantized (`WeightQuantLinear` cells; AWQ's scales folded in place). `convert`
//! leaves the network as it is, as the original's does.

use candle_core::{Device, Tensor};
use gstick_nn::cell::downcast;
use gstick_nn::comp_algo::CompAlgo;
use gstick_nn::{Executor, Mode, Network};
use gstick_rewrite::{NodeId, Op};

use crate::fake_quant_linear::WeightQuantLinear;
use crate::pipeline::{quantize_layers, LayerSource, PipelineOptions, PtqResult};
use crate::supported::check_recipe;
use crate::{Error, Recipe, Result};

/// Post-training quantization of an in-memory network.
pub struct Ptq {
    pub recipe: Recipe,
    pub options: PipelineOptions,
    calibration: Vec<Vec<u32>>,
    result: Option<PtqResult>,
}

impl Ptq {
    /// Refuses a recipe that asks for what is not implemented.
    pub fn new(recipe: Recipe) -> Result<Self> {
        check_recipe(&recipe)?;
        Ok(Ptq {
            recipe,
            options: PipelineOptions::default(),
            calibration: Vec::new(),
            result: None,
        })
    }

    /// The calibration windows (token ids) `apply` runs.
    pub fn with_calibration(mut self, windows: Vec<Vec<u32>>) -> Self {
        self.calibration = windows;
        self
    }

    /// What the last `apply` produced: the quantized model and the per-layer records.
    pub fn result(&self) -> Option<&PtqResult> {
        self.result.as_ref()
    }
}

/// The decoder layers of a network held in memory, taken out of the graph one at a time.
struct InMemory<'n> {
    net: &'n mut Network,
    layers: Vec<(NodeId, String)>,
}

impl LayerSource for InMemory<'_> {
    fn layers(&self) -> usize {
        self.layers.len()
    }

    fn prefix(&self, index: usize) -> String {
        self.layers[index].1.clone()
    }

    fn take(&mut self, index: usize) -> Result<Network> {
        Ok(std::mem::take(self.net.subgraph_mut(self.layers[index].0)?))
    }

    fn give_back(&mut self, index: usize, layer: Network) -> Result<()> {
        *self.net.subgraph_mut(self.layers[index].0)? = layer;
        Ok(())
    }
}

/// What the first decoder layer reads for each window: the network up to its input, run on
/// the window.
fn first_layer_inputs(net: &Network, first: NodeId, windows: &[Vec<u32>]) -> Result<Vec<Tensor>> {
    let node = net.node(first)?;
    let [input] = node.inputs() else {
        return Err(Error::Layer {
            layer: node.name().to_string(),
            message: format!(
                "a decoder layer with {} inputs; the pipeline feeds one (the hidden states)",
                node.inputs().len()
            ),
        });
    };
    // A copy of the graph (sharing its parameters) cut after the layer's input.
    let mut head = net.clone();
    head.set_outputs(&[*input])?;
    let at = head.position_of(*input)?;
    let later: Vec<NodeId> = head.node_ids()[at + 1..].iter().rev().copied().collect();
    for id in later {
        head.erase(id)?;
    }
    let mut exec = Executor::new(Mode::Eval, 0);
    windows
        .iter()
        .map(|w| {
            let ids = Tensor::from_vec(w.clone(), (1, w.len()), &Device::Cpu)?;
            Ok(exec.forward1(&head, &ids)?)
        })
        .collect()
}

impl CompAlgo for Ptq {
    type Error = Error;

    fn name(&self) -> &'static str {
        "PTQ"
    }

    /// Quantizes every `DecoderLayer` sub-graph of `net` on the calibration windows. All or
    /// nothing: on an error the network is as it was.
    fn apply(&mut self, net: &mut Network) -> Result<()> {
        if self.calibration.is_empty() {
            return Err(Error::Layer {
                layer: "model".into(),
                message: "no calibration windows (Ptq::with_calibration)".into(),
            });
        }
        let layers: Vec<(NodeId, String)> = net
            .nodes()
            .filter(|(_, n)| matches!(n.op(), Op::SubGraph { kind, .. } if kind == "DecoderLayer"))
            .map(|(id, n)| (id, n.name().to_string()))
            .collect();
        let Some(&(first, _)) = layers.first() else {
            return Err(Error::Layer {
                layer: "model".into(),
                message: "the network has no DecoderLayer sub-graph to quantize".into(),
            });
        };
        let inputs = first_layer_inputs(net, first, &self.calibration)?;
        let (recipe, options) = (&self.recipe, &self.options);
        let result = net.transaction(|net| {
            let mut source = InMemory { net, layers };
            quantize_layers(&mut source, inputs, recipe, options, &mut |_| {})
        })?;
        // AWQ's folded scales already live in the network's own cells.
        self.result = Some(result);
        Ok(())
    }

    /// One row per Linear of every decoder layer: its quantization, or `NA`.
    fn summary(&self, net: &Network) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        for (_, node) in net.nodes() {
            let Op::SubGraph { kind, graph } = node.op() else {
                continue;
            };
            if kind != "DecoderLayer" {
                continue;
            }
            for (local, inner) in graph.nodes_recursive() {
                let Some(cell) = inner.cell() else { continue };
                let name = format!("{}.{local}", node.name());
                if let Some(q) = downcast::<WeightQuantLinear>(cell.as_ref()) {
                    rows.push((name, q.label.clone()));
                } else if cell.kind() == "Linear" {
                    // A pruned float Linear is still a Linear; the pipeline's record says
                    // what it got (`NA` when nothing).
                    let label = self
                        .result
                        .iter()
                        .flat_map(|r| &r.layers)
                        .flat_map(|l| &l.linears)
                        .find(|l| l.name == name)
                        .map_or_else(|| "NA".to_string(), |l| l.summary.clone());
                    rows.push((name, label));
                }
            }
        }
        rows
    }
}
