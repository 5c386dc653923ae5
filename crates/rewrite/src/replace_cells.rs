//! Replacing cells across a graph and its sub-graphs: the one recursive walk that algorithms use
//! instead of writing their own. A replaced cell keeps its node's name, inputs and users.

use crate::graph::qualify;
use crate::{Error, Graph, NewNode, NodeId, Op, Payload, Result};

/// A cell as [`Graph::replace_cells`] shows it to the caller's function.
pub struct CellSite<'a, P> {
    /// The qualified name (`model.layers.3.mlp.up_proj`).
    pub qualified: &'a str,
    /// The name inside its own graph (`mlp.up_proj`).
    pub name: &'a str,
    /// 0 for a node of the top graph, 1 inside a sub-graph, and so on.
    pub depth: usize,
    pub cell: &'a P,
}

impl<P: Payload> Graph<P> {
    /// Puts `cell` in place of the cell node `id`, under the same name and reading the same
    /// inputs; its users read the new node. Returns the new handle.
    pub fn replace_cell(&mut self, id: NodeId, cell: P) -> Result<NodeId> {
        let node = self.node(id)?;
        if node.cell().is_none() {
            return Err(Error::NotCell(node.name().to_string()));
        }
        let name = node.name().to_string();
        let inputs = node.inputs().iter().map(|&i| crate::Arg::Node(i)).collect();
        Ok(self.replace(id, vec![NewNode::cell(name, cell, inputs)])?[0])
    }

    /// Puts `cell` in place of the cell with this qualified name (`layer1.0.conv1`), through
    /// sub-graphs. Returns the new handle (inside its own graph).
    pub fn replace_named(&mut self, qualified: &str, cell: P) -> Result<NodeId> {
        let path = self
            .resolve(qualified)
            .ok_or_else(|| Error::NoSuchName(qualified.to_string()))?;
        let (last, outer) = path.split_last().ok_or(Error::NoSuchName(String::new()))?;
        let mut g = self;
        for &id in outer {
            g = g.subgraph_mut(id)?;
        }
        g.replace_cell(*last, cell)
    }

    /// Calls `choose` on every cell of this graph and of its sub-graphs, in execution order (a
    /// sub-graph's cells when its node is reached), and puts each cell it returns in place of
    /// the one it was shown. One transaction: on an error the graph is left as it was. Returns
    /// the qualified names of the replaced cells, in order.
    pub fn replace_cells<E: From<Error>>(
        &mut self,
        mut choose: impl FnMut(&CellSite<P>) -> std::result::Result<Option<P>, E>,
    ) -> std::result::Result<Vec<String>, E> {
        let mut replaced = Vec::new();
        self.transaction(|g| g.replace_cells_in("", 0, &mut choose, &mut replaced))?;
        Ok(replaced)
    }

    fn replace_cells_in<E: From<Error>>(
        &mut self,
        prefix: &str,
        depth: usize,
        choose: &mut impl FnMut(&CellSite<P>) -> std::result::Result<Option<P>, E>,
        replaced: &mut Vec<String>,
    ) -> std::result::Result<(), E> {
        for id in self.node_ids().to_vec() {
            let node = self.node(id)?;
            let qualified = qualify(prefix, node.name());
            let new = match node.op() {
                Op::SubGraph { .. } => {
                    let sub = self.subgraph_mut(id)?;
                    sub.replace_cells_in(&qualified, depth + 1, choose, replaced)?;
                    continue;
                }
                Op::Input { .. } => continue,
                Op::Cell(cell) => choose(&CellSite {
                    qualified: &qualified,
                    name: node.name(),
                    depth,
                    cell,
                })?,
            };
            if let Some(cell) = new {
                self.replace_cell(id, cell)?;
                replaced.push(qualified);
            }
        }
        Ok(())
    }

    /// Calls `edit` on this graph and then on every sub-graph (depth first, in execution
    /// order), each with its qualified prefix (empty for this graph). One transaction.
    pub fn edit_graphs<E: From<Error>>(
        &mut self,
        mut edit: impl FnMut(&str, &mut Graph<P>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        fn visit<P: Payload, E: From<Error>>(
            g: &mut Graph<P>,
            prefix: &str,
            edit: &mut impl FnMut(&str, &mut Graph<P>) -> std::result::Result<(), E>,
        ) -> std::result::Result<(), E> {
            edit(prefix, g)?;
            for id in g.node_ids().to_vec() {
                let Ok(node) = g.node(id) else { continue };
                if let Op::SubGraph { .. } = node.op() {
                    let qualified = qualify(prefix, node.name());
                    visit(g.subgraph_mut(id)?, &qualified, edit)?;
                }
            }
            Ok(())
        }
        self.transaction(|g| visit(g, "", &mut edit))
    }
}
