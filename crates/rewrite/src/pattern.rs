//! Pattern matching with replacement.
//!
//! A [`Pattern`] is a tree rooted at the node whose output the match replaces; its children match
//! the producers of that node's arguments. A wildcard ([`Pattern::any`]) matches any producer and
//! is left in place. [`PatternEngine::apply`] walks the whole graph, sub-graphs included, replaces
//! each match whose inner nodes are used only inside the match, and reports whether anything changed.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Error, Graph, NewNode, NodeId, Op, Payload, Result};

/// One node of a pattern tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Pattern {
    name: String,
    /// `None`: a wildcard that matches any node.
    kind: Option<String>,
    /// `None`: the node's arguments are not constrained.
    inputs: Option<Vec<Pattern>>,
}

impl Pattern {
    /// Matches a node of `kind`, whatever its arguments.
    pub fn node(name: &str, kind: &str) -> Self {
        Pattern {
            name: name.to_string(),
            kind: Some(kind.to_string()),
            inputs: None,
        }
    }

    /// Matches any node; a wildcard is never erased nor checked for outside users.
    pub fn any(name: &str) -> Self {
        Pattern {
            name: name.to_string(),
            kind: None,
            inputs: None,
        }
    }

    /// Requires exactly these arguments, matched in order.
    pub fn with_inputs(mut self, inputs: Vec<Pattern>) -> Self {
        self.inputs = Some(inputs);
        self
    }

    /// A chain `kinds[0] -> kinds[1] -> ... -> kinds[n-1]`, each node reading only the previous
    /// one; the root is the last. Each pattern node is named after its kind (`Conv2d`), with
    /// `_1`, `_2` ... appended when a kind repeats.
    pub fn chain(kinds: &[&str]) -> Self {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut current: Option<Pattern> = None;
        for kind in kinds {
            let count = seen.entry(kind).or_insert(0);
            let name = if *count == 0 {
                kind.to_string()
            } else {
                format!("{kind}_{count}")
            };
            *count += 1;
            let mut p = Pattern::node(&name, kind);
            if let Some(prev) = current.take() {
                p = p.with_inputs(vec![prev]);
            }
            current = Some(p);
        }
        current.unwrap_or_else(|| Pattern::any("empty"))
    }

    /// A pattern copying node `id` and, recursively, its producers; graph inputs become wildcards.
    /// Pattern names are the node names.
    pub fn from_node<P: Payload>(graph: &Graph<P>, id: NodeId) -> Result<Self> {
        let node = graph.node(id)?;
        if matches!(node.op(), Op::Input { .. }) {
            return Ok(Pattern::any(node.name()));
        }
        let inputs = node
            .inputs()
            .iter()
            .map(|&i| Pattern::from_node(graph, i))
            .collect::<Result<_>>()?;
        Ok(Pattern::node(node.name(), node.kind()).with_inputs(inputs))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kind matched, or `None` for a wildcard.
    pub fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }

    pub fn inputs(&self) -> Option<&[Pattern]> {
        self.inputs.as_deref()
    }

    /// Tries to match this pattern rooted at `id`.
    pub fn match_at<P: Payload>(&self, graph: &Graph<P>, id: NodeId) -> Option<Match> {
        let mut m = Match {
            root: id,
            nodes: BTreeMap::new(),
            wildcards: BTreeSet::new(),
        };
        self.bind(graph, id, &mut m).then_some(m)
    }

    fn bind<P: Payload>(&self, graph: &Graph<P>, id: NodeId, m: &mut Match) -> bool {
        let Ok(node) = graph.node(id) else {
            return false;
        };
        let Some(kind) = &self.kind else {
            m.nodes.insert(self.name.clone(), id);
            m.wildcards.insert(self.name.clone());
            return true;
        };
        if node.kind() != kind {
            return false;
        }
        // One graph node cannot play two non-wildcard roles in the same match.
        if m.nodes
            .iter()
            .any(|(n, &v)| v == id && !m.wildcards.contains(n))
        {
            return false;
        }
        if let Some(inputs) = &self.inputs {
            if inputs.len() != node.inputs().len() {
                return false;
            }
            for (p, &producer) in inputs.iter().zip(node.inputs()) {
                if !p.bind(graph, producer, m) {
                    return false;
                }
            }
        }
        m.nodes.insert(self.name.clone(), id);
        true
    }
}

