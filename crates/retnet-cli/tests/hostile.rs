//! Hostile inputs, round two (issue 12), as processes: input files that are not regular files,
//! outputs that are devices or FIFOs or full, stdout closed or full, `--max-tokens` without
//! bound, usage mistakes, state files no backend can continue. Every failure is one `error:`
//! line and an exit status below 128 — except a closed stdout, which ends quietly with 141.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

mod common;
use common::retnet_command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Held while a process is spawned (std's `spawn` returns once the child has exec'd). A child
/// forked while a test holds the read end of a pipe would keep that end open until its exec, so
/// the closed-stdout tests hold this from creating their pipe until they have closed its read
/// end: no other child can keep it open, and the write is sure to find it closed.
static SPAWN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn spawn(command: &mut std::process::Command) -> std::process::Child {
    let _one_at_a_time = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    command.spawn().expect("the retnet binary runs")
}

fn retnet(args: &[&str]) -> Output {
    let mut command = retnet_command();
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn(&mut command).wait_with_output().unwrap()
}

/// The message of row `id` of docs/errors.md ([`CLI_ROWS`]).
fn row(id: &str) -> &'static str {
    CLI_ROWS
        .iter()
        .find(|(i, _, _)| *i == id)
        .map(|(_, m, _)| *m)
        .unwrap()
}

/// Checks the failure contract and returns stderr.
fn fails_with(o: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Notes (`engine: …`, `seed: …`) may come first; the error is the one last line.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: ") && !l.contains("XDG_RUNTIME_DIR"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().last(),
        errors.first().copied(),
        "{stderr}"
    );
    errors[0].to_string()
}

fn mkfifo(path: &Path) {
    let status = spawn(std::process::Command::new("mkfifo").arg(path))
        .wait()
        .expect("mkfifo runs");
    assert!(status.success());
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

fn logits_args<'a>(model: &'a str, tokens_file: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "logits",
        "--model",
        model,
        "--tokens-file",
        tokens_file,
        "--backend",
        "cpu",
        "--mode",
        "recurrent",
        "--out",
        out,
    ]
}

#[test]
fn input_files_that_are_not_regular_files_are_refused_at_once() {
    let model = fixture("fla_basic");
    let model = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let out = out.to_str().unwrap();
    // /dev/zero never ends; a FIFO nobody writes would block the read forever.
    let o = retnet(&logits_args(model, "/dev/zero", out));
    assert_eq!(fails_with(&o, 4), row("C19"));
    let fifo = tmp.path().join("tokens.fifo");
    mkfifo(&fifo);
    let o = retnet(&logits_args(model, fifo.to_str().unwrap(), out));
    assert!(fails_with(&o, 4).ends_with("tokens.fifo: not a regular file (a FIFO); give a file"));
    let o = retnet(&["perplexity", "--text-file", "/dev/zero", "--backend", "cpu"]);
    fails_with(&o, 4);
    // A model directory whose config.json is a FIFO.
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("config.json"));
    let o = retnet(&["info", "--model", dir.path().to_str().unwrap()]);
    assert!(fails_with(&o, 4).contains("config.json: not a regular file (a FIFO)"));
    assert!(!Path::new(out).exists());
}

