//! Evaluation of compressed models against their originals.

mod embedding;
mod perplexity;

pub use embedding::{cosine, embed, embedding_fidelity, FidelityReport};
pub use perplexity::{
    perplexity, perplexity_layerwise, perplexity_profiled, window_nll, PplReport, SplitLm,
};
