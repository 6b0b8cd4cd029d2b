//! `retnet`: the command line of the retnet runtime.
//!
//! Every failure prints one line, `error: …`, on stderr and exits non-zero; nothing panics on
//! user input, and no partial output file is left behind.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use retnet_model::{CpuModel, ModelError, RetentionForm};

#[derive(Parser)]
#[command(
    name = "retnet",
    version,
    about = "RetNet inference on any GPU, with an exact CPU reference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Computes the logits of a token sequence and writes them as safetensors
    /// (one f32 tensor `logits` of shape [T, vocab]).
    Logits(LogitsArgs),
}

#[derive(clap::Args)]
struct LogitsArgs {
    /// Model directory: config.json and model.safetensors (or a sharded index).
    #[arg(long)]
    model: PathBuf,
    /// A JSON file holding an array of token ids.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    tokens_file: Option<PathBuf>,
    /// Token ids separated by commas, e.g. 1,2,3.
    #[arg(long, allow_hyphen_values = true)]
    tokens: Option<String>,
    /// Where to compute.
    #[arg(long, value_enum)]
    backend: Backend,
    /// Which retention form to compute.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Tokens per chunk in chunkwise mode (default: the checkpoint's own chunk size).
    #[arg(long)]
    chunk_size: Option<usize>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Cpu,
    Gpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Parallel,
    Chunkwise,
    Recurrent,
}

/// Errors of the command line itself, on top of the model's.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    BadTokens(String),
    #[error("--backend gpu is not implemented yet; use --backend cpu")]
    GpuNotImplemented,
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },
}

impl CliError {
    /// Exit codes: 2 is clap's (bad usage); 3 bad input; 4 bad model; 5 output; 6 unsupported.
    fn exit_code(&self) -> u8 {
        match self {
            CliError::BadTokens(_) => 3,
            CliError::Model(ModelError::EmptyTokens | ModelError::TokenOutOfRange { .. }) => 3,
            CliError::Model(ModelError::ZeroChunkSize) => 3,
            CliError::Model(ModelError::Unsupported { .. }) => 6,
            CliError::Model(_) => 4,
            CliError::Output { .. } => 5,
            CliError::GpuNotImplemented => 6,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Logits(args) => logits(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn logits(args: &LogitsArgs) -> Result<(), CliError> {
    let tokens = match (&args.tokens, &args.tokens_file) {
        (Some(list), _) => parse_token_list(list)?,
        (None, Some(path)) => read_token_file(path)?,
        (None, None) => return Err(CliError::BadTokens("give --tokens or --tokens-file".into())),
    };
    if let Backend::Gpu = args.backend {
        return Err(CliError::GpuNotImplemented);
    }
    let model = CpuModel::load(&args.model)?;
    let form = match args.mode {
        Mode::Parallel => RetentionForm::Parallel,
        Mode::Recurrent => RetentionForm::Recurrent,
        Mode::Chunkwise => RetentionForm::Chunkwise {
            chunk_size: args.chunk_size.unwrap_or(model.config().default_chunk_size),
        },
    };
    let tokens = to_token_ids(&tokens, model.config().vocab_size)?;
    let logits = model.logits(&tokens, form)?;
    write_logits(&args.out, &logits, tokens.len(), model.config().vocab_size)
}

fn parse_token_list(list: &str) -> Result<Vec<i64>, CliError> {
    if list.trim().is_empty() {
        return Err(CliError::Model(ModelError::EmptyTokens));
    }
    list.split(',')
        .enumerate()
        .map(|(i, s)| {
            s.trim().parse::<i64>().map_err(|_| {
                CliError::BadTokens(format!(
                    "--tokens: `{}` at position {i} is not an integer",
                    s.trim()
                ))
            })
        })
        .collect()
}

fn read_token_file(path: &Path) -> Result<Vec<i64>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str::<Vec<i64>>(&text).map_err(|e| {
        CliError::BadTokens(format!(
            "{}: expected a JSON array of integer token ids: {e}",
            path.display()
        ))
    })
}

/// Checks sign and range before narrowing, so that -1 is reported as -1, not as 4294967295.
fn to_token_ids(tokens: &[i64], vocab_size: usize) -> Result<Vec<u32>, CliError> {
    if tokens.is_empty() {
        return Err(ModelError::EmptyTokens.into());
    }
    tokens
        .iter()
        .enumerate()
        .map(|(position, &token)| {
            if token < 0 {
                return Err(CliError::BadTokens(format!(
                    "token id {token} at position {position} is negative"
                )));
            }
            match u32::try_from(token) {
                Ok(id) if (id as usize) < vocab_size => Ok(id),
                _ => Err(ModelError::TokenOutOfRange {
                    token,
                    position,
                    vocab_size,
                }
                .into()),
            }
        })
        .collect()
}

/// Writes next to the destination, then renames, so a failure never leaves a partial file.
fn write_logits(path: &Path, logits: &[f32], tokens: usize, vocab: usize) -> Result<(), CliError> {
    let output_error = |message: String| CliError::Output {
        path: path.to_path_buf(),
        message,
    };
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![tokens, vocab], &bytes)
            .map_err(|e| output_error(e.to_string()))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| output_error("not a file path".into()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = safetensors::serialize_to_file([("logits", view)], None, &tmp)
        .map_err(|e| output_error(e.to_string()))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| output_error(e.to_string())));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
