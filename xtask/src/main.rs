//! Project tasks: `cargo xtask shaders` validates every WGSL kernel variant with naga.

use retnet_kernels::{all_kernels, validate, Features};
use std::process::ExitCode;

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some("shaders") => shaders(),
        _ => {
            eprintln!("usage: cargo xtask shaders");
            ExitCode::FAILURE
        }
    }
}

/// Validates every kernel variant under each feature combination that offers what it needs, and
/// prints a table (variant × feature set). Exits non-zero if any validation fails.
fn shaders() -> ExitCode {
    let combinations = Features::combinations();
    let kernels = all_kernels();
    let name_width = kernels.iter().map(|k| k.name.len()).max().unwrap_or(0);
    let entry_width = kernels
        .iter()
        .map(|k| k.entry_point.len())
        .max()
        .unwrap_or(0);
    print!("{:name_width$}  {:entry_width$}", "kernel", "entry point");
    for features in combinations {
        print!("  {:<14}", features.to_string());
    }
    println!();
    let mut failures = Vec::new();
    let mut checked = 0;
    for kernel in &kernels {
        print!(
            "{:name_width$}  {:entry_width$}",
            kernel.name, kernel.entry_point
        );
        for features in combinations {
            let cell = if !features.contains(kernel.requires) {
                "-".to_string()
            } else {
                checked += 1;
                match validate(kernel, features) {
                    Ok(_) => "ok".to_string(),
                    Err(e) => {
                        failures.push(format!("{} ({features}): {e}", kernel.name));
                        "FAIL".to_string()
                    }
                }
            };
            print!("  {cell:<14}");
        }
        println!();
    }
    println!(
        "\n{} variants, {checked} validations, {} failed ('-': needs a feature the set lacks)",
        kernels.len(),
        failures.len()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for failure in &failures {
            eprintln!("\n{failure}");
        }
        ExitCode::FAILURE
    }
}
