//! Channel dependency analysis: the groups of layers whose channels must be pruned together.
//! Every value in the graph (recursing into sub-graphs such as residual blocks) is given a
//! channel space. A convolution or Linear reads its input's space (its weight columns) and
//! starts a new one (its rows); BatchNorm, a depthwise convolution, activations, pooling and
//! dropout carry their input's space through; Add and Mul join the spaces of their inputs,
//! which is what ties a whole ResNet stage together. A space reaching the network's input or
//! output, or read by an op this analysis does not model (a grouped convolution, a
//! concatenation, a flatten of a spatial map, attention, ...), is fixed: pruning it is refused.

use std::collections::BTreeMap;

use gstick_nn::cell::downcast;
use gstick_nn::cells::{BatchNorm2d, Conv2d, Linear};
use gstick_nn::{Cell, Network};
use gstick_rewrite::NodeId;

use crate::{Error, Result};

/// What a layer does with the channels of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Makes the channels: its output rows (convolution or Linear weight rows and bias).
    Producer,
    /// Keeps one parameter slice per channel: BatchNorm, depthwise convolution.
    Carrier,
    /// Reads the channels: its weight columns (input channels).
    Consumer,
}

/// One layer of a group, by qualified name (`layer1.0.conv1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub kind: String,
    pub role: Role,
}

/// Layers that must keep equal channel counts.
#[derive(Clone, Debug)]
pub struct ChannelGroup {
    pub channels: usize,
    pub members: Vec<Member>,
    /// Why the group cannot be pruned, when it cannot.
    pub fixed: Option<String>,
}

impl ChannelGroup {
    /// A readable handle: the first producer's name.
    pub fn name(&self) -> String {
        self.of(Role::Producer)
            .next()
            .or_else(|| self.members.first())
            .map_or_else(|| "(empty)".to_string(), |m| m.name.clone())
    }

    pub fn of(&self, role: Role) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.role == role)
    }

    pub fn is_prunable(&self) -> bool {
        self.fixed.is_none() && self.of(Role::Producer).next().is_some()
    }

    /// Whether `layer` is a member in any role.
    pub fn contains(&self, layer: &str) -> bool {
        self.members.iter().any(|m| m.name == layer)
    }
}

/// Union-find over channel spaces, with what is known of each.
#[derive(Default)]
struct Spaces {
    parent: Vec<usize>,
    channels: Vec<Option<usize>>,
    fixed: Vec<Option<String>>,
    members: Vec<(usize, Member)>,
}

impl Spaces {
    fn new_space(&mut self, channels: Option<usize>) -> usize {
        self.parent.push(self.parent.len());
        self.channels.push(channels);
        self.fixed.push(None);
        self.parent.len() - 1
    }

    fn find(&mut self, mut s: usize) -> usize {
        while self.parent[s] != s {
            self.parent[s] = self.parent[self.parent[s]];
            s = self.parent[s];
        }
        s
    }

    fn set_channels(&mut self, s: usize, c: usize, at: &str) -> Result<()> {
        let r = self.find(s);
        match self.channels[r] {
            Some(k) if k != c => Err(Error::Layer {
                layer: at.to_string(),
                message: format!("expects {c} channels where its input has {k}"),
            }),
            _ => {
                self.channels[r] = Some(c);
                Ok(())
            }
        }
    }

    fn union(&mut self, a: usize, b: usize, at: &str) -> Result<usize> {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return Ok(ra);
        }
        if let Some(c) = self.channels[rb] {
            self.set_channels(ra, c, at)?;
        }
        if self.fixed[ra].is_none() {
            self.fixed[ra] = self.fixed[rb].take();
        }
        self.parent[rb] = ra;
        Ok(ra)
    }

    fn fix(&mut self, s: usize, why: String) {
        let r = self.find(s);
        if self.fixed[r].is_none() {
            self.fixed[r] = Some(why);
        }
    }

    fn join(&mut self, s: usize, name: &str, kind: &str, role: Role) {
        self.members.push((
            s,
            Member {
                name: name.to_string(),
                kind: kind.to_string(),
                role,
            },
        ));
    }
}

/// The channel groups of `net`, each with its members in graph order; groups with no members
/// (say, the space of a pooled value nobody prunes) are left out.
pub fn analyze(net: &Network) -> Result<Vec<ChannelGroup>> {
    let mut sp = Spaces::default();
    let inputs: Vec<usize> = net
        .graph_inputs()
        .iter()
        .map(|_| {
            let s = sp.new_space(None);
            sp.fix(s, "it is the network's input".into());
            s
        })
        .collect();
    let outputs = walk(net, "", &inputs, &mut sp)?;
    for s in outputs {
        sp.fix(s, "it is the network's output".into());
    }
    let mut groups: BTreeMap<usize, ChannelGroup> = BTreeMap::new();
    let members = std::mem::take(&mut sp.members);
    for (s, m) in members {
        let r = sp.find(s);
        let g = groups.entry(r).or_insert_with(|| ChannelGroup {
            channels: sp.channels[r].unwrap_or(0),
            members: Vec::new(),
            fixed: sp.fixed[r].clone(),
        });
        g.members.push(m);
    }
    Ok(groups.into_values().collect())
}

