//! `retnet serve` against `retnet generate`: at temperature 0 a completion is the generated
//! text byte for byte, on both backends, whatever else is in the batch.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `retnet serve` on a free port; waits for its "listening on" line.
fn serve(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_retnet"))
        .args(["serve", "--port", "0"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "serve exited");
        if let Some(rest) = line.strip_prefix("listening on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    Server { child, addr }
}

fn generate(backend: &str, prompt: &str, n: usize) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_retnet"))
        .args(["generate", "--backend", backend, "--temperature", "0"])
        .args(["--prompt", prompt, "--max-tokens", &n.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// POSTs a completion; returns its text (streamed responses reassembled).
fn complete(addr: &str, prompt: &str, n: usize, stream: bool) -> String {
    let body =
        json!({"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": stream}).to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{raw}");
    if !stream {
        let v: Value = serde_json::from_str(body).unwrap();
        return v["choices"][0]["text"].as_str().unwrap().to_string();
    }
    // Chunked framing aside, each event is one `data: …` line.
    let mut text = String::new();
    let mut done = false;
    for line in body.lines() {
        if let Some(data) = line.strip_prefix("data: ") {
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            text.push_str(v["choices"][0]["text"].as_str().unwrap());
        }
    }
    assert!(done, "no [DONE] in {body}");
    text
}

fn concurrent_equals_generate(backend: &str, prompts: &[(&str, usize)]) {
    let server = serve(&["--backend", backend, "--max-batch", "4"]);
    let handles: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, &(p, n))| {
            let addr = server.addr.clone();
            let p = p.to_string();
            std::thread::spawn(move || complete(&addr, &p, n, i % 2 == 0))
        })
        .collect();
    for (&(prompt, n), handle) in prompts.iter().zip(handles) {
        assert_eq!(
            handle.join().unwrap(),
            generate(backend, prompt, n),
            "{prompt:?}"
        );
    }
}

#[test]
fn cpu_completions_equal_generate() {
    concurrent_equals_generate(
        "cpu",
        &[("ROMEO:", 30), ("\n", 20), ("To be, or not to be", 25)],
    );
}

#[test]
fn gpu_completions_equal_generate() {
    concurrent_equals_generate("gpu", &[("ROMEO:", 6), ("JULIET:", 4)]);
}
