//! SimQAT (spec §2.9, §3.12): its configuration with the original's keys, defaults and checks,
//! and `apply`, which rewrites a float network into its fake-quantized training form:
//! Conv2d+BatchNorm2d fusion by pattern, quantization policies looked up by cell kind, fake
//! quantizers inserted on the values quantized cells read (one per value, so a producer that
//! already emits a quantized output is not quantized again), and the cells wrapped.

use std::collections::{BTreeMap, HashMap};

use gstick_nn::cell::downcast;
use gstick_nn::cells::{BatchNorm2d, Conv2d, Linear};
use gstick_nn::{Cell, Network};
use gstick_rewrite::{Arg, Graph, Match, NewNode, NodeId, Op, Pattern, PatternEngine};
use serde::{Deserialize, Serialize};

use super::cells::{BnFold, ConvBn, FakeQuant, QuantConv2d, QuantConvBn, QuantLinear};
use super::fake_quant::FakeQuantConfig;
use crate::ConfigError;
use gstick_nn::comp_algo::invalid;
use gstick_nn::CompAlgo;
use gstick_quant::QuantDtype;

/// An (activation, weight) pair. In a recipe a scalar sets both and a list gives
/// `[activation, weight]`; a longer list is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Pair<T> {
    pub act: T,
    pub weight: T,
}

impl<T: Copy> Pair<T> {
    pub fn both(v: T) -> Self {
        Pair { act: v, weight: v }
    }
}

impl<'de, T: Deserialize<'de> + Copy> Deserialize<'de> for Pair<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrList<T> {
            One(T),
            List(Vec<T>),
        }
        match OneOrList::<T>::deserialize(d)? {
            OneOrList::One(v) => Ok(Pair::both(v)),
            OneOrList::List(v) => match v.as_slice() {
                [x] => Ok(Pair::both(*x)),
                [a, w] => Ok(Pair {
                    act: *a,
                    weight: *w,
                }),
                _ => Err(serde::de::Error::custom(format!(
                    "a list of {} values; give one value or [activation, weight]",
                    v.len()
                ))),
            },
        }
    }
}

/// How cells of one kind are quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerPolicy {
    /// Input fake-quantized, weight fake-quantized per policy (Conv2d).
    Conv,
    /// The fused Conv2d+BatchNorm2d, with the configured BN treatment.
    ConvBn,
    /// Input and weight fake-quantized (Linear).
    Dense,
    /// Output fake-quantized (activations).
    Act,
    /// Inputs and output fake-quantized (Add, Mul).
    Arith,
    /// Left in float.
    Skip,
}

/// SimQAT's configuration (spec §2.9), with the code defaults of the original.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimQatConfig {
    pub quant_delay: Pair<u64>,
    pub quant_dtype: Pair<QuantDtype>,
    pub per_channel: Pair<bool>,
    pub symmetric: Pair<bool>,
    pub narrow_range: Pair<bool>,
    pub enable_fusion: bool,
    pub bn_fold: bool,
    pub one_conv_fold: bool,
    pub freeze_bn: u64,
    /// Cell kind -> policy; wins over the built-in map.
    pub custom_policies: BTreeMap<String, LayerPolicy>,
    /// LSQ quantizers (trained ranges); set by [`SimQat::lsq`], not a recipe key.
    #[serde(skip)]
    pub learned_step: bool,
}

impl Default for SimQatConfig {
    fn default() -> Self {
        SimQatConfig {
            quant_delay: Pair::both(0),
            quant_dtype: Pair::both(QuantDtype::Int8),
            per_channel: Pair {
                act: false,
                weight: true,
            },
            symmetric: Pair {
                act: false,
                weight: true,
            },
            narrow_range: Pair::both(false),
            enable_fusion: false,
            bn_fold: false,
            one_conv_fold: true,
            freeze_bn: 10_000_000,
            custom_policies: BTreeMap::new(),
            learned_step: false,
        }
    }
}

