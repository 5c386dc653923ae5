use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::{AttrValue, Error, Result};

/// What a graph's cells must offer the IR: a kind that patterns match on and a short summary for
/// printing. Cloning must be cheap enough to snapshot a graph for a transactional edit.
pub trait Payload: Clone + fmt::Debug {
    /// The cell kind, for example `"Conv2d"`.
    fn kind(&self) -> &str;
    /// Hyper-parameters in one line, for the node table.
    fn summary(&self) -> String {
        String::new()
    }
}

/// Handle of a node inside one graph. Handles of erased nodes are never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) u32);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a node does.
#[derive(Clone, Debug)]
pub enum Op<P> {
    /// The `index`-th input of the graph.
    Input { index: usize },
    /// A cell computing one output from its inputs.
    Cell(P),
    /// A nested graph; the node's inputs feed the sub-graph's inputs in order and its first
    /// output is the node's output. `kind` names the block type ("BasicBlock", "DecoderLayer").
    SubGraph { kind: String, graph: Box<Graph<P>> },
}

impl<P: Payload> Op<P> {
    /// The kind patterns match on: the cell kind, the sub-graph kind, or `"Input"`.
    pub fn kind(&self) -> &str {
        match self {
            Op::Input { .. } => "Input",
            Op::Cell(p) => p.kind(),
            Op::SubGraph { kind, .. } => kind,
        }
    }
}

/// One node: a unique name, what it does, the producers of its arguments and free-form attributes.
#[derive(Clone, Debug)]
pub struct Node<P> {
    pub(crate) name: String,
    pub(crate) op: Op<P>,
    pub(crate) inputs: Vec<NodeId>,
    pub(crate) attrs: BTreeMap<String, AttrValue>,
}

impl<P: Payload> Node<P> {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn op(&self) -> &Op<P> {
        &self.op
    }
    pub fn op_mut(&mut self) -> &mut Op<P> {
        &mut self.op
    }
    pub fn kind(&self) -> &str {
        self.op.kind()
    }
    /// The producers of this node's arguments, in argument order.
    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }
    pub fn cell(&self) -> Option<&P> {
        match &self.op {
            Op::Cell(p) => Some(p),
            _ => None,
        }
    }
    pub fn cell_mut(&mut self) -> Option<&mut P> {
        match &mut self.op {
            Op::Cell(p) => Some(p),
            _ => None,
        }
    }
    pub fn subgraph(&self) -> Option<&Graph<P>> {
        match &self.op {
            Op::SubGraph { graph, .. } => Some(graph),
            _ => None,
        }
    }
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attrs.get(key)
    }
    pub fn attrs(&self) -> &BTreeMap<String, AttrValue> {
        &self.attrs
    }
    pub fn set_attr(&mut self, key: impl Into<String>, value: impl Into<AttrValue>) {
        self.attrs.insert(key.into(), value.into());
    }
    pub fn remove_attr(&mut self, key: &str) -> Option<AttrValue> {
        self.attrs.remove(key)
    }
}

/// A network as an ordered list of nodes. Invariants, checked by every edit:
/// - `order` is an execution order: each node's producers come before it;
/// - names are unique within the graph;
/// - outputs and node inputs refer to live nodes of this graph.
#[derive(Clone, Debug)]
pub struct Graph<P> {
    pub(crate) slots: Vec<Option<Node<P>>>,
    pub(crate) order: Vec<NodeId>,
    pub(crate) names: HashMap<String, NodeId>,
    pub(crate) inputs: Vec<NodeId>,
    pub(crate) outputs: Vec<NodeId>,
}

