/// Errors of cells, the executor, checkpoints and training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Graph(#[from] gstick_rewrite::Error),
    #[error("{kind} expects {expected} input(s), got {got}")]
    Arity {
        kind: &'static str,
        expected: String,
        got: usize,
    },
    #[error("in node `{node}` ({kind}): {source}")]
    Node {
        node: String,
        kind: String,
        source: Box<Error>,
    },
    #[error("non-finite values (NaN or Inf) in the output of `{node}` ({kind})")]
    NonFinite { node: String, kind: String },
    #[error("loss is not finite ({loss}) at epoch {epoch}, step {step}")]
    NonFiniteLoss {
        loss: f32,
        epoch: usize,
        step: usize,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("{path} already exists; choose a new output path (inputs are never overwritten)")]
    Exists { path: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fails with [`Error::Arity`] unless `inputs` has exactly `n` tensors.
pub fn expect_inputs(kind: &'static str, inputs: &[candle_core::Tensor], n: usize) -> Result<()> {
    if inputs.len() == n {
        Ok(())
    } else {
        Err(Error::Arity {
            kind,
            expected: n.to_string(),
            got: inputs.len(),
        })
    }
}