impl SimQatConfig {
    /// The rules that do not depend on hardware; each error names its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.quant_dtype.act != QuantDtype::Int8 || self.quant_dtype.weight != QuantDtype::Int8 {
            return Err(invalid(
                "quant_dtype",
                "SimQAT quantizes activations and weights to int8 only",
            ));
        }
        if self.per_channel.act {
            return Err(invalid(
                "per_channel",
                "activations are quantized per tensor; only the weight may be per channel",
            ));
        }
        Ok(())
    }

    /// Reads a TOML or YAML recipe (by extension) and validates it.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let recipe_error = |message: String| ConfigError::Recipe {
            path: shown.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| recipe_error(e.to_string()))?;
        let config: SimQatConfig = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                serde_yaml_ng::from_str(&text).map_err(|e| recipe_error(e.to_string()))?
            }
            _ => toml::from_str(&text).map_err(|e| recipe_error(e.to_string()))?,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn set_act_quant_delay(&mut self, steps: u64) {
        self.quant_delay.act = steps;
    }
    pub fn set_weight_quant_delay(&mut self, steps: u64) {
        self.quant_delay.weight = steps;
    }
    pub fn set_act_per_channel(&mut self, on: bool) -> Result<(), ConfigError> {
        if on {
            return Err(invalid(
                "per_channel",
                "activations are quantized per tensor; only the weight may be per channel",
            ));
        }
        self.per_channel.act = false;
        Ok(())
    }
    pub fn set_weight_per_channel(&mut self, on: bool) {
        self.per_channel.weight = on;
    }
    pub fn set_act_quant_dtype(&mut self, dtype: QuantDtype) -> Result<(), ConfigError> {
        if dtype != QuantDtype::Int8 {
            return Err(invalid("quant_dtype", "activations are int8 only"));
        }
        self.quant_dtype.act = dtype;
        Ok(())
    }
    pub fn set_weight_quant_dtype(&mut self, dtype: QuantDtype) -> Result<(), ConfigError> {
        if dtype != QuantDtype::Int8 {
            return Err(invalid("quant_dtype", "SimQAT weights are int8 only"));
        }
        self.quant_dtype.weight = dtype;
        Ok(())
    }
    pub fn set_act_symmetric(&mut self, on: bool) {
        self.symmetric.act = on;
    }
    pub fn set_weight_symmetric(&mut self, on: bool) {
        self.symmetric.weight = on;
    }
    pub fn set_act_narrow_range(&mut self, on: bool) {
        self.narrow_range.act = on;
    }
    pub fn set_weight_narrow_range(&mut self, on: bool) {
        self.narrow_range.weight = on;
    }
    pub fn set_enable_fusion(&mut self, on: bool) {
        self.enable_fusion = on;
    }
    pub fn set_bn_fold(&mut self, on: bool) {
        self.bn_fold = on;
    }
    pub fn set_one_conv_fold(&mut self, on: bool) {
        self.one_conv_fold = on;
    }
    pub fn set_freeze_bn(&mut self, steps: u64) {
        self.freeze_bn = steps;
    }

    fn act_quant(&self) -> FakeQuantConfig {
        FakeQuantConfig {
            bits: self.quant_dtype.act.bits(),
            symmetric: self.symmetric.act,
            narrow: self.narrow_range.act,
            per_channel: false,
            ema: false,
            ema_decay: 0.999,
            quant_delay: self.quant_delay.act,
            learned_step: self.learned_step,
        }
    }

    fn weight_quant(&self) -> FakeQuantConfig {
        FakeQuantConfig {
            bits: self.quant_dtype.weight.bits(),
            symmetric: self.symmetric.weight,
            narrow: self.narrow_range.weight,
            per_channel: self.per_channel.weight,
            ema: false,
            ema_decay: 0.999,
            quant_delay: self.quant_delay.weight,
            learned_step: self.learned_step,
        }
    }

    fn bn_treatment(&self) -> BnFold {
        match (self.bn_fold, self.one_conv_fold) {
            (false, _) => BnFold::None,
            (true, true) => BnFold::OneConv,
            (true, false) => BnFold::TwoConv,
        }
    }

    /// The policy for a cell kind: a custom one, else the built-in map.
    pub fn policy(&self, kind: &str) -> LayerPolicy {
        if let Some(p) = self.custom_policies.get(kind) {
            return *p;
        }
        match kind {
            "Conv2d" => LayerPolicy::Conv,
            "Conv2dBn" => LayerPolicy::ConvBn,
            "Linear" => LayerPolicy::Dense,
            "ReLU" | "ReLU6" | "Sigmoid" | "LeakyReLU" | "HSigmoid" | "HSwish" => LayerPolicy::Act,
            "Add" | "Mul" => LayerPolicy::Arith,
            _ => LayerPolicy::Skip,
        }
    }
}

/// A user pattern rewrite run after fusion and before the policies.
pub type CustomTransform = Box<dyn Fn(&mut Network) -> crate::Result<bool>>;

/// Simulated quantization-aware training.
pub struct SimQat {
    pub config: SimQatConfig,
    pub custom_transforms: Vec<CustomTransform>,
}

impl SimQat {
    pub fn new(config: SimQatConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(SimQat {
            config,
            custom_transforms: Vec::new(),
        })
    }

    /// LSQ (spec §2.11): SimQAT's rewrite with learned-step quantizers. Weights must be
    /// symmetric with a narrow range (activations that are never negative use the unsigned
    /// grid, the original's neg_trunc).
    pub fn lsq(mut config: SimQatConfig) -> Result<Self, ConfigError> {
        if !config.symmetric.weight {
            return Err(invalid("symmetric", "LSQ quantizes weights symmetrically"));
        }
        if !config.narrow_range.weight {
            return Err(invalid("narrow_range", "LSQ needs a narrow weight range"));
        }
        config.learned_step = true;
        Self::new(config)
    }
}

