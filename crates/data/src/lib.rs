//! Image datasets for training and evaluation: IDX files (Fashion-MNIST), CSV image sets
//! (mnist_5k, digits), normalization and seeded batching. Readers treat files as hostile: every
//! size is checked and a bad file gives an error naming it.

mod csv_images;
mod dataset;
mod error;
mod idx;

pub use csv_images::load_csv_images;
pub use dataset::{Batches, Dataset};
pub use error::{Error, Result};
pub use idx::{load_fashion_mnist, load_idx, Split};

/// Where the asset script puts its files: `$GSTICK_ASSETS`, else `.cache/assets` under the
/// workspace root.
pub fn assets_dir() -> std::path::PathBuf {
    match std::env::var_os("GSTICK_ASSETS") {
        Some(dir) => dir.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/assets"),
    }
}