impl<P: Payload> Default for Graph<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Payload> Graph<P> {
    pub fn new() -> Self {
        Graph {
            slots: Vec::new(),
            order: Vec::new(),
            names: HashMap::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    // ---- building -------------------------------------------------------------------------

    /// Appends a graph input named `name` (made unique) and returns it.
    pub fn add_input(&mut self, name: &str) -> NodeId {
        let index = self.inputs.len();
        let id = self.push_node(name, Op::Input { index }, Vec::new(), None);
        self.inputs.push(id);
        id
    }

    /// Appends a cell at the end of the graph. Fails when an input is not a node of this graph.
    pub fn add_cell(&mut self, name: &str, cell: P, inputs: &[NodeId]) -> Result<NodeId> {
        self.add_node(name, Op::Cell(cell), inputs)
    }

    /// Appends a sub-graph node of the given kind at the end of the graph.
    pub fn add_subgraph(
        &mut self,
        name: &str,
        kind: &str,
        graph: Graph<P>,
        inputs: &[NodeId],
    ) -> Result<NodeId> {
        let op = Op::SubGraph {
            kind: kind.to_string(),
            graph: Box::new(graph),
        };
        self.add_node(name, op, inputs)
    }

    /// Appends any node at the end of the graph.
    pub fn add_node(&mut self, name: &str, op: Op<P>, inputs: &[NodeId]) -> Result<NodeId> {
        for &i in inputs {
            self.node(i)?;
        }
        check_subgraph_arity(name, &op, inputs.len())?;
        Ok(self.push_node(name, op, inputs.to_vec(), None))
    }

    /// Makes `outputs` the graph's outputs.
    pub fn set_outputs(&mut self, outputs: &[NodeId]) -> Result<()> {
        for &o in outputs {
            self.node(o)?;
        }
        self.outputs = outputs.to_vec();
        Ok(())
    }

    /// Creates the node and places it at `at` in the order (at the end when `None`).
    pub(crate) fn push_node(
        &mut self,
        name: &str,
        op: Op<P>,
        inputs: Vec<NodeId>,
        at: Option<usize>,
    ) -> NodeId {
        let id = NodeId(self.slots.len() as u32);
        let name = self.unique_name(name);
        self.names.insert(name.clone(), id);
        self.slots.push(Some(Node {
            name,
            op,
            inputs,
            attrs: BTreeMap::new(),
        }));
        match at {
            Some(pos) => self.order.insert(pos, id),
            None => self.order.push(id),
        }
        id
    }

    // ---- queries --------------------------------------------------------------------------

    /// The node behind `id`, or an error for an erased or foreign handle.
    pub fn node(&self, id: NodeId) -> Result<&Node<P>> {
        self.slots
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(Error::NoSuchNode(id))
    }

    pub fn node_mut(&mut self, id: NodeId) -> Result<&mut Node<P>> {
        self.slots
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchNode(id))
    }

    /// The node with this unique name, if any.
    pub fn get(&self, name: &str) -> Option<NodeId> {
        self.names.get(name).copied()
    }

    /// Like [`Graph::get`], but an error naming the missing node.
    pub fn find(&self, name: &str) -> Result<NodeId> {
        self.get(name)
            .ok_or_else(|| Error::NoSuchName(name.to_string()))
    }

    pub fn name_of(&self, id: NodeId) -> Result<&str> {
        Ok(self.node(id)?.name())
    }

    /// Node handles in execution order (this graph only).
    pub fn node_ids(&self) -> &[NodeId] {
        &self.order
    }

    /// Nodes in execution order (this graph only).
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node<P>)> + '_ {
        self.order
            .iter()
            .filter_map(move |&id| self.node(id).ok().map(|n| (id, n)))
    }

    /// Every node in execution order, descending into sub-graphs, each with its qualified name
    /// (`layer1.0.conv1`). A sub-graph node comes before the nodes it contains.
    pub fn nodes_recursive(&self) -> Vec<(String, &Node<P>)> {
        let mut out = Vec::new();
        self.collect_recursive("", &mut out);
        out
    }

    fn collect_recursive<'a>(&'a self, prefix: &str, out: &mut Vec<(String, &'a Node<P>)>) {
        for (_, node) in self.nodes() {
            let qualified = qualify(prefix, &node.name);
            if let Op::SubGraph { graph, .. } = &node.op {
                out.push((qualified.clone(), node));
                graph.collect_recursive(&qualified, out);
            } else {
                out.push((qualified, node));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The graph's input nodes, in argument order.
    pub fn graph_inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    /// The graph's outputs, in order.
    pub fn graph_outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    /// The producers of `id`'s arguments, in argument order.
    pub fn inputs_of(&self, id: NodeId) -> Result<&[NodeId]> {
        Ok(self.node(id)?.inputs())
    }

    /// The nodes that read `id`, in execution order, each once.
    pub fn users(&self, id: NodeId) -> Result<Vec<NodeId>> {
        self.node(id)?;
        Ok(self
            .nodes()
            .filter(|(_, n)| n.inputs.contains(&id))
            .map(|(uid, _)| uid)
            .collect())
    }

    /// Whether `id` is one of the graph's outputs.
    pub fn is_output(&self, id: NodeId) -> bool {
        self.outputs.contains(&id)
    }

    /// Position of `id` in the execution order.
    pub fn position_of(&self, id: NodeId) -> Result<usize> {
        self.node(id)?;
        self.order
            .iter()
            .position(|&o| o == id)
            .ok_or(Error::NoSuchNode(id))
    }

    /// The sub-graph held by node `id`.
    pub fn subgraph(&self, id: NodeId) -> Result<&Graph<P>> {
        let node = self.node(id)?;
        node.subgraph()
            .ok_or_else(|| Error::NotSubGraph(node.name.clone()))
    }

    /// The sub-graph held by node `id`, for editing.
    pub fn subgraph_mut(&mut self, id: NodeId) -> Result<&mut Graph<P>> {
        let node = self.node_mut(id)?;
        match &mut node.op {
            Op::SubGraph { graph, .. } => Ok(graph),
            _ => Err(Error::NotSubGraph(node.name.clone())),
        }
    }

    /// Resolves a qualified name such as `layer1.0.conv1` through sub-graphs (names may themselves
    /// contain dots, so the longest matching prefix wins). Returns the handles from the top graph
    /// down to the node.
    pub fn resolve(&self, qualified: &str) -> Option<Vec<NodeId>> {
        if let Some(id) = self.get(qualified) {
            return Some(vec![id]);
        }
        let dots: Vec<usize> = qualified.match_indices('.').map(|(i, _)| i).collect();
        for &cut in dots.iter().rev() {
            let (head, tail) = (&qualified[..cut], &qualified[cut + 1..]);
            if let Some(id) = self.get(head) {
                if let Ok(sub) = self.subgraph(id) {
                    if let Some(mut rest) = sub.resolve(tail) {
                        rest.insert(0, id);
                        return Some(rest);
                    }
                }
            }
        }
        None
    }

    /// A name not used yet in this graph: `base`, else `base_1`, `base_2`, ...
    pub fn unique_name(&self, base: &str) -> String {
        let base = if base.is_empty() { "node" } else { base };
        if !self.names.contains_key(base) {
            return base.to_string();
        }
        (1..)
            .map(|k| format!("{base}_{k}"))
            .find(|n| !self.names.contains_key(n))
            .unwrap_or_default()
    }

    /// Runs `edit` on the graph; when it fails, the graph is restored to what it was before.
    pub fn transaction<T, E>(
        &mut self,
        edit: impl FnOnce(&mut Self) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let snapshot = self.clone();
        let result = edit(self);
        if result.is_err() {
            *self = snapshot;
        }
        result
    }
}

pub(crate) fn qualify(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

pub(crate) fn check_subgraph_arity<P: Payload>(name: &str, op: &Op<P>, given: usize) -> Result<()> {
    if let Op::SubGraph { graph, .. } = op {
        if graph.inputs.len() != given {
            return Err(Error::SubGraphArity {
                node: name.to_string(),
                given,
                expected: graph.inputs.len(),
            });
        }
    }
    Ok(())
}
