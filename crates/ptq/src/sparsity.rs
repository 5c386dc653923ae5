//! Weight sparsity patterns and the two baseline pruners that SparseGPT is measured against.
//! A pattern is either unstructured (a share of a Linear's weights is zero) or N:M
//! semi-structured (in every run of M consecutive input weights of a row, at least N are
//! zero; 2:4 is what sparse tensor cores run). Magnitude pruning drops the smallest |w| of the
//! whole matrix (layer-wise, as in the SparseGPT paper's baseline); Wanda (Sun et al., 2023)
//! drops the smallest |w_ij| · ‖X_j‖₂ within each output row, with ‖X_j‖₂ from the inputs'
//! Hessian diagonal. Neither updates the weights it keeps.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which weights of a Linear may be zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SparsityPattern {
    /// Any weights, `sparsity` of them.
    Unstructured,
    /// At least `n` zeros in every `m` consecutive input weights of a row.
    NOfM { n: usize, m: usize },
}

impl SparsityPattern {
    /// The share of weights this pattern zeroes, given the requested unstructured `sparsity`.
    pub fn share(self, sparsity: f64) -> f64 {
        match self {
            SparsityPattern::Unstructured => sparsity,
            SparsityPattern::NOfM { n, m } => n as f64 / m as f64,
        }
    }
}

impl TryFrom<String> for SparsityPattern {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s == "unstructured" {
            return Ok(SparsityPattern::Unstructured);
        }
        let parsed = s.split_once(':').and_then(|(n, m)| {
            Some((
                n.trim().parse::<usize>().ok()?,
                m.trim().parse::<usize>().ok()?,
            ))
        });
        match parsed {
            Some((n, m)) if n >= 1 && n < m && m <= 64 => Ok(SparsityPattern::NOfM { n, m }),
            _ => Err(format!(
                "`{s}` is not a sparsity pattern: `unstructured` or N:M with 1 <= N < M <= 64 (say 2:4)"
            )),
        }
    }
}

impl From<SparsityPattern> for String {
    fn from(p: SparsityPattern) -> String {
        p.to_string()
    }
}

impl fmt::Display for SparsityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SparsityPattern::Unstructured => f.write_str("unstructured"),
            SparsityPattern::NOfM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// Why a weight cannot take a pattern.
pub fn check_shape(pattern: SparsityPattern, cols: usize) -> Result<(), String> {
    match pattern {
        SparsityPattern::NOfM { n, m } if !cols.is_multiple_of(m) => Err(format!(
            "{n}:{m} sparsity needs an input width that is a multiple of {m} (this Linear has {cols} inputs)"
        )),
        _ => Ok(()),
    }
}

/// The `count` smallest entries of `scores` (ties by index), marked true.
fn smallest(scores: &[f64], count: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut mask = vec![false; scores.len()];
    for &i in order.iter().take(count) {
        mask[i] = true;
    }
    mask
}

/// Marks the weights to prune, by `score` (row-major like the weight, smallest pruned first):
/// over the whole matrix (`per_row` false) or within each row, and for N:M within each run.
pub fn mask_by_score(
    score: &[f64],
    rows: usize,
    cols: usize,
    pattern: SparsityPattern,
    sparsity: f64,
    per_row: bool,
) -> Vec<bool> {
    match pattern {
        SparsityPattern::NOfM { n, m } => {
            let mut mask = vec![false; rows * cols];
            for (run, out) in score.chunks_exact(m).zip(mask.chunks_exact_mut(m)) {
                out.copy_from_slice(&smallest(run, n));
            }
            mask
        }
        SparsityPattern::Unstructured if per_row => score
            .chunks_exact(cols)
            .flat_map(|row| smallest(row, (sparsity * cols as f64).round() as usize))
            .collect(),
        SparsityPattern::Unstructured => {
            smallest(score, (sparsity * (rows * cols) as f64).round() as usize)
        }
    }
}

