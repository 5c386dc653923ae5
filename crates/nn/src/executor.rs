//! Runs a network forward, eagerly, node by node in execution order. Every candle op is recorded
//! by candle's autodiff, so `loss.backward()` on the output trains the network.

use std::collections::HashMap;

use candle_core::Tensor;
use gstick_rewrite::{NodeId, Op};

use crate::cell::CellCtx;
use crate::{Error, KvCache, Mode, Network, Result, Rng};

/// What a forward hook sees: the node's qualified name and kind, its inputs and its output.
pub struct HookCall<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub inputs: &'a [Tensor],
    pub output: &'a Tensor,
}

type Hook = Box<dyn FnMut(&HookCall) -> Result<()>>;

/// Runs networks in one mode, with one seeded generator and optional forward hooks.
pub struct Executor {
    pub mode: Mode,
    /// Check every node's output for NaN/Inf and fail naming the first node that produced one.
    pub check_finite: bool,
    rng: Rng,
    hooks: Vec<(Option<String>, Hook)>,
    /// Present during incremental decoding: attention nodes append to it and read from it.
    pub cache: Option<KvCache>,
    /// When present, the time spent in each cell kind (leaf cells only) is added to it.
    pub profile: Option<Profile>,
}

/// Time and calls per cell kind, for finding where a forward pass spends its time.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub by_kind: std::collections::BTreeMap<String, (std::time::Duration, usize)>,
}

impl Profile {
    /// Kinds by time spent, the largest first: (kind, seconds, calls).
    pub fn ranked(&self) -> Vec<(String, f64, usize)> {
        let mut rows: Vec<_> = self
            .by_kind
            .iter()
            .map(|(k, (d, n))| (k.clone(), d.as_secs_f64(), *n))
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        rows
    }
}

impl Executor {
    pub fn new(mode: Mode, seed: u64) -> Self {
        Executor {
            mode,
            check_finite: false,
            rng: crate::rng(seed),
            hooks: Vec::new(),
            cache: None,
            profile: None,
        }
    }

    /// Calls `hook` after the node with this qualified name (`layer1.0.conv1`) runs.
    pub fn add_hook(&mut self, node: &str, hook: impl FnMut(&HookCall) -> Result<()> + 'static) {
        self.hooks.push((Some(node.to_string()), Box::new(hook)));
    }

    /// Calls `hook` after every node runs (sub-graph nodes after their contents).
    pub fn add_hook_all(&mut self, hook: impl FnMut(&HookCall) -> Result<()> + 'static) {
        self.hooks.push((None, Box::new(hook)));
    }

    pub fn clear_hooks(&mut self) {
        self.hooks.clear();
    }

    /// Runs `net` on `inputs` and returns its outputs.
    pub fn forward(&mut self, net: &Network, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.run_graph(net, "", inputs)
    }

    /// Runs a network with one input and one output.
    pub fn forward1(&mut self, net: &Network, input: &Tensor) -> Result<Tensor> {
        let mut out = self.forward(net, std::slice::from_ref(input))?;
        match out.len() {
            1 => Ok(out.remove(0)),
            n => Err(Error::Config(format!(
                "forward1 expects a network with one output, this one has {n}"
            ))),
        }
    }

    fn run_graph(
        &mut self,
        graph: &Network,
        prefix: &str,
        inputs: &[Tensor],
    ) -> Result<Vec<Tensor>> {
        if inputs.len() != graph.graph_inputs().len() {
            return Err(Error::Config(format!(
                "{} takes {} input(s), got {}",
                if prefix.is_empty() {
                    "the network"
                } else {
                    prefix
                },
                graph.graph_inputs().len(),
                inputs.len()
            )));
        }
        // How many readers each value still has, so intermediate tensors are freed early.
        let mut remaining: HashMap<NodeId, usize> = HashMap::new();
        for (_, node) in graph.nodes() {
            for &i in node.inputs() {
                *remaining.entry(i).or_default() += 1;
            }
        }
        for &o in graph.graph_outputs() {
            *remaining.entry(o).or_default() += 1;
        }
        let mut values: HashMap<NodeId, Tensor> = HashMap::new();
        for (id, node) in graph.nodes() {
            let name = if prefix.is_empty() {
                node.name().to_string()
            } else {
                format!("{prefix}.{}", node.name())
            };
            let args: Vec<Tensor> = node
                .inputs()
                .iter()
                .map(|i| {
                    values
                        .get(i)
                        .cloned()
                        .ok_or(Error::Graph(gstick_rewrite::Error::NoSuchNode(*i)))
                })
                .collect::<Result<_>>()?;
            for i in node.inputs() {
                if let Some(r) = remaining.get_mut(i) {
                    *r -= 1;
                    if *r == 0 {
                        values.remove(i);
                    }
                }
            }
            let wrap = |e: Error| match e {
                e @ (Error::Node { .. } | Error::NonFinite { .. }) => e,
                e => Error::Node {
                    node: name.clone(),
                    kind: node.kind().to_string(),
                    source: Box::new(e),
                },
            };
            let output = match node.op() {
                Op::Input { index } => inputs.get(*index).cloned().ok_or_else(|| {
                    Error::Config(format!("missing graph input {index} for `{name}`"))
                })?,
                Op::Cell(cell) => {
                    let mut ctx = CellCtx {
                        mode: self.mode,
                        rng: &mut self.rng,
                        node: &name,
                        cache: self.cache.as_mut(),
                    };
                    let started = self.profile.is_some().then(std::time::Instant::now);
                    let out = cell.forward(&args, &mut ctx).map_err(wrap)?;
                    if let (Some(p), Some(t)) = (self.profile.as_mut(), started) {
                        let e = p.by_kind.entry(node.kind().to_string()).or_default();
                        e.0 += t.elapsed();
                        e.1 += 1;
                    }
                    out
                }
                Op::SubGraph { graph: sub, .. } => self
                    .run_graph(sub, &name, &args)
                    .map_err(wrap)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Config(format!("sub-graph `{name}` has no output")))?,
            };
            if self.check_finite && !matches!(node.op(), Op::Input { .. }) && !is_finite(&output)? {
                return Err(Error::NonFinite {
                    node: name,
                    kind: node.kind().to_string(),
                });
            }
            for (target, hook) in &mut self.hooks {
                if target.as_deref().is_none_or(|t| t == name) {
                    hook(&HookCall {
                        name: &name,
                        kind: node.kind(),
                        inputs: &args,
                        output: &output,
                    })?;
                }
            }
            if remaining.get(&id).copied().unwrap_or(0) > 0 {
                values.insert(id, output);
            }
        }
        graph
            .graph_outputs()
            .iter()
            .map(|o| {
                values
                    .get(o)
                    .cloned()
                    .ok_or(Error::Graph(gstick_rewrite::Error::NoSuchNode(*o)))
            })
            .collect()
    }
}

/// Whether every value of a float tensor is finite (integer tensors always are).
pub fn is_finite(t: &Tensor) -> Result<bool> {
    if !t.dtype().is_float() {
        return Ok(true);
    }
    if t.dtype() == candle_core::DType::F32 {
        let path = crate::kernels::vector_math::MathPath::best();
        return Ok(crate::kernels::with_f32(t, |v| {
            crate::kernels::vector_math::all_finite(path, v)
        })?);
    }
    let values = t
        .detach()
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(values.iter().all(|v| v.is_finite()))
}
