//! The fuzz targets' bodies (`fuzz/bodies/*.rs`, shared with the cargo-fuzz targets through
//! `include!`) replayed on the stable toolchain, so that CI runs them and they cannot rot:
//! - `state` and `tokens`: the inputs kept in `fuzz/regressions/` (a sample of the corpora the
//!   10-minute runs grew, see docs/errors.md; any input that ever crashed a target goes there);
//! - `load`: its seeds (each fixture's config, a NUL byte, one of its safetensors files) and
//!   deterministic mutations of them: truncations and flipped bytes.
//!
//! Each body panics on a broken contract (a panic, a non-finite logit, an id past the
//! vocabulary), which fails the test.

mod load {
    include!("../fuzz/bodies/load.rs");
}
mod state {
    include!("../fuzz/bodies/state.rs");
}
mod tokens {
    include!("../fuzz/bodies/tokens.rs");
}

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `fuzz/regressions/<target>`, sorted; at least one.
fn regressions(target: &str) -> Vec<PathBuf> {
    let dir = root().join("fuzz/regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    for file in regressions(target) {
        let data = std::fs::read(&file).expect("a regression input");
        check(&data);
    }
}

#[test]
fn state_regressions_replay() {
    replay("state", state::check);
}

#[test]
fn tokens_regressions_replay() {
    replay("tokens", tokens::check);
}

#[test]
fn load_seeds_and_their_mutations_replay() {
    let mut inputs = 0;
    let fixtures = root().join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .expect("tests/fixtures")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let config = std::fs::read(dir.join("config.json")).expect("config.json");
        let mut shards: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("a fixture")
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("model"))
            })
            .collect();
        shards.sort();
        for shard in shards {
            let mut seed = config.clone();
            seed.push(0);
            seed.extend(std::fs::read(&shard).expect("a safetensors file"));
            load::check(&seed);
            // Truncations at eight points, and eight single flipped bytes spread over the file
            // (header and data), at positions fixed by the length.
            for i in 1..=8 {
                load::check(&seed[..seed.len() * i / 9]);
                let mut flipped = seed.clone();
                let at = (seed.len() * (2 * i - 1) / 16).min(seed.len() - 1);
                flipped[at] ^= 0xA5;
                load::check(&flipped);
            }
            inputs += 17;
        }
    }
    assert!(inputs > 0, "no fixtures in {}", fixtures.display());
}