/// Magnitude pruning: the smallest |w| of the whole matrix (unstructured) or of each run (N:M).
pub fn magnitude_mask(
    w: &[f32],
    rows: usize,
    cols: usize,
    pattern: SparsityPattern,
    sparsity: f64,
) -> Vec<bool> {
    let score: Vec<f64> = w.iter().map(|v| v.abs() as f64).collect();
    mask_by_score(&score, rows, cols, pattern, sparsity, false)
}

/// Wanda: the smallest |w_ij| · ‖X_j‖₂ within each output row (or run, for N:M). `h_diag` is
/// the inputs' Hessian diagonal (2/n Σ x_j², proportional to ‖X_j‖₂²).
pub fn wanda_mask(
    w: &[f32],
    rows: usize,
    cols: usize,
    h_diag: &[f64],
    pattern: SparsityPattern,
    sparsity: f64,
) -> Vec<bool> {
    let norm: Vec<f64> = h_diag.iter().map(|d| d.max(0.0).sqrt()).collect();
    let score: Vec<f64> = w
        .iter()
        .enumerate()
        .map(|(i, v)| v.abs() as f64 * norm[i % cols])
        .collect();
    mask_by_score(&score, rows, cols, pattern, sparsity, true)
}

/// Whether `w` has the pattern: for N:M, at least N zeros in every run; unstructured, at least
/// `sparsity` of all weights zero (rounded as the pruners round it).
pub fn satisfies(w: &[f32], cols: usize, pattern: SparsityPattern, sparsity: f64) -> bool {
    match pattern {
        SparsityPattern::NOfM { n, m } => {
            cols.is_multiple_of(m)
                && w.chunks_exact(m)
                    .all(|run| run.iter().filter(|v| **v == 0.0).count() >= n)
        }
        SparsityPattern::Unstructured => {
            let zeros = w.iter().filter(|v| **v == 0.0).count();
            // Row-wise pruners round per row: allow one weight per row below the total.
            let rows = w.len() / cols.max(1);
            zeros + rows >= (sparsity * w.len() as f64).round() as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_print() {
        let p = SparsityPattern::try_from("2:4".to_string()).unwrap();
        assert_eq!(p, SparsityPattern::NOfM { n: 2, m: 4 });
        assert_eq!(p.to_string(), "2:4");
        assert_eq!(p.share(0.3), 0.5);
        for bad in ["4:2", "0:4", "2:", "dense", "2:4:8"] {
            let e = SparsityPattern::try_from(bad.to_string()).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert!(check_shape(p, 6).unwrap_err().contains("multiple of 4"));
    }

    #[test]
    fn magnitude_prunes_the_smallest_of_the_matrix_or_of_each_run() {
        let w = [0.1f32, -4.0, 3.0, 0.2, 5.0, 6.0, -7.0, 8.0];
        let m = magnitude_mask(&w, 2, 4, SparsityPattern::Unstructured, 0.5);
        assert_eq!(m, [true, true, true, true, false, false, false, false]);
        let m = magnitude_mask(&w, 2, 4, SparsityPattern::NOfM { n: 2, m: 4 }, 0.0);
        assert_eq!(m, [true, false, false, true, true, true, false, false]);
    }

    #[test]
    fn wanda_weighs_each_input_by_its_norm_within_rows() {
        // Column 0 has large inputs: its small weights survive, column 3's large ones do not.
        let w = [1.0f32, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0];
        let h = [100.0, 1.0, 1.0, 0.01];
        let m = wanda_mask(&w, 2, 4, &h, SparsityPattern::Unstructured, 0.5);
        assert_eq!(m, [false, true, false, true, false, true, false, true]);
    }

    #[test]
    fn satisfies_counts_zeros_per_run() {
        let p = SparsityPattern::NOfM { n: 2, m: 4 };
        assert!(satisfies(&[0.0, 1.0, 0.0, 2.0], 4, p, 0.5));
        assert!(!satisfies(&[0.0, 1.0, 3.0, 2.0], 4, p, 0.5));
        assert!(!satisfies(
            &[0.0, 1.0, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0],
            8,
            p,
            0.5
        ));
    }
}
