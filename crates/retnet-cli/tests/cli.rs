//! The `retnet logits` contract, run as a process: outputs on success, and on bad input a
//! non-zero exit, one `error:` line on stderr, no panic and no output file.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::retnet_command;
/// max|got − want| / max|want|, +∞ on any non-finite value on either side (a fold with
/// `f64::max` from 0.0 would score all-NaN logits 0).
use retnet_testkit::rel_max_err;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn retnet(args: &[&str]) -> Output {
    retnet_command()
        .args(args)
        .output()
        .expect("the retnet binary runs")
}

fn read_logits(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("output file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    assert_eq!(st.names().len(), 1, "exactly one tensor");
    let view = st.tensor("logits").expect("tensor `logits`");
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

#[test]
fn logits_in_every_mode_match_the_peer() {
    let dir = fixtures().join("fla_basic");
    let tokens_file = dir.join("tokens.json");
    let tokens: Vec<u32> =
        serde_json::from_str(&std::fs::read_to_string(&tokens_file).unwrap()).unwrap();
    let (want_shape, want) = read_logits(&dir.join("logits.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("parallel", None),
        ("recurrent", None),
        ("chunkwise", Some("7")),
        ("chunkwise", None),
    ];
    for (backend, (mode, chunk)) in ["cpu", "gpu"]
        .into_iter()
        .flat_map(|b| cases.iter().map(move |c| (b, *c)))
    {
        let out = tmp.path().join(format!("{backend}-{mode}.safetensors"));
        let mut args = vec![
            "logits",
            "--model",
            dir.to_str().unwrap(),
            "--tokens-file",
            tokens_file.to_str().unwrap(),
            "--backend",
            backend,
            "--mode",
            mode,
            "--out",
            out.to_str().unwrap(),
        ];
        if let Some(c) = chunk {
            args.extend(["--chunk-size", c]);
        }
        let o = retnet(&args);
        assert!(
            o.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (shape, got) = read_logits(&out);
        assert_eq!(shape, want_shape);
        assert_eq!(shape[0], tokens.len());
        // 1e-4 for the CPU reference, 1e-3 for the GPU (f32 accumulation): the issues' bars.
        let tolerance = if backend == "cpu" { 1e-4 } else { 1e-3 };
        let err = rel_max_err(&got, &want);
        assert!(err <= tolerance, "{backend} {mode} {chunk:?}: {err:.2e}");
    }
    // --tokens gives the same as --tokens-file.
    let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
    let out = tmp.path().join("list.safetensors");
    let o = retnet(&[
        "logits",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        &list.join(","),
        "--backend",
        "cpu",
        "--mode",
        "parallel",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        read_logits(&out).1,
        read_logits(&tmp.path().join("cpu-parallel.safetensors")).1
    );
}

/// `--weights int8` and `--weights q4` on both backends, on a fixture whose input widths (48, 33
/// and 80) are not multiples of the 32-value block, so every row ends in a zero-padded block: the
/// GPU and the CPU reference compute with the same decoded blocks (the f32-accumulation bar
/// between them, 1e-4), and the result is the model, within the quantization's own error of
/// the peer (verify's bars, `xtask/src/verify/model.rs`).
#[test]
fn quantized_weights_on_both_backends_agree() {
    let dir = fixtures().join("torchscale_swish_tied");
    let tokens_file = dir.join("tokens.json");
    let (_, peer) = read_logits(&dir.join("logits.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    for (weights, peer_bar) in [("int8", 0.1), ("q4", 1.0)] {
        let mut logits = Vec::new();
        for backend in ["cpu", "gpu"] {
            let out = tmp.path().join(format!("{weights}-{backend}.safetensors"));
            let o = retnet(&[
                "logits",
                "--model",
                dir.to_str().unwrap(),
                "--tokens-file",
                tokens_file.to_str().unwrap(),
                "--backend",
                backend,
                "--mode",
                "recurrent",
                "--weights",
                weights,
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(
                o.status.success(),
                "{weights} {backend}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            logits.push(read_logits(&out).1);
        }
        let between = rel_max_err(&logits[1], &logits[0]);
        let vs_peer = rel_max_err(&logits[0], &peer);
        assert!(between <= 1e-4, "{weights}: gpu vs cpu {between:.2e}");
        assert!(
            vs_peer > 0.0 && vs_peer <= peer_bar,
            "{weights}: vs peer {vs_peer:.2e}"
        );
    }
}

/// Runs `retnet logits` with `tokens` (either `--tokens X` or `--tokens-file X`) and expects a
/// clean failure whose message contains `needle`.
fn expect_clean_failure(model: &Path, token_args: &[&str], extra: &[&str], needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let mut args = vec!["logits", "--model", model.to_str().unwrap()];
    args.extend(token_args);
    args.extend(["--mode", "chunkwise", "--out", out.to_str().unwrap()]);
    if !extra.contains(&"--backend") {
        args.extend(["--backend", "cpu"]);
    }
    args.extend(extra);
    let o = retnet(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let code = o.status.code().expect("exited, not killed");
    assert!((1..=127).contains(&code), "{args:?}: exit code {code}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line expected, got {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: `{needle}` not in {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "{args:?}: files left behind: {left:?}");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let model = fixtures().join("fla_basic");
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let invalid_json = write("invalid.json", "[1, 2,");
    let not_ints = write("floats.json", "[1.5, 2]");
    let empty = write("empty.json", "[]");

    expect_clean_failure(
        &model,
        &["--tokens-file", invalid_json.to_str().unwrap()],
        &[],
        "invalid.json",
    );
    expect_clean_failure(
        &model,
        &["--tokens-file", not_ints.to_str().unwrap()],
        &[],
        "floats.json",
    );
    expect_clean_failure(
        &model,
        &["--tokens-file", empty.to_str().unwrap()],
        &[],
        "empty",
    );
    expect_clean_failure(
        &model,
        &["--tokens-file", "/no/such/tokens.json"],
        &[],
        "/no/such/tokens.json",
    );
    expect_clean_failure(&model, &["--tokens", ""], &[], "empty");
    expect_clean_failure(
        &model,
        &["--tokens", "1,-3"],
        &[],
        "-3 at position 1 is negative",
    );
    expect_clean_failure(&model, &["--tokens", "1,x"], &[], "`x` at position 1");
    expect_clean_failure(
        &model,
        &["--tokens", "1,99999"],
        &[],
        "99999 at position 1 is out of range",
    );
    expect_clean_failure(&model, &["--tokens", "1,99999999999"], &[], "out of range");
    expect_clean_failure(
        &model,
        &["--tokens", "1,2"],
        &["--chunk-size", "0"],
        "chunk size",
    );
    expect_clean_failure(
        &model,
        &["--tokens", "1,99999"],
        &["--backend", "gpu"],
        "out of range",
    );
    expect_clean_failure(
        Path::new("/no/such/model"),
        &["--tokens", "1"],
        &[],
        "/no/such/model",
    );

    // A truncated weights file.
    let broken = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(f), broken.path().join(f)).unwrap();
    }
    let weights = broken.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    expect_clean_failure(broken.path(), &["--tokens", "1"], &[], "truncated");
}

#[test]
fn output_into_a_missing_directory_fails_cleanly() {
    let model = fixtures().join("fla_basic");
    let o = retnet(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        "1,2",
        "--backend",
        "cpu",
        "--mode",
        "recurrent",
        "--out",
        "/no/such/dir/out.safetensors",
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.starts_with("error: /no/such/dir/out.safetensors"),
        "{stderr}"
    );
}

#[test]
fn an_adapter_that_does_not_exist_is_a_clean_error() {
    let model = fixtures().join("fla_basic");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let o = retnet_command()
        .env("RETNET_ADAPTER", "no-such-adapter-anywhere")
        .args([
            "logits",
            "--model",
            model.to_str().unwrap(),
            "--tokens",
            "1,2",
            "--backend",
            "gpu",
            "--mode",
            "recurrent",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{stderr}");
    // Mesa's Vulkan driver may add its own complaint about XDG_RUNTIME_DIR on a headless
    // machine; that line is the driver's, not ours.
    let error_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: ") && !l.contains("XDG_RUNTIME_DIR"))
        .collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert!(
        error_lines[0].contains("no-such-adapter-anywhere"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn devices_lists_the_selected_adapter() {
    let o = retnet(&["devices"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("adapter: ") && out.contains("selected: ") && out.contains("limits: "),
        "{out}"
    );
}

/// A hybrid checkpoint (attention layers) through the CLI on both backends: `retnet info` names
/// the layer kinds and `retnet logits` matches fla's logits.
#[test]
fn hybrid_checkpoints_run_on_both_backends() {
    let dir = fixtures().join("fla_hybrid_window_gqa_bias");
    let info = retnet(&["info", "--model", dir.to_str().unwrap()]);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("layer 0: attention (4 heads over 2 kv heads, head dim 8, window 7"),
        "{text}"
    );
    assert!(text.contains("layer 1: retention"), "{text}");
    let tokens_file = dir.join("tokens.json");
    let (want_shape, want) = read_logits(&dir.join("logits.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    for backend in ["cpu", "gpu"] {
        for mode in ["recurrent", "chunkwise"] {
            let out = tmp.path().join(format!("{backend}-{mode}.safetensors"));
            let o = retnet(&[
                "logits",
                "--model",
                dir.to_str().unwrap(),
                "--tokens-file",
                tokens_file.to_str().unwrap(),
                "--backend",
                backend,
                "--mode",
                mode,
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(
                o.status.success(),
                "{backend} {mode}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let (shape, got) = read_logits(&out);
            assert_eq!(shape, want_shape);
            // The hybrid issue's bars: 1e-5 on the CPU, 1e-4 on the GPU (f32 weights).
            let tolerance = if backend == "cpu" { 1e-5 } else { 1e-4 };
            let err = rel_max_err(&got, &want);
            assert!(err <= tolerance, "{backend} {mode}: {err:.2e}");
        }
    }
}
