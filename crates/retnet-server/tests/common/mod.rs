#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! A server on 127.0.0.1 over the shipped model, a minimal HTTP/1.1 client, and the reference
//! every completion is compared with: a [`Generator`] driven exactly as `retnet generate`
//! drives it (prefill the prompt, then generate).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use retnet_model::{CpuEngine, CpuModel, Engine, Generator, SamplingParams, TextStream, Tokenizer};
use retnet_server::backend::EngineSource;
use retnet_server::engine::EngineOptions;
use serde_json::Value;

pub fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/retnet-shakespeare")
}

pub fn cpu_model() -> CpuModel {
    CpuModel::load(&model_dir()).unwrap()
}

pub fn tokenizer(model: &CpuModel) -> Tokenizer {
    Tokenizer::bytes_for(model.config()).unwrap()
}

pub fn options(max_batch: usize, queue: usize, cache_mb: usize) -> EngineOptions {
    EngineOptions {
        max_batch,
        queue,
        state_cache_bytes: cache_mb << 20,
        max_sessions: 16,
    }
}

/// Serves `source` on a free port of 127.0.0.1 from a runtime thread of its own.
pub fn start<S: EngineSource>(
    source: S,
    tokenizer: Tokenizer,
    options: EngineOptions,
) -> SocketAddr {
    let router = retnet_server::router(source, tokenizer, "retnet-shakespeare", options).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// What `retnet generate --backend cpu` prints for this prompt and these parameters.
pub fn reference(model: &CpuModel, prompt: &str, params: &SamplingParams, count: usize) -> String {
    reference_on(
        CpuEngine::new(model),
        &tokenizer(model),
        prompt,
        params,
        count,
    )
}

/// The same on any engine.
pub fn reference_on<E: Engine>(
    engine: E,
    tokenizer: &Tokenizer,
    prompt: &str,
    params: &SamplingParams,
    count: usize,
) -> String {
    let mut generator = Generator::new(engine);
    pollster::block_on(generator.prefill(&tokenizer.encode(prompt).unwrap())).unwrap();
    let mut text = TextStream::new();
    let mut bytes = Vec::new();
    pollster::block_on(generator.generate(params, count, &mut |tokens| {
        for &t in tokens {
            bytes.extend(text.push(tokenizer, t).unwrap());
        }
        true
    }))
    .unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A response: status, headers (lowercase names), body (de-chunked).
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.body)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: ").map(str::to_string))
            .collect()
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(600)))
        .unwrap();
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_lowercase(), v.trim().to_string()));
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    Response {
        status,
        headers,
        body,
    }
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Response {
    request(addr, "POST", path, Some(body.to_string().as_bytes()))
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, None)
}

/// The text of a completion response, streamed or not (checks the stream's framing).
pub fn completion_text(response: &Response) -> String {
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let streamed = response
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"));
    if !streamed {
        let json = response.json();
        return json["choices"][0]["text"].as_str().unwrap().to_string();
    }
    let events = response.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap());
    }
    text
}

/// One metric's value from `/metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = String::from_utf8(get(addr, "/metrics").body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("retnet_{name} ")))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
        .parse()
        .unwrap()
}

/// Waits (up to a minute) until `condition` holds.
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}
