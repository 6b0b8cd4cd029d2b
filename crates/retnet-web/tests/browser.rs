//! End to end in a real browser: builds the WebAssembly package, serves `web/` and the default
//! model on 127.0.0.1, opens the page in headless Chromium (WebGPU on SwiftShader, no GPU
//! needed), lets it generate greedily, and checks that its tokens equal — byte for byte — what
//! the native GPU path produces for the same prompt (the path `retnet generate --temperature 0
//! --weights f16` takes). Then takes a screenshot of the page over the DevTools protocol.
//!
//! Needs `chromium` (or `RETNET_CHROMIUM=/path/to/chrome`), the `wasm32-unknown-unknown` Rust
//! target and the `wasm-bindgen` CLI at the version of the crate in Cargo.lock. Without them the
//! test prints why and passes, unless `RETNET_REQUIRE_BROWSER=1` (CI), where it fails.
//! `RETNET_SCREENSHOT=path.png` also writes the screenshot there (`docs/web-page.png` is made
//! so). `RETNET_WEB_WEIGHTS=f32` runs both sides with f32 weights instead of f16 (which the
//! browser reads packed in u32 where the adapter lacks `shader-f16`, as SwiftShader does).

// The helpers below are part of the test: any failure in them is the test's failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use retnet_model::{CpuModel, Generator, GpuModel, GpuOptions, SamplingParams, WeightPrecision};
use retnet_runtime::Device;
use serde_json::Value;

