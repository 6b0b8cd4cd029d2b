//! `--backend auto` as a new user meets it: with no Vulkan driver at all, and with only a
//! software adapter (Mesa's lavapipe), `generate` runs on the CPU engine and says why;
//! `--backend gpu` still uses the software adapter; `devices` says what auto would pick.
//!
//! The environment of each child process pins the Vulkan loader: `VK_DRIVER_FILES=/nonexistent`
//! hides every driver (the loader then reports no physical device, and wgpu no adapter);
//! `VK_DRIVER_FILES=<lavapipe's ICD>` leaves only lavapipe, whatever else the machine has.

use std::path::Path;
use std::process::{Command, Output};

/// Mesa's lavapipe ICD (Debian's mesa-vulkan-drivers, which .ci/run installs).
fn lavapipe_icd() -> String {
    let dir = Path::new("/usr/share/vulkan/icd.d");
    let found = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("lvp_icd"))
        })
    });
    found
        .unwrap_or_else(|| {
            panic!(
                "lavapipe's ICD is not in {}: apt-get install mesa-vulkan-drivers",
                dir.display()
            )
        })
        .to_string_lossy()
        .into_owned()
}

fn retnet(drivers: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retnet"))
        .args(args)
        .env("VK_DRIVER_FILES", drivers)
        .env("VK_ICD_FILENAMES", drivers) // older loaders' name for the same
        .env_remove("RETNET_BACKEND")
        .env_remove("RETNET_ADAPTER")
        .output()
        .expect("the retnet binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The README's run command (shorter) with every Vulkan driver hidden: real text, exit 0.
#[test]
fn without_any_driver_generate_runs_on_the_cpu() {
    let o = retnet(
        "/nonexistent",
        &["generate", "--max-tokens", "64", "--seed", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("engine: cpu (auto: no GPU adapter found"),
        "{err}"
    );
    assert_eq!(
        err.matches("engine:").count(),
        1,
        "one line says which engine: {err}"
    );
    assert!(err.contains("(cpu engine)"), "{err}");
    assert_eq!(o.stdout.len(), 64, "64 byte tokens");
    // Real text from the Shakespeare model: mostly letters and spaces.
    let letters = o
        .stdout
        .iter()
        .filter(|b| b.is_ascii_alphabetic() || **b == b' ')
        .count();
    assert!(
        letters * 10 >= o.stdout.len() * 6,
        "{:?}",
        String::from_utf8_lossy(&o.stdout)
    );

    let o = retnet("/nonexistent", &["devices"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("adapter: none"), "{out}");
    assert!(out.contains("auto: cpu (no GPU adapter found"), "{out}");

    // Forcing the GPU without one is still the GPU error (exit 7).
    let o = retnet(
        "/nonexistent",
        &["generate", "--backend", "gpu", "--max-tokens", "4"],
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("error:"), "{}", stderr(&o));
}

/// Only lavapipe: auto prefers the CPU engine; `--backend gpu` uses lavapipe; both say so.
#[test]
fn with_only_a_software_adapter_auto_picks_the_cpu_and_gpu_forces_it() {
    let icd = lavapipe_icd();
    let o = retnet(
        &icd,
        &["generate", "--max-tokens", "16", "--temperature", "0"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("engine: cpu (auto: only software GPU adapters: llvmpipe"),
        "{err}"
    );
    let cpu_text = o.stdout;
    assert_eq!(cpu_text.len(), 16);

    let o = retnet(
        &icd,
        &[
            "generate",
            "--max-tokens",
            "16",
            "--temperature",
            "0",
            "--backend",
            "gpu",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("engine: gpu (--backend gpu: llvmpipe"),
        "{err}"
    );
    assert!(err.contains("(gpu engine)"), "{err}");
    // Greedy text: the same on both engines (margins ≫ their ~1e-6 difference).
    assert_eq!(o.stdout, cpu_text);

    let o = retnet(&icd, &["devices"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("software, driver"), "{out}");
    assert!(
        out.contains("auto: cpu (only software GPU adapters: llvmpipe"),
        "{out}"
    );
    assert!(out.contains("selected: llvmpipe"), "{out}");
}

/// `perplexity` defaults to auto too, and its figure is the reference's.
#[test]
fn perplexity_runs_on_the_cpu_engine_by_default_without_a_gpu() {
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/train/val_sample.txt");
    let o = retnet(
        "/nonexistent",
        &["perplexity", "--text-file", text.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("engine: cpu (auto:"), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let nats: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("nats/token: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    // README: 1.356 nats/byte on this file, in torchscale and in the reference.
    assert!((nats - 1.356).abs() < 5e-4, "{nats}");
}
