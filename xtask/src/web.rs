//! `cargo xtask web [--dev]`: builds `retnet-web` for `wasm32-unknown-unknown` and runs
//! `wasm-bindgen --target web` into `web/pkg/` (git-ignored), which `web/index.html` imports.
//! The `wasm-bindgen` CLI must be the version of the `wasm-bindgen` crate in `Cargo.lock`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Runs the task; `dev` builds without optimizations (faster to build, slower to run).
pub fn run(dev: bool) -> ExitCode {
    match build(dev) {
        Ok(out) => {
            println!("web build ready in {}", out.display());
            println!("serve the repository root, e.g. `python3 -m http.server 8000`, and open http://127.0.0.1:8000/web/");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn build(dev: bool) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xtask has no parent directory")?
        .to_path_buf();
    let wanted = locked_version(&root.join("Cargo.lock"), "wasm-bindgen")?;
    let found = run_output(Command::new("wasm-bindgen").arg("--version")).map_err(|e| {
        format!("{e}\ninstall it with: cargo install wasm-bindgen-cli --version {wanted} --locked")
    })?;
    if found.split_whitespace().nth(1) != Some(wanted.as_str()) {
        return Err(format!(
            "`wasm-bindgen --version` says {:?}, Cargo.lock has wasm-bindgen {wanted}; \
             install it with: cargo install wasm-bindgen-cli --version {wanted} --locked",
            found.trim()
        ));
    }

    let target = "wasm32-unknown-unknown";
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&root)
        .args(["build", "--locked", "-p", "retnet-web", "--target", target]);
    if !dev {
        cargo.arg("--release");
    }
    run_status(&mut cargo)?;

    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target_dir = if target_dir.is_relative() {
        root.join(target_dir)
    } else {
        target_dir
    };
    let profile = if dev { "debug" } else { "release" };
    let wasm = target_dir
        .join(target)
        .join(profile)
        .join("retnet_web.wasm");
    let out = root.join("web").join("pkg");
    run_status(
        Command::new("wasm-bindgen")
            .args(["--target", "web", "--no-typescript", "--out-dir"])
            .arg(&out)
            .arg(&wasm),
    )?;
    Ok(out)
}

/// The version of `package` in a Cargo.lock (the first entry of that name).
fn locked_version(lock: &Path, package: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(lock).map_err(|e| format!("reading {}: {e}", lock.display()))?;
    let name_line = format!("name = \"{package}\"");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == name_line {
            let version = lines
                .next()
                .and_then(|l| l.strip_prefix("version = \""))
                .and_then(|l| l.strip_suffix('"'));
            if let Some(version) = version {
                return Ok(version.to_string());
            }
        }
    }
    Err(format!("{} has no package {package}", lock.display()))
}

fn run_output(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{command:?} failed: {}", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run_status(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed: {status}"))
    }
}
