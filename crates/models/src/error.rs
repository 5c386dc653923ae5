#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nn(#[from] gstick_nn::Error),
    #[error(transparent)]
    Graph(#[from] gstick_rewrite::Error),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("{path}: {message}")]
    Load { path: String, message: String },
    #[error("invalid model configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
