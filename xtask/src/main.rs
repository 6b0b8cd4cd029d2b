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

const USAGE: &str = "usage: cargo xtask shaders\n       cargo xtask verify [--quick] [--json FILE]\n       cargo xtask bench [--preset NAME] [--quick] [--micro] [--json FILE]\n       cargo xtask long-context [--tokens N] [--chunkwise-check N] [--model DIR] [--seed S] [--tolerance X] [--no-cpu] [--cpu-tokens N] [--json FILE]\n       cargo xtask web [--dev]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("shaders") if args.len() == 1 => shaders::run(),
        Some("verify") => match verify::Options::parse(&args[1..]) {
            Ok(options) => verify::run(&options),
            Err(message) => {
                eprintln!("{message}\n{USAGE}");
                ExitCode::FAILURE
            }
        },
        Some("bench") => match bench::Options::parse(&args[1..]) {
            Ok(options) => bench::run(&options),
            Err(message) => {
                eprintln!("{message}\n{USAGE}");
                ExitCode::FAILURE
            }
        },
        Some("web") if args.len() == 1 => web::run(false),
        Some("web") if args.get(1..) == Some(&["--dev".to_string()]) => web::run(true),
        Some("long-context") => match long_context::Options::parse(&args[1..]) {
            Ok(options) => long_context::run(&options),
            Err(message) => {
                eprintln!("{message}\n{USAGE}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::FAILURE
        }
    }
}
