//! Cells, parameters, the executor that runs a [`Network`] forward (and, through candle's
//! autodiff, backward), and the training loop.

pub mod atomic;
pub mod cell;
pub mod cells;
pub mod checkpoint;
pub mod comp_algo;
pub mod error;
pub mod executor;
pub mod fuse;
pub mod init;
pub mod kernels;
pub mod kv_cache;
pub mod loss;
pub mod optim;
pub mod param;
pub mod schedule;
pub mod train;

pub use cell::{Cell, CellCtx, Mode, Network};
pub use comp_algo::{CompAlgo, ConfigError};
pub use error::{Error, Result};
pub use executor::{Executor, HookCall, Profile};
pub use kv_cache::{KvCache, KvRows};
pub use param::{named_params, Param};

/// The seeded random generator used for initialization, dropout and shuffling.
pub type Rng = rand_chacha::ChaCha8Rng;

/// A generator seeded with `seed`; the same seed gives the same stream on every machine.
pub fn rng(seed: u64) -> Rng {
    use rand::SeedableRng;
    Rng::seed_from_u64(seed)
}