/// The nodes a pattern matched, by pattern name.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    root: NodeId,
    nodes: BTreeMap<String, NodeId>,
    wildcards: BTreeSet<String>,
}

impl Match {
    /// The node whose output the replacement takes over.
    pub fn root(&self) -> NodeId {
        self.root
    }

    /// The node matched by the pattern node `name`.
    pub fn get(&self, name: &str) -> Result<NodeId> {
        self.nodes
            .get(name)
            .copied()
            .ok_or_else(|| Error::NoSuchName(name.to_string()))
    }

    /// All matched nodes by pattern name, wildcards included.
    pub fn nodes(&self) -> &BTreeMap<String, NodeId> {
        &self.nodes
    }

    /// The matched nodes that the replacement removes (everything but wildcards).
    pub fn inner(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(n, _)| !self.wildcards.contains(*n))
            .map(|(_, &v)| v)
            .collect()
    }

    /// True when an inner node other than the root is read outside the match or is a graph
    /// output: replacing the match would then drop a value someone else needs.
    pub fn is_leaky<P: Payload>(&self, graph: &Graph<P>) -> bool {
        let inner: BTreeSet<NodeId> = self.inner().into_iter().collect();
        inner.iter().filter(|&&id| id != self.root).any(|&id| {
            graph.is_output(id)
                || graph
                    .users(id)
                    .map_or(true, |users| users.iter().any(|u| !inner.contains(u)))
        })
    }
}

/// Builds the nodes that take a match's place. Returning an empty list skips the match.
pub trait Replacement<P> {
    fn build(&self, graph: &Graph<P>, matched: &Match) -> Result<Vec<NewNode<P>>>;
}

impl<P, F> Replacement<P> for F
where
    F: Fn(&Graph<P>, &Match) -> Result<Vec<NewNode<P>>>,
{
    fn build(&self, graph: &Graph<P>, matched: &Match) -> Result<Vec<NewNode<P>>> {
        self(graph, matched)
    }
}

/// A pattern and what replaces it.
pub struct PatternEngine<R> {
    pattern: Pattern,
    replacement: R,
}

impl<R> PatternEngine<R> {
    pub fn new(pattern: Pattern, replacement: R) -> Self {
        PatternEngine {
            pattern,
            replacement,
        }
    }

    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// Replaces every non-leaky match in the graph and its sub-graphs, visiting nodes in execution
    /// order (nodes created by a replacement are not visited again). Either every replacement is
    /// applied or, on an error, none is. Returns whether anything changed.
    pub fn apply<P: Payload>(&self, graph: &mut Graph<P>) -> Result<bool>
    where
        R: Replacement<P>,
    {
        graph.transaction(|g| self.apply_in(g))
    }

    fn apply_in<P: Payload>(&self, graph: &mut Graph<P>) -> Result<bool>
    where
        R: Replacement<P>,
    {
        let mut changed = false;
        for id in graph.node_ids().to_vec() {
            if graph.node(id).is_err() {
                continue; // erased by an earlier replacement
            }
            if let Ok(sub) = graph.subgraph_mut(id) {
                changed |= self.apply_in(sub)?;
            }
            let Some(m) = self.pattern.match_at(graph, id) else {
                continue;
            };
            if m.is_leaky(graph) {
                continue;
            }
            let new_nodes = self.replacement.build(graph, &m)?;
            if new_nodes.is_empty() {
                continue;
            }
            graph.replace_region(id, &m.inner(), new_nodes)?;
            changed = true;
        }
        Ok(changed)
    }
}
