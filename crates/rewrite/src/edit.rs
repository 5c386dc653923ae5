//! Edits. Each one validates everything first and mutates only when nothing can fail, so an
//! edit that returns an error leaves the graph untouched.

use crate::graph::check_subgraph_arity;
use crate::{Error, Graph, Node, NodeId, Op, Payload, Result};

/// Where [`Graph::insert`] places a new node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    Before(NodeId),
    After(NodeId),
}

/// An argument of a node created by [`Graph::replace`]: an existing node, or an earlier node of
/// the same replacement (by its index in the list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    Node(NodeId),
    New(usize),
}

/// A node to be created by [`Graph::replace`].
#[derive(Clone, Debug)]
pub struct NewNode<P> {
    pub name: String,
    pub op: Op<P>,
    pub inputs: Vec<Arg>,
}

impl<P> NewNode<P> {
    pub fn cell(name: impl Into<String>, cell: P, inputs: Vec<Arg>) -> Self {
        NewNode {
            name: name.into(),
            op: Op::Cell(cell),
            inputs,
        }
    }
}

impl<P: Payload> Graph<P> {
    /// Position before `id`, for [`Graph::insert`].
    pub fn before(&self, id: NodeId) -> Position {
        Position::Before(id)
    }

    /// Position after `id`, for [`Graph::insert`].
    pub fn after(&self, id: NodeId) -> Position {
        Position::After(id)
    }

    fn order_index(&self, pos: Position) -> Result<usize> {
        Ok(match pos {
            Position::Before(id) => self.position_of(id)?,
            Position::After(id) => self.position_of(id)? + 1,
        })
    }

