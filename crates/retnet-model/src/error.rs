//! The one error type of `retnet-model`: every failure names the file, tensor, field or token.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
///
/// Each message is one line that names what was wrong, so that a command-line tool can print it
/// as it is.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path that was being read.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The model directory has no file that holds the weights.
    #[error("{dir}: no model.safetensors or model.safetensors.index.json in the model directory")]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
    },
    /// A JSON file (config, shard index) is not valid JSON or has a field of the wrong type.
    #[error("{path}: {message}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// What serde_json said, with line and column.
        message: String,
    },
    /// A config value is invalid or inconsistent with another one.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The checkpoint uses an option that is not plain RetNet.
    #[error("unsupported checkpoint: {option} ({why})")]
    Unsupported {
        /// The config key or tensor that names the option.
        option: String,
        /// Why it is refused.
        why: String,
    },
    /// A safetensors file is truncated, or its header is corrupt.
    #[error("{path}: corrupt safetensors file: {message}")]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// A tensor the config requires is not in any weights file.
    #[error("missing tensor `{name}` in {dir}")]
    MissingTensor {
        /// The tensor name as the checkpoint family spells it.
        name: String,
        /// The model directory.
        dir: PathBuf,
    },
    /// A tensor has another shape than the config implies.
    #[error("tensor `{name}` has shape {found:?}, but the config implies {expected:?}")]
    ShapeMismatch {
        /// The tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype the runtime does not read.
    #[error("tensor `{name}` has dtype {dtype}; supported dtypes are F32, F16 and BF16")]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The dtype in the file.
        dtype: String,
    },
    /// The token list is empty.
    #[error("the token list is empty")]
    EmptyTokens,
    /// A token id is not in `0..vocab_size`.
    #[error("token id {token} at position {position} is out of range: the vocabulary has {vocab_size} entries (ids 0..{vocab_size})")]
    TokenOutOfRange {
        /// The offending id.
        token: i64,
        /// Its position in the input.
        position: usize,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// The tokenizer could not be loaded or could not encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A saved state file is unreadable or belongs to another model.
    #[error("{path}: {message}")]
    StateFile {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The GPU runtime failed (no adapter, a buffer over the adapter's limits, a lost device…).
    #[error(transparent)]
    Gpu(#[from] retnet_runtime::RuntimeError),
    /// A chunk size of zero was asked for.
    #[error("chunk size must be at least 1")]
    ZeroChunkSize,
    /// A weight, or a value the model computed, is NaN or infinite.
    #[error("{0}")]
    NonFinite(String),
    /// Feeding more tokens would take a sequence past [`crate::reference::MAX_POSITION`].
    #[error("the sequence would reach position {end}, beyond the {max} tokens a session can hold", max = crate::reference::MAX_POSITION)]
    SequenceTooLong {
        /// The position the sequence would reach.
        end: u128,
    },
    /// A request whose memory (sized by the input) is over what one call may allocate.
    #[error("{0}")]
    TooLarge(String),
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidConfig(message.into())
    }

    pub(crate) fn unsupported(option: impl Into<String>, why: impl Into<String>) -> Self {
        Self::Unsupported {
            option: option.into(),
            why: why.into(),
        }
    }
}
