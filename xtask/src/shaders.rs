//! `cargo xtask shaders`: every kernel variant validated with naga under each feature set that
//! offers what it needs, then translated to SPIR-V, MSL and HLSL and written back as WGSL
//! (re-parsed and validated), with the target language versions wgpu would use there.

use retnet_kernels::backends::{translate, Backend, Translation};
use retnet_kernels::{all_kernels, validate, Features};
use std::process::ExitCode;

pub fn run() -> ExitCode {
    let kernels = all_kernels();
    let name_width = kernels.iter().map(|k| k.name.len()).max().unwrap_or(0);
    let entry_width = kernels
        .iter()
        .map(|k| k.entry_point.len())
        .max()
        .unwrap_or(0);
    print!(
        "{:name_width$}  {:entry_width$}  {:18}  {:9}",
        "kernel", "entry point", "features", "naga"
    );
    for backend in Backend::ALL {
        print!("  {:9}", backend.name());
    }
    println!();

    let mut failures = Vec::new();
    let mut exclusions = Vec::new();
    let (mut validations, mut translations) = (0, 0);
    for kernel in &kernels {
        for features in Features::combinations() {
            if !features.contains(kernel.requires) {
                continue;
            }
            validations += 1;
            let valid = match validate(kernel, features) {
                Ok(_) => "ok",
                Err(e) => {
                    failures.push(format!("{} ({features}): {e}", kernel.name));
                    "FAIL"
                }
            };
            print!(
                "{:name_width$}  {:entry_width$}  {:18}  {valid:9}",
                kernel.name,
                kernel.entry_point,
                features.to_string()
            );
            for backend in Backend::ALL {
                let cell = match translate(kernel, features, backend) {
                    Ok(Translation::Written { target, .. }) => {
                        translations += 1;
                        target.to_string()
                    }
                    Ok(Translation::Excluded { target, reason }) => {
                        exclusions.push(format!("{} ({features}) {target}: {reason}", kernel.name));
                        "excluded".to_string()
                    }
                    Err(e) => {
                        failures.push(format!(
                            "{} ({features}) to {}: {e}",
                            kernel.name,
                            backend.name()
                        ));
                        "FAIL".to_string()
                    }
                };
                print!("  {cell:9}");
            }
            println!();
        }
    }
    println!(
        "\n{} variants, {validations} (variant, feature set) validations, {translations} \
         translations, {} exclusions, {} failures",
        kernels.len(),
        exclusions.len(),
        failures.len()
    );
    println!(
        "Each cell names the target written: the oldest that wgpu uses on an adapter with that \
         feature set\n(SPIR-V 1.3 and MSL 2.1 for subgroups; HLSL SM 5.1 core, SM 6.0 subgroups, \
         SM 6.2 f16; SPIR-V 1.6 for cooperative matrices). wgsl: written back\nwith overrides \
         resolved, re-parsed and validated. Override constants at their defaults. The tensor-core \
         matmul\n(cooperative matrices, 16×16 f16) is Vulkan-only: the runtime selects it only where \
         the adapter offers it."
    );
    for exclusion in &exclusions {
        println!("excluded: {exclusion}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for failure in &failures {
            eprintln!("\n{failure}");
        }
        ExitCode::FAILURE
    }
}