const PROMPT: &str = "ROMEO:\nWhat light";
/// SwiftShader decodes about 1 token/s on two CPU cores: enough to compare, quick to run.
const TOKENS: usize = 64;
const PAGE_TIMEOUT: Duration = Duration::from_secs(300);
const DEVTOOLS_TIMEOUT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A missing tool: skips the test, or fails it under `RETNET_REQUIRE_BROWSER=1`.
fn missing(what: &str) {
    let required = std::env::var("RETNET_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    assert!(!required, "RETNET_REQUIRE_BROWSER=1 but {what}");
    eprintln!("SKIPPED browser test: {what} (set RETNET_REQUIRE_BROWSER=1 to make this an error)");
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RETNET_CHROMIUM") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|candidate| candidate.is_file())
}

/// The version of `package` in Cargo.lock.
fn locked_version(package: &str) -> String {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
    let name_line = format!("name = \"{package}\"");
    let mut lines = lock.lines().skip_while(|l| *l != name_line).skip(1);
    let version = lines.next().unwrap();
    version["version = \"".len()..version.len() - 1].to_string()
}

/// Builds `retnet-web` for wasm32 and runs `wasm-bindgen --target web` into `out`; `Err` names a
/// missing tool.
fn build_package(out: &Path) -> Result<(), String> {
    let wanted = locked_version("wasm-bindgen");
    let version = Command::new("wasm-bindgen").arg("--version").output();
    match version {
        Ok(v) if String::from_utf8_lossy(&v.stdout).split_whitespace().nth(1) == Some(&wanted) => {}
        Ok(v) => {
            return Err(format!(
                "wasm-bindgen CLI is {:?}, Cargo.lock has {wanted} \
                 (cargo install wasm-bindgen-cli --version {wanted} --locked)",
                String::from_utf8_lossy(&v.stdout).trim()
            ))
        }
        Err(_) => {
            return Err(format!(
                "no wasm-bindgen CLI (cargo install wasm-bindgen-cli --version {wanted} --locked)"
            ))
        }
    }
    let installed = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| {
            Path::new(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib/wasm32-unknown-unknown")
                .is_dir()
        });
    if installed == Some(false) {
        return Err(
            "no wasm32-unknown-unknown target (rustup target add wasm32-unknown-unknown)".into(),
        );
    }
    // A release build, as `cargo xtask web` makes: its own build directory (target/…/release),
    // so it does not wait on the lock this test's own build holds.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root())
        .args(["build", "--locked", "--release", "-p", "retnet-web"])
        .args([
            "--target",
            "wasm32-unknown-unknown",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "building the wasm failed");
    let wasm = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "retnet_web")
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        .expect("cargo reported no retnet_web.wasm");
    let status = Command::new("wasm-bindgen")
        .args(["--target", "web", "--no-typescript", "--out-dir"])
        .arg(out)
        .arg(&wasm)
        .status()
        .unwrap();
    assert!(status.success(), "wasm-bindgen failed");
    Ok(())
}

/// `f16` or `f32`, from `RETNET_WEB_WEIGHTS`.
fn weights() -> String {
    std::env::var("RETNET_WEB_WEIGHTS").unwrap_or_else(|_| "f16".into())
}

/// What `retnet generate --prompt PROMPT --temperature 0 --weights f16|f32 --max-tokens N`
/// computes: greedy decoding with the sampler on the GPU (here lavapipe); `TOKENS + 1` tokens,
/// the last one for the page's resumed session.
fn native_greedy() -> Vec<u32> {
    let model = CpuModel::load(&root().join("models/retnet-shakespeare")).unwrap();
    let device = Arc::new(pollster::block_on(Device::from_env()).unwrap());
    let options = GpuOptions {
        weights: match weights().as_str() {
            "f32" => WeightPrecision::F32,
            "f16" => WeightPrecision::F16,
            other => panic!("RETNET_WEB_WEIGHTS={other}: expected f16 or f32"),
        },
    };
    let gpu = GpuModel::new(device, &model, options).unwrap();
    let mut session = Generator::new(gpu.session().unwrap());
    let prompt: Vec<u32> = PROMPT.bytes().map(u32::from).collect();
    let mut out = Vec::new();
    pollster::block_on(async {
        session.prefill(&prompt).await.unwrap();
        let mut keep = |ids: &[u32]| {
            out.extend_from_slice(ids);
            true
        };
        session
            .generate(&SamplingParams::greedy(), TOKENS + 1, &mut keep)
            .await
            .unwrap();
    });
    out
}

/// Serves GET requests for files under `web/` (with `/web/pkg/` from `pkg`) and
/// `/models/retnet-shakespeare/`, and hands the body of `POST /result` to `results`.
fn serve(listener: TcpListener, pkg: PathBuf, results: mpsc::Sender<String>) {
    for stream in listener.incoming().flatten() {
        let (pkg, results) = (pkg.clone(), results.clone());
        // One thread per connection: the browser opens idle speculative connections.
        std::thread::spawn(move || {
            let _ = handle(stream, &pkg, &results);
        });
    }
}

/// Reads the head of an HTTP message: its first line and its Content-Length (0 if none).
fn read_head(reader: &mut impl BufRead) -> std::io::Result<(String, usize)> {
    let mut first_line = String::new();
    reader.read_line(&mut first_line)?;
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        if header.trim().is_empty() {
            return Ok((first_line, length));
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
}

fn handle(stream: TcpStream, pkg: &Path, results: &mpsc::Sender<String>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let (request_line, length) = read_head(&mut reader)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let mut stream = stream;
    if method == "POST" && path == "/result" {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let _ = results.send(String::from_utf8_lossy(&body).into_owned());
        return respond(&mut stream, "200 OK", "text/plain", b"ok");
    }
    let file = if let Some(rest) = path.strip_prefix("/web/pkg/") {
        Some(pkg.join(rest))
    } else if path.starts_with("/web/") || path.starts_with("/models/retnet-shakespeare/") {
        let relative = path.trim_start_matches('/');
        let relative = if relative.ends_with('/') {
            format!("{relative}index.html")
        } else {
            relative.to_string()
        };
        Some(root().join(relative))
    } else {
        None
    };
    match file.filter(|f| !path.contains("..") && f.is_file()) {
        Some(file) => {
            let content_type = match file.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript",
                Some("wasm") => "application/wasm",
                Some("json") => "application/json",
                _ => "application/octet-stream",
            };
            respond(&mut stream, "200 OK", content_type, &std::fs::read(file)?)
        }
        None => respond(&mut stream, "404 Not Found", "text/plain", b"not found"),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Headless Chromium with WebGPU on SwiftShader (a CPU Vulkan device) and the DevTools port.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Browser {
    fn launch(chromium: &Path, profile: PathBuf, url: &str) -> Browser {
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--enable-unsafe-webgpu",
                "--use-webgpu-adapter=swiftshader",
                "--remote-debugging-port=0",
                "--no-first-run",
                "--window-size=1000,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Browser { child, profile }
    }

    /// The page's DevTools WebSocket URL (Chromium writes its port to `DevToolsActivePort`).
    fn page_socket(&self) -> String {
        let port_file = self.profile.join("DevToolsActivePort");
        let port = std::fs::read_to_string(port_file).unwrap();
        let port = port.lines().next().unwrap();
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        stream.set_read_timeout(Some(DEVTOOLS_TIMEOUT)).unwrap();
        // Chromium builds the WebSocket URL from the Host header.
        let request = format!("GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        (&stream).write_all(request.as_bytes()).unwrap();
        // Chromium keeps the connection open: read exactly Content-Length bytes.
        let mut reader = BufReader::new(stream);
        let (_, length) = read_head(&mut reader).unwrap();
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let targets: Value = serde_json::from_slice(&body).unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .unwrap();
        page["webSocketDebuggerUrl"].as_str().unwrap().to_string()
    }

    /// A PNG of the page as it is now.
    fn screenshot(&self) -> Vec<u8> {
        let (mut socket, _) = tungstenite::connect(self.page_socket()).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream.set_read_timeout(Some(DEVTOOLS_TIMEOUT)).unwrap();
        }
        let command = r#"{"id":1,"method":"Page.captureScreenshot","params":{"format":"png","captureBeyondViewport":true}}"#;
        socket.send(tungstenite::Message::text(command)).unwrap();
        loop {
            let message = socket.read().unwrap();
            let Ok(text) = message.to_text() else {
                continue;
            };
            let reply: Value = serde_json::from_str(text).unwrap();
            if reply["id"] == 1 {
                let data = reply["result"]["data"].as_str().unwrap();
                return base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap();
            }
        }
    }

    /// Chromium's own messages, for a failure report.
    fn stderr(mut self) -> String {
        let _ = self.child.kill();
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        let _ = self.child.wait();
        text.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_page_generates_the_native_greedy_text_in_headless_chromium() {
    let Some(chromium) = find_chromium() else {
        return missing("no chromium on PATH nor at RETNET_CHROMIUM (apt-get install chromium)");
    };
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-test");
    let pkg = scratch.join("pkg");
    let started = Instant::now();
    if let Err(what) = build_package(&pkg) {
        return missing(&what);
    }
    eprintln!(
        "wasm package built in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut expected = native_greedy();
    assert_eq!(expected.len(), TOKENS + 1);
    let expected_next = expected.pop().unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (results, result) = mpsc::channel();
    let served_pkg = pkg.clone();
    std::thread::spawn(move || serve(listener, served_pkg, results));
    let url = format!(
        "http://{address}/web/index.html?autorun=1&greedy=1&weights={}&max={TOKENS}&prompt={}&report=/result",
        weights(),
        percent_encode(PROMPT)
    );
    let started = Instant::now();
    let browser = Browser::launch(&chromium, scratch.join("chromium-profile"), &url);
    let report = match result.recv_timeout(PAGE_TIMEOUT) {
        Ok(report) => report,
        Err(_) => panic!(
            "the page reported nothing within {PAGE_TIMEOUT:?}; chromium said:\n{}",
            browser.stderr()
        ),
    };
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["ok"], true, "the page failed: {}", report["error"]);
    let ids: Vec<u32> = report["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let text = |ids: &[u32]| {
        String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<_>>()).into_owned()
    };
    eprintln!(
        "browser: {} ({:.1} tokens/s decode, {:.0} ms prefill, page done in {:.1} s)",
        report["adapter"].as_str().unwrap_or("?"),
        report["tokensPerSecond"].as_f64().unwrap_or(0.0),
        report["prefillMs"].as_f64().unwrap_or(0.0),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{PROMPT}{}", text(&ids));
    assert_eq!(
        text(&ids),
        text(&expected),
        "the browser's greedy continuation differs from the native one"
    );
    assert_eq!(ids, expected);
    // The page saved its session, resumed it from those bytes and sampled one more token.
    assert!(report["stateBytes"].as_u64().unwrap() > 0);
    assert_eq!(
        report["resumedPosition"].as_u64(),
        Some((PROMPT.len() + TOKENS - 1) as u64),
        "the last token stays pending"
    );
    assert_eq!(
        report["resumedNext"].as_u64(),
        Some(u64::from(expected_next))
    );

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    let shot = scratch.join("web-page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());
    if let Some(path) = std::env::var_os("RETNET_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
}
