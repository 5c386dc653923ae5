//! The built-in cells. Each file holds one family.

mod activation;
mod arith;
mod attention;
mod batch_norm;
mod conv2d;
mod dropout;
mod embedding;
mod linear;
mod norm;
mod pool;
mod pooling;
mod rope;
mod shape;

pub use activation::{Activation, ActivationKind};
pub use arith::{Add, Mul};
pub use attention::{install_kv_quant, KvRange, SelfAttention};
pub use batch_norm::BatchNorm2d;
pub use conv2d::{Conv2d, Conv2dConfig};
pub use dropout::Dropout;
pub use embedding::{AddEmbedding, Embedding};
pub use linear::Linear;
pub use norm::{LayerNorm, RmsNorm};
pub use pool::{GlobalAvgPool, Pool2d, PoolKind};
pub use pooling::{L2Normalize, MeanTokens};
pub use rope::{Rope, RopeScaling};
pub use shape::{Concat, Flatten, Reshape};
