//! `retnet`: the command line of the retnet runtime.
//!
//! Every failure prints one line, `error: …`, on stderr and exits non-zero; nothing panics on
//! user input, and no partial output file is left behind.

mod commands;
mod engine;
mod load;
mod output;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use retnet_model::ModelError;

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
    Logits(commands::LogitsArgs),
    /// Generates text, streaming it to stdout (the prompt is not echoed).
    Generate(commands::GenerateArgs),
    /// Measures the model's perplexity on a text file.
    Perplexity(commands::PerplexityArgs),
    /// Describes a checkpoint: family, sizes, parameters, dtypes.
    Info(commands::InfoArgs),
    /// Serves the model over HTTP (OpenAI-compatible completions, continuous batching).
    Serve(serve::ServeArgs),
    /// Lists the GPU adapters, says what `--backend auto` picks, and the features and limits of
    /// the adapter `--backend gpu` picks.
    Devices,
}

/// Where a command computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// A hardware GPU adapter if there is one, else the CPU engine (software rasterizers such
    /// as lavapipe, SwiftShader or WARP count as no GPU).
    Auto,
    /// The GPU path (wgpu), on any adapter, software ones included.
    Gpu,
    /// The CPU: the fast engine for `generate` and `perplexity`, the exact reference for
    /// `logits`.
    Cpu,
}

/// Errors of the command line itself, on top of the model's.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the model layer.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Token ids that are not ids.
    #[error("{0}")]
    BadTokens(String),
    /// An argument with a value out of its range.
    #[error("{0}")]
    BadArgument(String),
    /// A mistake in how the command was called (clap's own are the same class).
    #[error("{0}")]
    Usage(String),
    /// Writing an output failed.
    #[error("{path}: {message}")]
    Output {
        /// The output path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Whoever read stdout closed it (e.g. `| head`): the command ends quietly, with the
    /// status a shell gives a process killed by SIGPIPE.
    #[error("stdout was closed")]
    ClosedPipe,
}

impl CliError {
    /// Exit codes: 2 is clap's (bad usage); 3 bad input; 4 bad model; 5 output; 6 unsupported;
    /// 7 GPU (no adapter, over the adapter's limits, device lost).
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::ClosedPipe => 141,
            CliError::BadTokens(_) | CliError::BadArgument(_) => 3,
            CliError::Model(
                ModelError::EmptyTokens
                | ModelError::TokenOutOfRange { .. }
                | ModelError::ZeroChunkSize
                | ModelError::Tokenizer(_)
                | ModelError::StateFile { .. }
                | ModelError::SequenceTooLong { .. }
                | ModelError::TooLarge(_),
            ) => 3,
            CliError::Model(ModelError::Unsupported { .. }) => 6,
            CliError::Model(ModelError::Gpu(_)) => 7,
            CliError::Model(_) => 4,
            CliError::Output { .. } => 5,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Logits(args) => commands::logits(&args),
        Command::Generate(args) => commands::generate(&args),
        Command::Perplexity(args) => commands::perplexity(&args),
        Command::Info(args) => commands::info(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Devices => commands::devices(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::ClosedPipe) => ExitCode::from(CliError::ClosedPipe.exit_code()),
        Err(e) => {
            note(format_args!("error: {e}"));
            ExitCode::from(e.exit_code())
        }
    }
}

/// A line on stderr. `eprintln!` panics when stderr is a closed pipe; a note that cannot be
/// written is dropped instead.
pub fn note(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
