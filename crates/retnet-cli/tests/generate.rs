//! `retnet generate`, `perplexity` and `info` as processes.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::retnet_command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// A random-weight fixture with a 256-entry vocabulary, so the byte tokenizer applies.
fn byte_model() -> PathBuf {
    fixture("torchscale_24heads_syncdoth")
}

fn retnet(args: &[&str]) -> Output {
    retnet_command()
        .args(args)
        .output()
        .expect("the retnet binary runs")
}

fn generate(extra: &[&str]) -> Vec<u8> {
    generate_on("cpu", extra)
}

fn generate_on(backend: &str, extra: &[&str]) -> Vec<u8> {
    let model = byte_model();
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--backend",
        backend,
    ];
    args.extend(extra);
    let o = retnet(&args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("tok/s"), "{stderr}");
    o.stdout
}

#[test]
fn greedy_resume_equals_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.safetensors");
    let state = state.to_str().unwrap();
    let greedy = ["--temperature", "0", "--prompt", "To be or not"];
    let whole = generate(&[&greedy[..], &["--max-tokens", "40"]].concat());
    let first = generate(&[&greedy[..], &["--max-tokens", "20", "--save-state", state]].concat());
    let second = generate(&[
        "--temperature",
        "0",
        "--max-tokens",
        "20",
        "--load-state",
        state,
    ]);
    assert_eq!(whole.len(), 40);
    assert_eq!([first, second].concat(), whole);
}

#[test]
fn sampling_is_reproducible_with_a_seed_and_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s.safetensors");
    let state = state.to_str().unwrap();
    let sampled = [
        "--temperature",
        "1.0",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--repeat-penalty",
        "1.2",
    ];
    let a = generate(&[&sampled[..], &["--seed", "7", "--max-tokens", "30"]].concat());
    let b = generate(&[&sampled[..], &["--seed", "7", "--max-tokens", "30"]].concat());
    assert_eq!(a, b);
    let c = generate(&[&sampled[..], &["--seed", "8", "--max-tokens", "30"]].concat());
    assert_ne!(a, c, "another seed gives other text");
    let first = generate(
        &[
            &sampled[..],
            &["--seed", "7", "--max-tokens", "12", "--save-state", state],
        ]
        .concat(),
    );
    let second = generate(
        &[
            &sampled[..],
            &["--seed", "7", "--max-tokens", "18", "--load-state", state],
        ]
        .concat(),
    );
    assert_eq!([first, second].concat(), a);
}

/// A copy of the byte model with one knob changed: the same tokenizer (so the refusal cannot
/// come from it), another model.
fn byte_model_with_other_eps() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(byte_model()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    let config = tmp.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["layernorm_eps"] = serde_json::json!(1e-3);
    std::fs::write(&config, json.to_string()).unwrap();
    tmp
}

#[test]
fn a_state_from_another_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s.safetensors");
    generate(&[
        "--temperature",
        "0",
        "--max-tokens",
        "2",
        "--save-state",
        state.to_str().unwrap(),
    ]);
    let other = byte_model_with_other_eps();
    for backend in ["cpu", "gpu"] {
        let o = retnet(&[
            "generate",
            "--model",
            other.path().to_str().unwrap(),
            "--backend",
            backend,
            "--max-tokens",
            "2",
            "--load-state",
            state.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        // docs/errors.md C18 (and L33): exit code 3, one line, the state check's own words.
        assert_eq!(o.status.code(), Some(3), "{backend}: {stderr}");
        assert!(o.stdout.is_empty(), "{backend}: generated text anyway");
        // (stderr also holds the `seed:` and `engine:` lines, and Mesa's XDG_RUNTIME_DIR note.)
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("error") && !l.contains("XDG_RUNTIME_DIR"))
            .collect();
        assert_eq!(errors.len(), 1, "{backend}: {stderr}");
        assert!(
            errors[0].starts_with("error: ")
                && errors[0].contains("this state belongs to another model"),
            "{backend}: {stderr}"
        );
    }
}