    /// Fails unless every producer sits before order index `at`.
    fn check_precede(&self, producers: &[NodeId], at: usize, user: &str) -> Result<()> {
        for &p in producers {
            if self.position_of(p)? >= at {
                return Err(Error::OrderViolation {
                    producer: self.node(p)?.name.clone(),
                    user: user.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Inserts a node at `pos`; its name is made unique. Its inputs must come before `pos`.
    /// The new node has no users until an edit such as [`Graph::replace_all_uses`] gives it some.
    pub fn insert(
        &mut self,
        pos: Position,
        name: &str,
        op: Op<P>,
        inputs: &[NodeId],
    ) -> Result<NodeId> {
        let at = self.order_index(pos)?;
        self.check_precede(inputs, at, name)?;
        check_subgraph_arity(name, &op, inputs.len())?;
        Ok(self.push_node(name, op, inputs.to_vec(), Some(at)))
    }

    /// Removes a node that nothing reads any more and returns it.
    pub fn erase(&mut self, id: NodeId) -> Result<Node<P>> {
        let node = self.node(id)?;
        let name = node.name.clone();
        if matches!(node.op, Op::Input { .. }) {
            return Err(Error::IsInput(name));
        }
        if self.is_output(id) {
            return Err(Error::IsOutput(name));
        }
        let users = self.users(id)?;
        if !users.is_empty() {
            let users = users
                .iter()
                .map(|&u| self.name_of(u).map(str::to_string))
                .collect::<Result<_>>()?;
            return Err(Error::HasUsers { node: name, users });
        }
        self.order.retain(|&o| o != id);
        self.names.remove(&name);
        self.slots[id.0 as usize]
            .take()
            .ok_or(Error::NoSuchNode(id))
    }

    /// Makes argument `index` of `node` read `src` instead. `src` must come before `node`.
    pub fn set_input(&mut self, node: NodeId, index: usize, src: NodeId) -> Result<()> {
        let n = self.node(node)?;
        let (name, count) = (n.name.clone(), n.inputs.len());
        if index >= count {
            return Err(Error::ArgOutOfRange {
                node: name,
                index,
                count,
            });
        }
        self.check_precede(&[src], self.position_of(node)?, &name)?;
        self.node_mut(node)?.inputs[index] = src;
        Ok(())
    }

    /// Makes every reader of `old` (and every graph output that is `old`) read `new` instead,
    /// except `new` itself (so a node inserted after `old` that reads it can take its place).
    /// Returns the nodes that were rewired.
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) -> Result<Vec<NodeId>> {
        self.node(new)?;
        let users: Vec<NodeId> = self.users(old)?.into_iter().filter(|&u| u != new).collect();
        let new_pos = self.position_of(new)?;
        for &u in &users {
            if self.position_of(u)? <= new_pos {
                return Err(Error::OrderViolation {
                    producer: self.node(new)?.name.clone(),
                    user: self.node(u)?.name.clone(),
                });
            }
        }
        for &u in &users {
            for input in &mut self.node_mut(u)?.inputs {
                if *input == old {
                    *input = new;
                }
            }
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
        Ok(users)
    }

    /// Makes `id` the graph's `index`-th output.
    pub fn set_output(&mut self, index: usize, id: NodeId) -> Result<()> {
        self.node(id)?;
        let count = self.outputs.len();
        let slot = self
            .outputs
            .get_mut(index)
            .ok_or(Error::OutputOutOfRange { index, count })?;
        *slot = id;
        Ok(())
    }

    /// Replaces `old` by one or more new nodes placed where `old` was. New nodes read existing
    /// nodes (which must come before `old`) or earlier new nodes; the last new node takes over
    /// every use of `old`, which is then removed. Returns the new handles in the given order.
    pub fn replace(&mut self, old: NodeId, new_nodes: Vec<NewNode<P>>) -> Result<Vec<NodeId>> {
        self.replace_region(old, &[], new_nodes)
    }

    /// [`Graph::replace`] that also removes `inner`, nodes feeding `old` that become unused
    /// (a matched pattern). Their names are freed before the new nodes are named, so a fused node
    /// can take the name of any node it replaces. Inner nodes still read elsewhere, or by a new
    /// node, stay.
    pub(crate) fn replace_region(
        &mut self,
        old: NodeId,
        inner: &[NodeId],
        new_nodes: Vec<NewNode<P>>,
    ) -> Result<Vec<NodeId>> {
        let old_name = self.node(old)?.name.clone();
        if matches!(self.node(old)?.op, Op::Input { .. }) {
            return Err(Error::IsInput(old_name));
        }
        if new_nodes.is_empty() {
            return Err(Error::EmptyReplacement(old_name));
        }
        let at = self.position_of(old)?;
        for (index, nn) in new_nodes.iter().enumerate() {
            check_subgraph_arity(&nn.name, &nn.op, nn.inputs.len())?;
            for arg in &nn.inputs {
                match *arg {
                    Arg::Node(p) => self.check_precede(&[p], at, &nn.name)?,
                    Arg::New(refers) if refers >= index => {
                        return Err(Error::BadNewNodeRef { index, refers })
                    }
                    Arg::New(_) => {}
                }
            }
        }
        let read_by_new: Vec<NodeId> = new_nodes
            .iter()
            .flat_map(|nn| nn.inputs.iter())
            .filter_map(|a| if let Arg::Node(p) = *a { Some(p) } else { None })
            .collect();
        // Users come after their producers, so deciding from the last inner node backwards sees
        // every user's fate before the producer's.
        let mut by_position = Vec::with_capacity(inner.len());
        for &n in inner {
            by_position.push((self.position_of(n)?, n));
        }
        by_position.sort_unstable_by(|a, b| b.cmp(a));
        let mut removable: Vec<NodeId> = Vec::new();
        for (_, n) in by_position {
            let users = self.users(n)?;
            if n != old
                && !self.is_output(n)
                && !read_by_new.contains(&n)
                && users.iter().all(|u| *u == old || removable.contains(u))
            {
                removable.push(n);
            }
        }
        // Nothing below can fail: validation is complete. Old names are freed first so that a
        // new node can keep one (parameter names stay stable across a rewrite).
        self.names.remove(&old_name);
        for &n in &removable {
            if let Some(node) = self.slots[n.0 as usize].as_ref() {
                self.names.remove(&node.name);
            }
        }
        let mut created = Vec::with_capacity(new_nodes.len());
        for (offset, nn) in new_nodes.into_iter().enumerate() {
            let inputs = nn
                .inputs
                .iter()
                .map(|a| match *a {
                    Arg::Node(p) => p,
                    Arg::New(k) => created[k],
                })
                .collect();
            created.push(self.push_node(&nn.name, nn.op, inputs, Some(at + offset)));
        }
        let last = *created.last().unwrap_or(&old);
        for slot in self.slots.iter_mut().flatten() {
            for input in &mut slot.inputs {
                if *input == old {
                    *input = last;
                }
            }
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = last;
            }
        }
        for gone in removable.into_iter().chain([old]) {
            self.order.retain(|&o| o != gone);
            self.slots[gone.0 as usize] = None;
        }
        Ok(created)
    }
}
