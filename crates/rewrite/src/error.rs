use crate::NodeId;

/// Everything an edit or a query can reject. Each message names the node involved.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    #[error("no node {0} in this graph (erased, or from another graph)")]
    NoSuchNode(NodeId),
    #[error("no node named `{0}`")]
    NoSuchName(String),
    #[error("cannot erase `{node}`: it still has users {users:?}")]
    HasUsers { node: String, users: Vec<String> },
    #[error("cannot erase `{0}`: it is a graph output")]
    IsOutput(String),
    #[error("cannot erase `{0}`: it is a graph input")]
    IsInput(String),
    #[error("`{user}` cannot read `{producer}`: the producer does not come before it (this edit would create a cycle)")]
    OrderViolation { producer: String, user: String },
    #[error("`{node}` has {count} inputs; argument index {index} is out of range")]
    ArgOutOfRange {
        node: String,
        index: usize,
        count: usize,
    },
    #[error("output index {index} is out of range: the graph has {count} outputs")]
    OutputOutOfRange { index: usize, count: usize },
    #[error("`{0}` is not a sub-graph node")]
    NotSubGraph(String),
    #[error("`{0}` is not a cell node")]
    NotCell(String),
    #[error("replacement is empty: at least one new node is needed to take over `{0}`")]
    EmptyReplacement(String),
    #[error("new node #{index} refers to new node #{refers}, which does not come before it")]
    BadNewNodeRef { index: usize, refers: usize },
    #[error("`{node}` is given {given} inputs but its sub-graph takes {expected}")]
    SubGraphArity {
        node: String,
        given: usize,
        expected: usize,
    },
    #[error("replacement failed: {0}")]
    Replacement(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
