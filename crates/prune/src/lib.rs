//! Structured pruning: which layers must keep equal channel counts (`channels`), and removing
//! channels from all of them at once so that the network is physically smaller (`physical`).
//! The algorithms that choose the channels (SCOP, UniPruning) build on these two.

pub mod channels;
pub mod physical;

pub use channels::{analyze, ChannelGroup, Member, Role};
pub use physical::{mask_channels, prune_channels};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{layer}: {message}")]
    Layer { layer: String, message: String },
    #[error("channel group {group}: {message}")]
    Group { group: String, message: String },
    #[error(transparent)]
    Graph(#[from] gstick_rewrite::Error),
    #[error(transparent)]
    Nn(#[from] gstick_nn::Error),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