#[test]
fn bad_sampling_arguments_are_refused() {
    let model = byte_model();
    for (flag, value, needle) in [
        ("--top-p", "0", "top-p"),
        ("--temperature", "-1", "temperature"),
        ("--repeat-penalty", "0", "repeat penalty"),
    ] {
        let o = retnet(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--backend",
            "cpu",
            flag,
            value,
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{flag}: {stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
}

#[test]
fn perplexity_prints_its_contract_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "Now is the winter of our discontent").unwrap();
    let model = byte_model();
    let o = retnet(&[
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--text-file",
        text.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let n = lines.len();
    let nats: f64 = lines[n - 2]
        .strip_prefix("nats/token: ")
        .unwrap()
        .parse()
        .unwrap();
    let ppl: f64 = lines[n - 1]
        .strip_prefix("perplexity: ")
        .unwrap()
        .parse()
        .unwrap();
    assert!((nats.exp() - ppl).abs() < 1e-3 * ppl);
    // A random-weight model is near-uniform over 256 bytes: about ln 256 = 5.55 nats.
    assert!(nats > 3.0 && nats < 9.0, "{nats}");
}

#[test]
fn info_describes_a_checkpoint() {
    let o = retnet(&[
        "info",
        "--model",
        fixture("fla_gqa_tied_bf16_sharded").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    for needle in [
        "family: Fla",
        "key/value heads 2",
        "BF16",
        "parameters: ",
        "tied head: true",
    ] {
        assert!(out.contains(needle), "{needle} not in {out}");
    }
}

#[test]
fn the_gpu_generates_what_the_cpu_generates_and_states_move_between_them() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.safetensors");
    let state = state.to_str().unwrap();
    let greedy = ["--temperature", "0", "--prompt", "Friends, Romans"];
    let cpu = generate_on("cpu", &[&greedy[..], &["--max-tokens", "30"]].concat());
    let gpu = generate_on("gpu", &[&greedy[..], &["--max-tokens", "30"]].concat());
    assert_eq!(
        gpu, cpu,
        "greedy text on the GPU equals the CPU reference's"
    );
    let first = generate_on(
        "gpu",
        &[&greedy[..], &["--max-tokens", "10", "--save-state", state]].concat(),
    );
    let second = generate_on(
        "cpu",
        &[
            "--temperature",
            "0",
            "--max-tokens",
            "20",
            "--load-state",
            state,
        ],
    );
    assert_eq!(
        [first, second].concat(),
        cpu,
        "a GPU state resumes on the CPU"
    );
}

#[test]
fn perplexity_agrees_across_backends() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("t.txt");
    std::fs::write(
        &text,
        "O Romeo, Romeo, wherefore art thou Romeo? ".repeat(20),
    )
    .unwrap();
    let model = byte_model();
    let nats = |backend: &str| -> f64 {
        let o = retnet(&[
            "perplexity",
            "--model",
            model.to_str().unwrap(),
            "--text-file",
            text.to_str().unwrap(),
            "--backend",
            backend,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(o.stdout).unwrap();
        out.lines()
            .find_map(|l| l.strip_prefix("nats/token: "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (cpu, gpu) = (nats("cpu"), nats("gpu"));
    assert!((cpu - gpu).abs() < 1e-4 * cpu, "cpu {cpu} gpu {gpu}");
}

#[test]
fn gpu_sampling_is_seeded_resumable_and_agrees_with_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s.safetensors");
    let state = state.to_str().unwrap();
    let sampled = [
        "--temperature",
        "0.9",
        "--top-k",
        "30",
        "--top-p",
        "0.95",
        "--repeat-penalty",
        "1.3",
        "--seed",
        "11",
    ];
    let a = generate_on("gpu", &[&sampled[..], &["--max-tokens", "40"]].concat());
    let b = generate_on("gpu", &[&sampled[..], &["--max-tokens", "40"]].concat());
    assert_eq!(a, b, "same seed, same text");
    // The GPU sampler implements the CPU's procedure exactly (integer-exact weights): the same
    // seed gives the same text on both backends.
    let cpu = generate_on("cpu", &[&sampled[..], &["--max-tokens", "40"]].concat());
    assert_eq!(a, cpu);
    let first = generate_on(
        "gpu",
        &[&sampled[..], &["--max-tokens", "15", "--save-state", state]].concat(),
    );
    let second = generate_on(
        "gpu",
        &[&sampled[..], &["--max-tokens", "25", "--load-state", state]].concat(),
    );
    assert_eq!([first, second].concat(), a, "resumed on the GPU");
}