/// Replaces Conv2d -> BatchNorm2d chains (the conv read only by the BN) by one `Conv2dBn` cell
/// under the conv's name.
pub fn fuse_conv_bn_cells(net: &mut Network) -> crate::Result<bool> {
    let engine = PatternEngine::new(Pattern::chain(&["Conv2d", "BatchNorm2d"]), fuse_pair);
    Ok(engine.apply(net)?)
}

fn fuse_pair(
    graph: &Graph<Box<dyn Cell>>,
    m: &Match,
) -> gstick_rewrite::Result<Vec<NewNode<Box<dyn Cell>>>> {
    let (conv_id, bn_id) = (m.get("Conv2d")?, m.get("BatchNorm2d")?);
    let conv_node = graph.node(conv_id)?;
    let cell_of = |id| graph.node(id).ok().and_then(|n| n.cell());
    let (Some(conv), Some(bn)) = (
        cell_of(conv_id).and_then(|c| downcast::<Conv2d>(c.as_ref())),
        cell_of(bn_id).and_then(|c| downcast::<BatchNorm2d>(c.as_ref())),
    ) else {
        return Ok(Vec::new());
    };
    // A conv bias before a BatchNorm only shifts the mean the BN subtracts: move it into the
    // running mean (training normalizes it away anyway), so the fused cell's conv has none.
    let (conv, bn) = match &conv.bias {
        None => (conv.clone(), bn.clone()),
        Some(b) => {
            let mut bn = bn.clone();
            let shifted = (bn.running_mean.tensor() - b.tensor())
                .and_then(|t| t.detach().copy())
                .map_err(|e| gstick_rewrite::Error::Replacement(e.to_string()))?;
            bn.running_mean = gstick_nn::Param::buffer(shifted)
                .map_err(|e| gstick_rewrite::Error::Replacement(e.to_string()))?;
            let mut conv = conv.clone();
            conv.bias = None;
            (conv, bn)
        }
    };
    let fused = ConvBn { conv, bn };
    Ok(vec![NewNode::cell(
        conv_node.name(),
        Box::new(fused) as Box<dyn Cell>,
        conv_node.inputs().iter().copied().map(Arg::Node).collect(),
    )])
}

/// State of the walk over one graph: which values are already fake-quantized, and the fake
/// quantizer inserted for a value (reused by every later reader).
struct Walk<'a> {
    config: &'a SimQatConfig,
    quantized: std::collections::HashSet<NodeId>,
    quantizer_of: HashMap<NodeId, NodeId>,
}

impl Walk<'_> {
    /// Makes argument `index` of `node` read a fake-quantized version of what it reads now.
    fn quantize_input(&mut self, g: &mut Network, node: NodeId, index: usize) -> crate::Result<()> {
        let src = g.node(node)?.inputs()[index];
        if self.quantized.contains(&src) {
            return Ok(());
        }
        let fq = match self.quantizer_of.get(&src) {
            Some(&fq) => fq,
            None => {
                let name = g.unique_name(&format!("{}_quant", g.name_of(src)?));
                let cell = FakeQuant::new(self.config.act_quant())?;
                let fq = g.insert(
                    g.after(src),
                    &name,
                    Op::Cell(Box::new(cell) as Box<dyn Cell>),
                    &[src],
                )?;
                self.quantizer_of.insert(src, fq);
                self.quantized.insert(fq);
                fq
            }
        };
        g.set_input(node, index, fq)?;
        Ok(())
    }

    /// Fake-quantizes the output of `node` for every reader.
    fn quantize_output(&mut self, g: &mut Network, node: NodeId) -> crate::Result<()> {
        let name = g.unique_name(&format!("{}_quant", g.name_of(node)?));
        let cell = FakeQuant::new(self.config.act_quant())?;
        let fq = g.insert(
            g.after(node),
            &name,
            Op::Cell(Box::new(cell) as Box<dyn Cell>),
            &[node],
        )?;
        g.replace_all_uses(node, fq)?;
        self.quantizer_of.insert(node, fq);
        self.quantized.insert(fq);
        Ok(())
    }
}

