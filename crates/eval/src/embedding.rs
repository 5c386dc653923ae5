//! Embedding fidelity: how closely one model's sentence embeddings follow another's.

use candle_core::{Device, Tensor};
use gstick_nn::{Executor, Mode, Network, Result};

/// The embedding of one tokenized sentence (the network maps ids (1, T) to (1, D)).
pub fn embed(exec: &mut Executor, net: &Network, ids: &[u32]) -> Result<Vec<f32>> {
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu)?;
    Ok(exec.forward1(net, &input)?.flatten_all()?.to_vec1()?)
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Mean and minimum cosine between two models' embeddings of the same tokenized sentences.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FidelityReport {
    pub mean_cosine: f64,
    pub min_cosine: f64,
    pub sentences: usize,
}

pub fn embedding_fidelity(
    model: &Network,
    reference: &Network,
    sentences: &[Vec<u32>],
) -> Result<FidelityReport> {
    if sentences.is_empty() {
        return Err(gstick_nn::Error::Config("no sentences to compare".into()));
    }
    let mut exec = Executor::new(Mode::Eval, 0);
    let mut cosines = Vec::with_capacity(sentences.len());
    for ids in sentences {
        cosines.push(cosine(
            &embed(&mut exec, model, ids)?,
            &embed(&mut exec, reference, ids)?,
        ));
    }
    Ok(FidelityReport {
        mean_cosine: cosines.iter().sum::<f64>() / cosines.len() as f64,
        min_cosine: cosines.iter().copied().fold(f64::INFINITY, f64::min),
        sentences: cosines.len(),
    })
}
