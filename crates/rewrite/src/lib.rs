//! Rewrite: a network as a graph that algorithms query and edit.
//!
//! A [`Graph`] is an ordered list of single-output nodes. Each node is a graph input, a cell (any
//! payload `P`, for example a convolution with its parameters) or a sub-graph (a ResNet block, a
//! decoder layer) that holds a graph of its own. The order is always a valid execution order, and
//! every edit checks that it stays one. Edits either succeed whole or leave the graph as it was.

mod edit;
mod error;
mod graph;
mod pattern;
mod print;
mod replace_cells;

pub use edit::{Arg, NewNode, Position};
pub use error::{Error, Result};
pub use graph::{Graph, Node, NodeId, Op, Payload};
pub use pattern::{Match, Pattern, PatternEngine, Replacement};
pub use print::{render_svg, DotOptions};
pub use replace_cells::CellSite;

/// Free-form per-node metadata (for example a layer's quantization policy).
pub type AttrValue = serde_json::Value;