/// Wraps one graph's cells; `inputs_quantized[i]` says whether graph input i arrives quantized.
fn wrap_graph(
    g: &mut Network,
    config: &SimQatConfig,
    inputs_quantized: &[bool],
) -> crate::Result<()> {
    let mut walk = Walk {
        config,
        quantized: g
            .graph_inputs()
            .iter()
            .zip(inputs_quantized)
            .filter(|(_, &q)| q)
            .map(|(&id, _)| id)
            .collect(),
        quantizer_of: HashMap::new(),
    };
    for id in g.node_ids().to_vec() {
        let node = g.node(id)?;
        if let Op::SubGraph { .. } = node.op() {
            let flags: Vec<bool> = node
                .inputs()
                .iter()
                .map(|i| walk.quantized.contains(i))
                .collect();
            let sub = g.subgraph_mut(id)?;
            wrap_graph(sub, config, &flags)?;
            let outputs_quantized = sub.graph_outputs().iter().all(|&o| {
                sub.node(o)
                    .map(|n| n.kind() == "FakeQuant")
                    .unwrap_or(false)
            });
            if outputs_quantized {
                walk.quantized.insert(id);
            }
            continue;
        }
        let Some(cell) = node.cell() else { continue };
        if cell.kind() == "FakeQuant" {
            walk.quantized.insert(id);
            continue;
        }
        let kind = cell.kind().to_string();
        let wrapped: Option<Box<dyn Cell>> = match config.policy(&kind) {
            LayerPolicy::Skip => None,
            LayerPolicy::Act => {
                walk.quantize_output(g, id)?;
                None
            }
            LayerPolicy::Arith => {
                for i in 0..g.node(id)?.inputs().len() {
                    walk.quantize_input(g, id, i)?;
                }
                walk.quantize_output(g, id)?;
                None
            }
            policy @ (LayerPolicy::Conv | LayerPolicy::Dense | LayerPolicy::ConvBn) => {
                walk.quantize_input(g, id, 0)?;
                let cell = g.node(id)?.cell().map(|c| c.as_ref());
                let w = config.weight_quant();
                let made: Box<dyn Cell> = match (policy, cell) {
                    (LayerPolicy::Conv, Some(c)) => match downcast::<Conv2d>(c) {
                        Some(conv) => Box::new(QuantConv2d::new(conv.clone(), w)?),
                        None => return Err(not_a(&kind, "Conv2d", g, id)),
                    },
                    (LayerPolicy::Dense, Some(c)) => match downcast::<Linear>(c) {
                        Some(l) => Box::new(QuantLinear::new(l.clone(), w)?),
                        None => return Err(not_a(&kind, "Linear", g, id)),
                    },
                    (_, Some(c)) => match downcast::<ConvBn>(c) {
                        Some(cb) => Box::new(QuantConvBn::new(
                            cb.conv.clone(),
                            cb.bn.clone(),
                            config.bn_treatment(),
                            w,
                            config.freeze_bn,
                        )?),
                        None => return Err(not_a(&kind, "Conv2dBn", g, id)),
                    },
                    _ => unreachable!("a cell node"),
                };
                Some(made)
            }
        };
        if let Some(cell) = wrapped {
            let node = g.node(id)?;
            let name = node.name().to_string();
            let inputs = node.inputs().iter().copied().map(Arg::Node).collect();
            g.replace(id, vec![NewNode::cell(name, cell, inputs)])?;
        }
    }
    Ok(())
}

fn not_a(kind: &str, wanted: &str, g: &Network, id: NodeId) -> crate::Error {
    crate::Error::Layer {
        layer: g.name_of(id).unwrap_or("?").to_string(),
        message: format!("a policy for {wanted} was given to a `{kind}` cell"),
    }
}

impl CompAlgo for SimQat {
    type Error = crate::Error;

    fn name(&self) -> &'static str {
        if self.config.learned_step {
            "LearnedStepSizeQuantizationAwareTraining"
        } else {
            "SimulatedQuantizationAwareTraining"
        }
    }

    fn apply(&mut self, net: &mut Network) -> crate::Result<()> {
        self.config.validate()?;
        let config = self.config.clone();
        let transforms = &self.custom_transforms;
        net.transaction(|g| {
            if config.enable_fusion {
                fuse_conv_bn_cells(g)?;
            }
            for t in transforms {
                t(g)?;
            }
            let flags = vec![false; g.graph_inputs().len()];
            wrap_graph(g, &config, &flags)
        })
    }

    /// Folds BatchNorms, freezes the ranges and produces the int8 deploy network.
    fn convert(&self, net: &mut Network) -> crate::Result<()> {
        super::convert::convert_to_int8(net)
    }

    fn summary(&self, net: &Network) -> Vec<(String, String)> {
        net.nodes_recursive()
            .into_iter()
            .filter_map(|(name, node)| {
                let cell = node.cell()?;
                let quantized = matches!(
                    cell.kind(),
                    "Conv2dQuant"
                        | "DenseQuant"
                        | "Conv2dBnWithoutFoldQuant"
                        | "Conv2dBnFoldQuantOneConv"
                        | "Conv2dBnFoldQuant"
                        | "FakeQuant"
                );
                let info = if quantized {
                    format!("{}: {}", cell.kind(), cell.summary())
                } else {
                    "NA".into()
                };
                Some((name, info))
            })
            .collect()
    }
}
