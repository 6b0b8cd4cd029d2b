//! Project tasks:
//! - `cargo xtask shaders`: every WGSL kernel variant validated with naga and translated to
//!   SPIR-V, MSL, HLSL and back to WGSL, for each feature set;
//! - `cargo xtask verify [--quick] [--json FILE]`: every GPU kernel (and, later, the whole model)
//!   against an f64 CPU computation over a matrix of shapes;
//! - `cargo xtask bench [--preset NAME] [--quick] [--json FILE]`: decode, prefill, time to first
//!   token, memory and roofline fraction of the whole model with random f16 weights; `--micro`:
//!   the kernels alone (peak probes, GEMM and matvec sweeps, retention kernels);
//! - `cargo xtask web [--dev]`: the WebAssembly build of `retnet-web` and its JavaScript glue in
//!   `web/pkg/`, for the page in `web/`;
//! - `cargo xtask long-context [--tokens N] [--chunkwise-check N] …`: a long recurrent run on the
//!   GPU against the CPU reference and a float64 reference, or chunkwise prefill against
//!   token-by-token decode.

mod bench;
mod coop_check;
mod long_context;
mod micro;
mod shaders;
mod verify;
mod web;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The project's own tasks: `cargo xtask <task>`.
#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Validate every shader variant with naga and translate it to SPIR-V, MSL, HLSL and WGSL.
    Shaders,
    /// Every GPU kernel and the whole model against f64 and CPU references.
    Verify(verify::Options),
    /// Decode, prefill, time to first token and memory of the whole model; `--micro`: kernels.
    Bench(bench::Options),
    /// The WebAssembly build of retnet-web and its JavaScript glue in web/pkg.
    Web {
        /// A debug build.
        #[arg(long)]
        dev: bool,
    },
    /// A long recurrent run against f64, or chunkwise prefill against decode.
    LongContext(long_context::Options),
}

fn main() -> ExitCode {
    match Cli::parse().task {
        Task::Shaders => shaders::run(),
        Task::Verify(options) => verify::run(&options),
        Task::Bench(options) => bench::run(&options),
        Task::Web { dev } => web::run(dev),
        Task::LongContext(options) => long_context::run(&options),
    }
}
