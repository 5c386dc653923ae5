//! Evaluation of compressed models against their originals.

mod perplexity;

pub use perplexity::{perplexity, window_nll, PplReport, SplitLm};
