//! Model builders and loaders: LeNet-5, the pretrained ccexam MNISTNet, configurable ResNets,
//! Llama-family LLMs from GGUF files, and their tokenizers.

pub mod bert;
mod error;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod hf_export;
pub mod layerwise;
mod lenet;
pub mod llama;
mod mnistnet;
mod resnet;
pub mod synthetic;
pub mod tokenizer;

pub use error::{Error, Result};
pub use lenet::lenet5;
pub use mnistnet::{load_mnistnet, mnistnet, MNIST_MEAN, MNIST_STD};
pub use resnet::{resnet, BlockKind, ResNetConfig, Stem};

use gstick_nn::Cell;

/// Boxes a cell for [`gstick_nn::Network::add_cell`].
pub(crate) fn boxed(cell: impl Cell + 'static) -> Box<dyn Cell> {
    Box::new(cell)
}