fn qualify(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Assigns spaces to the values of `g` given its inputs' spaces; returns its outputs' spaces.
fn walk(g: &Network, prefix: &str, inputs: &[usize], sp: &mut Spaces) -> Result<Vec<usize>> {
    let mut value: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (k, &id) in g.graph_inputs().iter().enumerate() {
        let s = match inputs.get(k) {
            Some(&s) => s,
            None => sp.new_space(None),
        };
        value.insert(id, s);
    }
    for (id, node) in g.nodes() {
        if value.contains_key(&id) {
            continue;
        }
        let name = qualify(prefix, node.name());
        let ins = node
            .inputs()
            .iter()
            .map(|i| {
                value.get(i).copied().ok_or_else(|| Error::Layer {
                    layer: name.clone(),
                    message: "reads a value defined after it".into(),
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        let out = if let Some(sub) = node.subgraph() {
            let outs = walk(sub, &name, &ins, sp)?;
            match outs.as_slice() {
                [s] => *s,
                _ => {
                    let s = sp.new_space(None);
                    for o in outs {
                        sp.fix(o, format!("{name} has several outputs"));
                    }
                    sp.fix(s, format!("{name} has several outputs"));
                    s
                }
            }
        } else if let Some(cell) = node.cell() {
            let input_kind = |k: usize| -> Option<String> {
                let id = *node.inputs().get(k)?;
                g.node(id).ok().map(|n| n.kind().to_string())
            };
            cell_rule(&name, cell.as_ref(), &ins, input_kind(0), sp)?
        } else {
            sp.new_space(None)
        };
        value.insert(id, out);
    }
    g.graph_outputs()
        .iter()
        .map(|o| {
            value.get(o).copied().ok_or_else(|| Error::Layer {
                layer: prefix.to_string(),
                message: "an output is not computed".into(),
            })
        })
        .collect()
}

/// Ops that keep every channel where it is.
const PER_CHANNEL: [&str; 13] = [
    "ReLU",
    "ReLU6",
    "LeakyReLU",
    "Sigmoid",
    "HSigmoid",
    "HSwish",
    "GELU",
    "SiLU",
    "Dropout",
    "MaxPool2d",
    "AvgPool2d",
    "GlobalAvgPool",
    "Identity",
];

fn cell_rule(
    name: &str,
    cell: &dyn Cell,
    ins: &[usize],
    first_input_kind: Option<String>,
    sp: &mut Spaces,
) -> Result<usize> {
    let kind = cell.kind();
    let one = || -> Result<usize> {
        match ins {
            [s] => Ok(*s),
            _ => Err(Error::Layer {
                layer: name.to_string(),
                message: format!("{kind} takes one input, has {}", ins.len()),
            }),
        }
    };
    if let Some(c) = downcast::<Conv2d>(cell) {
        let s = one()?;
        let dims = c.weight.tensor().dims().to_vec();
        let (out, per_group) = (dims[0], dims[1]);
        let groups = c.config.groups.max(1);
        let inp = per_group * groups;
        sp.set_channels(s, inp, name)?;
        return Ok(if groups == 1 {
            sp.join(s, name, kind, Role::Consumer);
            let o = sp.new_space(Some(out));
            sp.join(o, name, kind, Role::Producer);
            o
        } else if groups == inp && out == inp {
            sp.join(s, name, kind, Role::Carrier);
            s
        } else {
            sp.fix(
                s,
                format!("{name} is a grouped convolution ({groups} groups)"),
            );
            let o = sp.new_space(Some(out));
            sp.fix(
                o,
                format!("{name} is a grouped convolution ({groups} groups)"),
            );
            o
        });
    }
    if let Some(l) = downcast::<Linear>(cell) {
        let s = one()?;
        sp.set_channels(s, l.in_features(), name)?;
        sp.join(s, name, kind, Role::Consumer);
        let o = sp.new_space(Some(l.out_features()));
        sp.join(o, name, kind, Role::Producer);
        return Ok(o);
    }
    if let Some(bn) = downcast::<BatchNorm2d>(cell) {
        let s = one()?;
        sp.set_channels(s, bn.channels(), name)?;
        sp.join(s, name, kind, Role::Carrier);
        return Ok(s);
    }
    if PER_CHANNEL.contains(&kind) {
        return one();
    }
    match kind {
        // A flatten of a pooled (N, C) value changes nothing; of a spatial map, it mixes
        // channels with positions.
        "Flatten" if first_input_kind.as_deref() == Some("GlobalAvgPool") => one(),
        "Add" | "Mul" => {
            let mut r = *ins.first().ok_or_else(|| Error::Layer {
                layer: name.to_string(),
                message: format!("{kind} has no input"),
            })?;
            for &s in &ins[1..] {
                r = sp.union(r, s, name)?;
            }
            Ok(r)
        }
        _ => {
            for &s in ins {
                sp.fix(
                    s,
                    format!("it is read by {name} ({kind}), which the analysis does not model"),
                );
            }
            let o = sp.new_space(None);
            sp.fix(
                o,
                format!("it is made by {name} ({kind}), which the analysis does not model"),
            );
            Ok(o)
        }
    }
}
