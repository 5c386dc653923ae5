use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::Result;

/// Labelled images held as f32 in NCHW order.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Number of classes: one more than the largest label.
    pub fn classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| m as usize + 1)
    }

    /// x <- (x * scale - mean) / std, for every value.
    pub fn normalize(&mut self, scale: f32, mean: f32, std: f32) {
        for v in &mut self.images {
            *v = (*v * scale - mean) / std;
        }
    }

    /// The first `n` samples (all when fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images[..n * self.image_size()].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..*self
        }
    }

    /// Splits off every `k`-th sample (indices k-1, 2k-1, ...) as a held-out set; the rest is
    /// returned first. Stratifies files that are sorted by label.
    pub fn split_every(&self, k: usize) -> (Dataset, Dataset) {
        let k = k.max(2);
        let size = self.image_size();
        let (mut train, mut test) = (self.empty_like(), self.empty_like());
        for (i, &label) in self.labels.iter().enumerate() {
            let part = if i % k == k - 1 {
                &mut test
            } else {
                &mut train
            };
            part.images
                .extend_from_slice(&self.images[i * size..(i + 1) * size]);
            part.labels.push(label);
        }
        (train, test)
    }

    fn empty_like(&self) -> Dataset {
        Dataset {
            images: Vec::new(),
            labels: Vec::new(),
            ..*self
        }
    }

    /// Batches over the samples in order, or shuffled with a generator seeded from
    /// (`seed`, `epoch`) so every epoch has its own, reproducible order.
    pub fn batches(&self, batch_size: usize, shuffle: Option<(u64, usize)>) -> Batches<'_> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if let Some((seed, epoch)) = shuffle {
            let mixed = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(mixed));
        }
        Batches {
            data: self,
            order,
            batch_size: batch_size.max(1),
            next: 0,
        }
    }

    /// Number of batches of `batch_size` (the last one may be smaller).
    pub fn num_batches(&self, batch_size: usize) -> usize {
        self.len().div_ceil(batch_size.max(1))
    }
}

/// Iterator over (images (B, C, H, W) f32, labels (B) u32) tensors.
pub struct Batches<'a> {
    data: &'a Dataset,
    order: Vec<usize>,
    batch_size: usize,
    next: usize,
}

impl Iterator for Batches<'_> {
    type Item = Result<(Tensor, Tensor)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.batch_size).min(self.order.len());
        let picked = &self.order[self.next..end];
        self.next = end;
        let d = self.data;
        let size = d.image_size();
        let mut images = Vec::with_capacity(picked.len() * size);
        let mut labels = Vec::with_capacity(picked.len());
        for &i in picked {
            images.extend_from_slice(&d.images[i * size..(i + 1) * size]);
            labels.push(d.labels[i]);
        }
        let n = picked.len();
        let make = || -> Result<(Tensor, Tensor)> {
            Ok((
                Tensor::from_vec(images, (n, d.channels, d.height, d.width), &Device::Cpu)?,
                Tensor::from_vec(labels, n, &Device::Cpu)?,
            ))
        };
        Some(make())
    }
}
