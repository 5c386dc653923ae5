use candle_core::{DType, Tensor, D};

use crate::Result;

/// Mean cross-entropy between logits (N, classes) and integer labels (N).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let labels = labels.to_dtype(DType::U32)?;
    let picked = log_probs.gather(&labels.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// How many predictions (argmax of the logits) equal the labels.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let predicted = logits.argmax(D::Minus1)?.to_dtype(DType::U32)?;
    let hits = predicted
        .eq(&labels.to_dtype(DType::U32)?)?
        .to_dtype(DType::U32)?
        .sum_all()?;
    Ok(hits.to_scalar::<u32>()? as usize)
}
