use std::any::Any;
use std::fmt;

use candle_core::Tensor;
use gstick_rewrite::{Graph, Payload};

use crate::{KvCache, Param, Result, Rng};

/// Whether cells train (batch statistics, dropout) or evaluate (running statistics, identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// What a cell may use besides its inputs: the mode, the seeded generator (dropout), and during
/// incremental decoding the key/value cache with the qualified name of the running node.
pub struct CellCtx<'a> {
    pub mode: Mode,
    pub rng: &'a mut Rng,
    pub node: &'a str,
    pub cache: Option<&'a mut KvCache>,
}

impl<'a> CellCtx<'a> {
    /// A context without a cache (a cell run on its own).
    pub fn new(mode: Mode, rng: &'a mut Rng) -> Self {
        CellCtx {
            mode,
            rng,
            node: "",
            cache: None,
        }
    }
}

/// Cloning and downcasting for every cell; implemented for any `Cell + Clone`.
pub trait CellBase {
    fn clone_cell(&self) -> Box<dyn Cell>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Cell + Clone + 'static> CellBase for T {
    fn clone_cell(&self) -> Box<dyn Cell> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One computation of a network: a layer with its parameters, or a parameterless op.
/// Cloning a cell shares its parameters' storage.
pub trait Cell: CellBase + Send + Sync + fmt::Debug {
    /// The kind patterns match on ("Conv2d").
    fn kind(&self) -> &'static str;
    fn forward(&self, inputs: &[Tensor], ctx: &mut CellCtx) -> Result<Tensor>;
    /// Parameters by local name ("weight", "bias", "running_mean").
    fn params(&self) -> Vec<(&'static str, &Param)> {
        Vec::new()
    }
    /// Hyper-parameters in one line, for the node table.
    fn summary(&self) -> String {
        String::new()
    }
}

impl Clone for Box<dyn Cell> {
    fn clone(&self) -> Self {
        self.clone_cell()
    }
}

impl Payload for Box<dyn Cell> {
    fn kind(&self) -> &str {
        Cell::kind(self.as_ref())
    }
    fn summary(&self) -> String {
        Cell::summary(self.as_ref())
    }
}

/// A network: a graph of cells.
pub type Network = Graph<Box<dyn Cell>>;

/// Downcasts a cell to its concrete type.
pub fn downcast<T: 'static>(cell: &dyn Cell) -> Option<&T> {
    cell.as_any().downcast_ref::<T>()
}
