//! The crate's one error type.
//!
//! Policy: every error that comes from a file names the file; every error about a tensor names the
//! tensor, and where shapes are involved, the expected and the found shape. Bad input never panics.

use std::path::PathBuf;

/// Errors of the models crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not a valid safetensors file (truncated, corrupt header, offsets that do not
    /// match the sizes or the file length, ...).
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },

    /// The file is not a valid GGUF file (truncated, corrupt header, ranges outside the file).
    #[error("{path}: not a valid GGUF file: {reason}")]
    Gguf { path: PathBuf, reason: String },

    /// A tensor the model needs is in none of the files.
    #[error("tensor `{name}` is missing from {files}")]
    MissingTensor { name: String, files: String },

    /// A tensor has another shape than the configuration asks for.
    #[error("tensor `{name}` in {path}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor is stored in a dtype we cannot read.
    #[error("tensor `{name}` in {path}: unsupported dtype {dtype}")]
    UnsupportedDtype {
        name: String,
        path: PathBuf,
        dtype: String,
    },

    /// A layer is quantized in a format Veetance does not read (ComfyUI's nvfp4, mxfp8, int8, ...).
    #[error(
        "layer `{layer}` in {path} is quantized as `{format}`, which Veetance cannot read yet \
         (it reads float8_e4m3fn with per-tensor or per-row scales, bf16/f16/f32 and GGUF); \
         use an fp8, bf16 or GGUF copy of this model"
    )]
    UnsupportedQuantization {
        layer: String,
        path: PathBuf,
        format: String,
    },

    /// The files hold the weights of another model than the one asked for.
    #[error("{path}: expected {expected}, but this looks like {found}")]
    WrongModel {
        path: PathBuf,
        expected: String,
        found: String,
    },

    /// A `config.json` that cannot be read as the expected configuration.
    #[error("{path}: invalid config: {reason}")]
    Config { path: PathBuf, reason: String },

    /// The tokenizer file is missing or unusable.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    /// A caller passed arguments the model cannot work with (sizes, dtypes, devices).
    /// A LoRA file that cannot be applied; `reason` names the tensor.
    #[error("LoRA {path}: {reason}")]
    Lora { path: PathBuf, reason: String },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The caller's step callback asked the sampler to stop.
    #[error("sampling cancelled after step {after_step}")]
    Cancelled { after_step: usize },

    /// An error from candle during computation.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