#[test]
fn outputs_to_devices_and_fifos_are_written_in_place_never_replaced() {
    let model = fixture("fla_basic");
    let model = model.to_str().unwrap();
    let tokens = fixture("fla_basic").join("tokens.json");
    let tokens = tokens.to_str().unwrap();
    // The devices are reached through links in a temporary directory: a binary that renamed a
    // file over its output (the bug this guards against) replaces the link, never the device
    // (as root, renaming over /dev/full itself replaced it).
    let links = tempfile::tempdir().unwrap();
    let (full, null) = (links.path().join("full"), links.path().join("null"));
    std::os::unix::fs::symlink("/dev/full", &full).unwrap();
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    // /dev/full: the write fails, and says so.
    let o = retnet(&logits_args(model, tokens, full.to_str().unwrap()));
    let message = fails_with(&o, 5);
    assert_eq!(
        message,
        row("C21").replace("<path>", full.to_str().unwrap())
    );
    // /dev/null takes the output; the link still leads to the device.
    let o = retnet(&logits_args(model, tokens, null.to_str().unwrap()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for link in [&full, &null] {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::metadata(link)
            .unwrap()
            .file_type()
            .is_char_device());
    }
    // A FIFO with a reader gets the bytes; it is still a FIFO afterwards.
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("out.fifo");
    mkfifo(&fifo);
    // The reader opens the FIFO (without blocking) before the command starts: a FIFO nobody
    // reads is refused.
    let reader = {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                match file.read(&mut buf) {
                    // No writer yet (nothing read), or the writer is done.
                    Ok(0) if bytes.is_empty() => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    Ok(0) => return bytes,
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    let o = retnet(&logits_args(model, tokens, fifo.to_str().unwrap()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = reader.join().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors through the FIFO");
    assert!(st.tensor("logits").is_ok());
    assert!(is_fifo(&fifo));
    // A FIFO nobody reads: an error at once, not a hang.
    let lonely = tmp.path().join("lonely.fifo");
    mkfifo(&lonely);
    let o = retnet(&logits_args(model, tokens, lonely.to_str().unwrap()));
    assert!(fails_with(&o, 5).ends_with("lonely.fifo: a FIFO that no process reads"));
    assert!(is_fifo(&lonely));
    // A directory is refused, and left alone.
    let o = retnet(&logits_args(model, tokens, tmp.path().to_str().unwrap()));
    assert!(fails_with(&o, 5).ends_with("not a regular file (a directory); give a file path"));
    // No temporary file is left behind by any of these.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn save_state_to_a_full_device_fails() {
    // Through a link, as above, so that a regression cannot replace /dev/full.
    let links = tempfile::tempdir().unwrap();
    let full = links.path().join("full");
    std::os::unix::fs::symlink("/dev/full", &full).unwrap();
    let o = retnet(&[
        "generate",
        "--max-tokens",
        "3",
        "--seed",
        "1",
        "--backend",
        "cpu",
        "--save-state",
        full.to_str().unwrap(),
    ]);
    assert_eq!(
        fails_with(&o, 5),
        row("C24").replace("<path>", full.to_str().unwrap())
    );
    let link = std::fs::symlink_metadata(&full).unwrap();
    assert!(
        link.file_type().is_symlink(),
        "the link to /dev/full is still a link"
    );
}

/// A command whose stdout is a pipe whose read end is closed before it starts: it must end
/// quietly with 141 (what a shell reports for SIGPIPE), without a panic or an error line.
fn with_closed_stdout(args: &[&str]) -> Output {
    let child = {
        let _one_at_a_time = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        // The read end is closed before the child starts: its first write must fail.
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two file descriptors this function then owns.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fds[0] is the read end, owned here and closed once.
        unsafe { libc::close(fds[0]) };
        // SAFETY: fds[1] is the write end, owned by the File from here on.
        let write_end = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
        retnet_command()
            .args(args)
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_ends_quietly_with_status_141() {
    let model = fixture("fla_basic");
    let text = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(text.path(), "To be, or not to be, that is the question.").unwrap();
    for args in [
        vec!["info", "--model", model.to_str().unwrap()],
        vec!["devices"],
        vec![
            "perplexity",
            "--text-file",
            text.path().to_str().unwrap(),
            "--backend",
            "cpu",
        ],
        vec![
            "generate",
            "--max-tokens",
            "50",
            "--backend",
            "cpu",
            "--seed",
            "3",
        ],
    ] {
        let o = with_closed_stdout(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(141), "{args:?}: {stderr}");
        let errors = stderr
            .lines()
            .filter(|l| l.starts_with("error: ") && !l.contains("XDG_RUNTIME_DIR"));
        assert!(
            !stderr.contains("panicked") && errors.count() == 0,
            "{stderr}"
        );
    }
}

#[test]
fn a_full_stdout_is_an_error() {
    let model = fixture("fla_basic");
    for args in [
        vec!["info", "--model", model.to_str().unwrap()],
        vec![
            "generate",
            "--max-tokens",
            "20",
            "--backend",
            "cpu",
            "--seed",
            "3",
        ],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut command = retnet_command();
        command.args(&args).stdout(full).stderr(Stdio::piped());
        let o = spawn(&mut command).wait_with_output().unwrap();
        assert_eq!(fails_with(&o, 5), row("C25"), "{args:?}");
    }
}

#[test]
fn max_tokens_near_u64_max_streams_without_allocating() {
    // Before: `Vec::with_capacity(max_tokens)` panicked (capacity overflow). Now it streams
    // until the reader has had enough and closes the pipe.
    let max = u64::MAX.to_string();
    for backend in ["cpu", "gpu"] {
        let mut command = retnet_command();
        command
            .args([
                "generate",
                "--max-tokens",
                &max,
                "--backend",
                backend,
                "--seed",
                "7",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut command);
        let mut first = [0u8; 64];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(141), "{backend}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn usage_mistakes_exit_2() {
    let o = retnet(&["generate", "--prompt", "", "--backend", "cpu"]);
    assert_eq!(fails_with(&o, 2), row("C27"));
    let empty = tempfile::NamedTempFile::new().unwrap();
    let o = retnet(&[
        "perplexity",
        "--text-file",
        empty.path().to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert!(fails_with(&o, 2).ends_with(": the text file is empty"));
    let one = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(one.path(), "x").unwrap();
    let o = retnet(&[
        "perplexity",
        "--text-file",
        one.path().to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert!(
        fails_with(&o, 2).ends_with("perplexity needs at least 2 tokens of text, the file has 1")
    );
}

#[test]
fn non_finite_sampler_flags_are_refused() {
    for (flag, value, message) in [
        (
            "--temperature",
            "NaN",
            "error: temperature must be ≥ 0, got NaN",
        ),
        (
            "--temperature",
            "inf",
            "error: temperature must be ≥ 0, got inf",
        ),
        ("--top-p", "NaN", "error: top-p must be in (0, 1], got NaN"),
        ("--top-p", "1.5", "error: top-p must be in (0, 1], got 1.5"),
        (
            "--repeat-penalty",
            "inf",
            "error: repeat penalty must be > 0, got inf",
        ),
        (
            "--repeat-penalty",
            "-2",
            "error: repeat penalty must be > 0, got -2",
        ),
    ] {
        let o = retnet(&["generate", "--backend", "cpu", flag, value]);
        assert_eq!(fails_with(&o, 3), message, "{flag} {value}");
    }
    let o = retnet(&["generate", "--backend", "cpu", "--top-k", "-1"]);
    assert_eq!(o.status.code(), Some(2), "clap refuses a negative top-k");
}

/// `bytes` (a state file) with one metadata entry replaced.
fn with_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let (_, m) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut metadata = m.metadata().clone().unwrap_or_default();
    metadata.insert(key.into(), value.into());
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let views: Vec<_> = st.tensors();
    safetensors::serialize(views, Some(metadata)).unwrap()
}

#[test]
fn a_state_past_what_a_backend_represents_is_refused_alike_on_cpu_and_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.safetensors");
    let o = retnet(&[
        "generate",
        "--max-tokens",
        "2",
        "--seed",
        "1",
        "--backend",
        "cpu",
        "--save-state",
        state.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&state).unwrap();
    let far = tmp.path().join("far.safetensors");
    std::fs::write(&far, with_metadata(&bytes, "position", "4294967296")).unwrap();
    let mut messages = Vec::new();
    for backend in ["cpu", "gpu"] {
        let o = retnet(&[
            "generate",
            "--max-tokens",
            "2",
            "--backend",
            backend,
            "--load-state",
            far.to_str().unwrap(),
        ]);
        messages.push(fails_with(&o, 3));
    }
    assert_eq!(messages[0], messages[1]);
    assert!(
        messages[0].ends_with(
            "far.safetensors: position 4294967296 is beyond the 4294967295 tokens a session can hold"
        ),
        "{}",
        messages[0]
    );
    // A state saved after the prompt, before any token: resumable without a new prompt.
    let zero = tmp.path().join("zero.safetensors");
    let o = retnet(&[
        "generate",
        "--max-tokens",
        "0",
        "--backend",
        "cpu",
        "--save-state",
        zero.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // On either backend (the GPU restores the saved logits into its sampler's buffer).
    for backend in ["cpu", "gpu"] {
        let o = retnet(&[
            "generate",
            "--max-tokens",
            "5",
            "--temperature",
            "0",
            "--backend",
            backend,
            "--load-state",
            zero.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let fresh = retnet(&[
            "generate",
            "--max-tokens",
            "5",
            "--temperature",
            "0",
            "--backend",
            backend,
        ]);
        assert_eq!(o.stdout, fresh.stdout, "{backend}");
    }
}

/// Rows C19–C31 of docs/errors.md as this file's tests produce them (`<path>` stands for the
/// test's temporary path).
const CLI_ROWS: &[(&str, &str, &str)] = &[
    (
        "C19",
        "error: /dev/zero: not a regular file (a character device); give a file",
        "4",
    ),
    (
        "C20",
        "error: <path>: not a regular file (a FIFO); give a file",
        "4",
    ),
    (
        "C21",
        "error: <path>: I/O error: No space left on device (os error 28)",
        "5",
    ),
    ("C22", "error: <path>: a FIFO that no process reads", "5"),
    (
        "C23",
        "error: <path>: not a regular file (a directory); give a file path",
        "5",
    ),
    (
        "C24",
        "error: <path>: I/O error: No space left on device (os error 28)",
        "5",
    ),
    (
        "C25",
        "error: stdout: I/O error: No space left on device (os error 28)",
        "5",
    ),
    (
        "C27",
        "error: --prompt gives no tokens: give some text, or leave --prompt out",
        "2",
    ),
    ("C28", "error: <path>: the text file is empty", "2"),
    (
        "C29",
        "error: <path>: perplexity needs at least 2 tokens of text, the file has 1",
        "2",
    ),
    ("C30", "error: temperature must be ≥ 0, got NaN", "3"),
    (
        "C32",
        "error: repeat penalty 1e-45 is subnormal; give at least 1.1754944e-38 (f32's smallest normal)",
        "3",
    ),
    (
        "C31",
        "error: <path>: position 4294967296 is beyond the 4294967295 tokens a session can hold",
        "3",
    ),
];

#[test]
fn docs_errors_md_holds_the_cli_rows() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/errors.md"))
            .unwrap();
    for (id, message, code) in CLI_ROWS {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| {id} |")))
            .unwrap_or_else(|| panic!("docs/errors.md has no row {id}"));
        assert!(
            row.contains(&format!(" | `{message}` | {code} | ")),
            "row {id} of docs/errors.md is not `{message}` with exit {code}: {row}"
        );
    }
    let closed = doc.lines().find(|l| l.starts_with("| C26 |")).unwrap();
    assert!(closed.contains(" | 141 | "), "{closed}");
}

/// A copy of fla_basic whose f32 tensor `name` has its bytes edited.
fn with_tensor(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let source = fixture("fla_basic");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    let weights = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut data = st.tensor(name).unwrap().data().to_vec();
    assert_eq!(st.tensor(name).unwrap().dtype(), safetensors::Dtype::F32);
    edit(&mut data);
    let shape = st.tensor(name).unwrap().shape().to_vec();
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != name)
        .collect();
    views.push((
        name.to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &data).unwrap(),
    ));
    let file = safetensors::serialize(views, None).unwrap();
    std::fs::write(&weights, file).unwrap();
    tmp
}

#[test]
fn non_finite_logits_are_an_error_on_both_backends() {
    // Finite weights whose arithmetic overflows: the final norm scales every row by 3e38.
    let tmp = with_tensor("model.norm.weight", |data| {
        let n = data.len() / 4;
        *data = (0..n).flat_map(|_| 3e38f32.to_le_bytes()).collect();
    });
    let model = tmp.path().to_str().unwrap();
    let tokens = fixture("fla_basic").join("tokens.json");
    let out = tmp.path().join("out.safetensors");
    for backend in ["cpu", "gpu"] {
        let mut args = logits_args(model, tokens.to_str().unwrap(), out.to_str().unwrap());
        args[6] = backend;
        let o = retnet(&args);
        let message = fails_with(&o, 4);
        assert!(
            message.starts_with("error: the logits at position ")
                && message.contains("are not finite"),
            "{backend}: {message}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn weights_beyond_f16_range_are_refused_under_weights_f16() {
    let tmp = with_tensor("model.layers.0.attn.q_proj.weight", |data| {
        data[12..16].copy_from_slice(&1.0e5f32.to_le_bytes())
    });
    let source = fixture("fla_basic");
    let model = tmp.path().to_str().unwrap();
    let tokens = source.join("tokens.json");
    let out = tmp.path().join("out.safetensors");
    let mut args = logits_args(model, tokens.to_str().unwrap(), out.to_str().unwrap());
    args[6] = "gpu";
    args.extend(["--weights", "f16"]);
    let o = retnet(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    if stderr.contains("shader-f16") || stderr.contains("half") {
        eprintln!("this adapter has no f16 weights: {stderr}");
        return;
    }
    assert_eq!(
        fails_with(&o, 4),
        "error: tensor `model.layers.0.attn.q_proj.weight` holds 100000 at element 3, beyond \
         f16's range (±65504): load it with f32 weights"
    );
    assert!(!out.exists());
    // f32 weights hold it.
    args.truncate(args.len() - 2);
    let o = retnet(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn extreme_but_valid_sampler_values_sample_alike_on_cpu_and_gpu() {
    // Before: a temperature of 1e20 saturates every weight to 1.0; the CPU then kept all tied
    // weights as candidates where the GPU (deciding on l − max) kept the top k. A penalty of
    // 1e-30 overflows penalised logits to infinity (NaN after − max).
    for extra in [
        ["--temperature", "1e20"],
        ["--temperature", "3e38"],
        ["--temperature", "1e-30"],
        ["--repeat-penalty", "1e-30"],
        ["--repeat-penalty", "1e30"],
    ] {
        let mut outputs = Vec::new();
        for backend in ["cpu", "gpu"] {
            let mut args = vec!["generate", "--max-tokens", "24", "--seed", "5"];
            args.extend(extra);
            args.extend(["--backend", backend]);
            let o = retnet(&args);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            outputs.push(o.stdout);
        }
        assert_eq!(outputs[0], outputs[1], "{extra:?}");
    }
    // A subnormal value (which a GPU may flush to 0) is refused alike.
    for backend in ["cpu", "gpu"] {
        let o = retnet(&[
            "generate",
            "--repeat-penalty",
            "1e-45",
            "--backend",
            backend,
        ]);
        assert_eq!(fails_with(&o, 3), row("C32"));
    }
}

#[test]
fn info_refuses_a_huge_layer_count_instead_of_aborting() {
    // Before: `Vec::with_capacity(num_layers)` aborted `info` on a one-field edit.
    let tmp = with_tensor("model.norm.weight", |_| {});
    let config = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    for layers in [1u64 << 40, 1000] {
        value["num_hidden_layers"] = layers.into();
        std::fs::write(&config, value.to_string()).unwrap();
        let o = retnet(&["info", "--model", tmp.path().to_str().unwrap()]);
        let message = fails_with(&o, 4);
        assert!(message.starts_with("error: invalid config: "), "{message}");
    }
}
