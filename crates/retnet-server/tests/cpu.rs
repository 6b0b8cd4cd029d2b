//! The server on the CPU engine, over HTTP on 127.0.0.1: outputs equal solo `generate` runs
//! whatever else is in the batch, the prefix cache is exact, sessions continue exactly, bad
//! requests get OpenAI-style errors, the queue is bounded, dropped clients free their slots.

mod common;

use common::*;
use retnet_model::session::PREFILL_PIECE;
use retnet_model::{FastCpuModel, SamplingParams};
use retnet_server::backend::{CpuSource, FastCpuSource};
use serde_json::json;

const SPEECH: &str =
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n\
And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n";

/// A prompt of exactly `len` bytes (tokens of the byte-level model).
fn long_prompt(len: usize, salt: &str) -> String {
    let mut p = format!("{salt}\n");
    while p.len() < len {
        p.push_str(SPEECH);
    }
    p.truncate(len);
    p
}

#[test]
fn concurrent_completions_equal_solo_runs_and_sampling_is_seeded() {
    let model = cpu_model();
    let addr = start(
        CpuSource(cpu_model()),
        tokenizer(&model),
        options(3, 16, 64),
    );
    // Four requests on three slots: greedy and seeded, streamed and not, one prompt longer than
    // a prefill piece so that its prefill interleaves with the others' decoding.
    let seeded = SamplingParams {
        temperature: 0.9,
        top_k: 20,
        top_p: 0.9,
        repeat_penalty: 1.1,
        seed: 1234,
    };
    let cases = [
        ("ROMEO:".to_string(), SamplingParams::greedy(), 24, true),
        ("JULIET:\nO Romeo".to_string(), seeded, 20, false),
        (
            long_prompt(PREFILL_PIECE + 40, "KING:"),
            SamplingParams::greedy(),
            12,
            true,
        ),
        ("First Citizen:".to_string(), seeded, 16, true),
    ];
    let handles: Vec<_> = cases
        .iter()
        .cloned()
        .map(|(prompt, p, n, stream)| {
            std::thread::spawn(move || {
                let body = json!({
                    "model": "retnet-shakespeare", "prompt": prompt, "max_tokens": n,
                    "temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p,
                    "repeat_penalty": p.repeat_penalty, "seed": p.seed, "stream": stream,
                });
                completion_text(&post(addr, "/v1/completions", &body))
            })
        })
        .collect();
    for ((prompt, params, n, _), handle) in cases.iter().zip(handles) {
        let got = handle.join().unwrap();
        assert_eq!(
            got,
            reference(&model, prompt, params, *n),
            "prompt {prompt:?}"
        );
    }
    assert!(metric(addr, "generated_tokens_total") >= 72.0);
}

/// What `retnet serve --backend cpu` runs: the fast engine, as `retnet generate --backend cpu`
/// does. Concurrent greedy and seeded requests, and a prompt resumed from a cached prefix, give
/// exactly what a lone `Generator` on that engine gives.
#[test]
fn the_fast_cpu_engine_serves_exactly_what_it_generates() {
    let model = cpu_model();
    let fast = FastCpuModel::new(&model).unwrap();
    let addr = start(
        FastCpuSource(fast.clone()),
        tokenizer(&model),
        options(3, 16, 64),
    );
    let tok = tokenizer(&model);
    let seeded = SamplingParams {
        temperature: 0.9,
        top_k: 20,
        top_p: 0.9,
        repeat_penalty: 1.1,
        seed: 99,
    };
    let long = long_prompt(2 * PREFILL_PIECE + 30, "KING:");
    let cases = [
        ("ROMEO:\n".to_string(), SamplingParams::greedy(), 24, true),
        ("JULIET:\nO Romeo".to_string(), seeded, 20, false),
        (long.clone(), SamplingParams::greedy(), 12, true),
        ("First Citizen:".to_string(), seeded, 16, true),
    ];
    let body = |prompt: &str, p: &SamplingParams, n: usize, stream: bool| {
        json!({
            "prompt": prompt, "max_tokens": n, "temperature": p.temperature, "top_k": p.top_k,
            "top_p": p.top_p, "repeat_penalty": p.repeat_penalty, "seed": p.seed,
            "stream": stream,
        })
    };
    let handles: Vec<_> = cases
        .iter()
        .map(|(prompt, p, n, stream)| {
            let body = body(prompt, p, *n, *stream);
            std::thread::spawn(move || completion_text(&post(addr, "/v1/completions", &body)))
        })
        .collect();
    for ((prompt, params, n, _), handle) in cases.iter().zip(handles) {
        let want = reference_on(fast.session(), &tok, prompt, params, *n);
        assert_eq!(handle.join().unwrap(), want, "prompt {prompt:?}");
    }
    // The long prompt's piece states were cached: its extension resumes from them, exactly.
    let extended = format!("{long}\nQUEEN:");
    let r = post(
        addr,
        "/v1/completions",
        &body(&extended, &SamplingParams::greedy(), 8, false),
    );
    assert_eq!(
        r.json()["usage"]["prompt_tokens_details"]["cached_tokens"],
        2 * PREFILL_PIECE
    );
    assert_eq!(
        completion_text(&r),
        reference_on(
            fast.session(),
            &tok,
            &extended,
            &SamplingParams::greedy(),
            8
        )
    );
    assert_eq!(metric(addr, "prefix_cache_hits_total"), 1.0);
}

#[test]
fn a_cached_prefix_gives_the_uncached_output() {
    let model = cpu_model();
    let addr = start(CpuSource(cpu_model()), tokenizer(&model), options(2, 8, 64));
    let first = long_prompt(2 * PREFILL_PIECE + 10, "HAMLET:");
    let greedy = SamplingParams::greedy();
    let body = |prompt: &str| json!({"prompt": prompt, "max_tokens": 10, "temperature": 0});
    let out = post(addr, "/v1/completions", &body(&first)).json();
    assert_eq!(
        out["choices"][0]["text"],
        reference(&model, &first, &greedy, 10)
    );
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(metric(addr, "prefix_cache_entries"), 2.0);

    // Extends the first prompt beyond its cached pieces: resumes after two pieces.
    let extended = format!("{first} and more words that follow it");
    let out = post(addr, "/v1/completions", &body(&extended)).json();
    assert_eq!(
        out["usage"]["prompt_tokens_details"]["cached_tokens"],
        2 * PREFILL_PIECE
    );
    assert_eq!(
        out["choices"][0]["text"],
        reference(&model, &extended, &greedy, 10)
    );
    // Shares only the first piece.
    let mut branch = first.clone();
    branch.replace_range(PREFILL_PIECE + 5..PREFILL_PIECE + 6, "#");
    let out = post(addr, "/v1/completions", &body(&branch)).json();
    assert_eq!(
        out["usage"]["prompt_tokens_details"]["cached_tokens"],
        PREFILL_PIECE
    );
    assert_eq!(
        out["choices"][0]["text"],
        reference(&model, &branch, &greedy, 10)
    );
    // Exactly one piece long: one token short of the piece is resumed from nothing.
    let one_piece = first[..PREFILL_PIECE].to_string();
    let out = post(addr, "/v1/completions", &body(&one_piece)).json();
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        out["choices"][0]["text"],
        reference(&model, &one_piece, &greedy, 10)
    );
    assert_eq!(metric(addr, "prefix_cache_hits_total"), 2.0);
}

#[test]
fn a_session_continues_exactly_and_moves_as_state_bytes() {
    let model = cpu_model();
    let addr = start(CpuSource(cpu_model()), tokenizer(&model), options(2, 8, 0));
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        repeat_penalty: 1.0,
        seed: 7,
    };
    let body = |prompt: &str, session: &str, n: usize| {
        json!({"prompt": prompt, "max_tokens": n, "temperature": 0.8, "top_k": 40,
               "top_p": 0.95, "seed": 7, "session_id": session})
    };
    let whole = reference(&model, "MACBETH:", &params, 30);
    let a = completion_text(&post(addr, "/v1/completions", &body("MACBETH:", "s1", 12)));
    let b = completion_text(&post(addr, "/v1/completions", &body("", "s1", 18)));
    assert_eq!(format!("{a}{b}"), whole);

    // Exported, deleted, imported under another id: the continuation is the same.
    let saved = get(addr, "/v1/sessions/s1");
    assert_eq!(saved.status, 200);
    let fork = completion_text(&post(addr, "/v1/completions", &body("", "s1", 5)));
    assert_eq!(request(addr, "DELETE", "/v1/sessions/s1", None).status, 200);
    assert_eq!(get(addr, "/v1/sessions/s1").status, 404);
    let put = request(addr, "PUT", "/v1/sessions/moved", Some(&saved.body));
    assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
    let moved = completion_text(&post(addr, "/v1/completions", &body("", "moved", 5)));
    assert_eq!(moved, fork);
    // Bytes of no state file are refused.
    let bad = request(addr, "PUT", "/v1/sessions/bad", Some(b"not a state"));
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"].is_string());
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_stays_up() {
    let model = cpu_model();
    let addr = start(CpuSource(cpu_model()), tokenizer(&model), options(1, 4, 0));
    for (body, status, param) in [
        (json!({"prompt": "a", "max_tokens": -1}), 400, "max_tokens"),
        (json!({"prompt": "a", "top_p": 1.5}), 400, "top_p"),
        (
            json!({"prompt": "a", "temperature": -1}),
            400,
            "temperature",
        ),
        (json!({"prompt": "a", "top_k": -1}), 400, "top_k"),
        (
            json!({"prompt": "a", "repeat_penalty": 0}),
            400,
            "repeat_penalty",
        ),
        (json!({"prompt": ""}), 400, "prompt"),
        (json!({"prompt": 5}), 400, "prompt"),
        (json!({"prompt": "a", "model": "gpt-4"}), 404, "model"),
    ] {
        let r = post(addr, "/v1/completions", &body);
        assert_eq!(r.status, status, "{body}");
        let error = &r.json()["error"];
        assert_eq!(error["param"], param, "{body}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let r = request(addr, "POST", "/v1/completions", Some(b"{not json"));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = post(addr, "/v1/chat/completions", &json!({"messages": "hi"}));
    assert_eq!(r.status, 400);
    let huge = json!({"prompt": "a".repeat(2 << 20)});
    let r = post(addr, "/v1/completions", &huge);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(get(addr, "/nowhere").status, 404);
    // Every error answer of a completion route is counted, rejected bodies included.
    assert_eq!(metric(addr, "request_errors_total"), 11.0);
    assert_eq!(get(addr, "/health").status, 200);
    let models = get(addr, "/v1/models").json();
    assert_eq!(models["data"][0]["id"], "retnet-shakespeare");
}

#[test]
fn a_full_queue_gets_503_and_a_dropped_stream_frees_its_slot() {
    let model = cpu_model();
    let addr = start(CpuSource(cpu_model()), tokenizer(&model), options(1, 1, 0));
    // A long stream takes the only slot; its client reads one event and goes away.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let body = json!({"prompt": "ROMEO:", "max_tokens": 100000, "stream": true}).to_string();
    use std::io::{Read, Write};
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 256];
    assert!(stream.read(&mut first).unwrap() > 0);
    wait_for("the stream in the batch", || {
        metric(addr, "batch_occupancy") == 1.0
    });
    // One more waits in the queue, the next is refused.
    let waiting = std::thread::spawn(move || {
        completion_text(&post(
            addr,
            "/v1/completions",
            &json!({"prompt": "KING:", "max_tokens": 3, "temperature": 0}),
        ))
    });
    wait_for("a queued request", || metric(addr, "queue_length") == 1.0);
    let refused = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}),
    );
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["type"], "server_overloaded");
    // The dropped stream leaves; the queued request runs to the end.
    drop(stream);
    let text = waiting.join().unwrap();
    assert_eq!(
        text,
        reference(&model, "KING:", &SamplingParams::greedy(), 3)
    );
    wait_for("an empty batch", || metric(addr, "batch_occupancy") == 0.0);
    assert_eq!(metric(addr, "client_disconnects_total"), 1.0);
    assert_eq!(get(addr, "/health").status, 200);
}

#[test]
fn chat_uses_the_plain_template_and_stops_at_the_next_turn() {
    let model = cpu_model();
    let addr = start(CpuSource(cpu_model()), tokenizer(&model), options(2, 4, 0));
    let r = post(
        addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Who art thou?"}],
                "max_tokens": 40, "temperature": 0}),
    );
    assert_eq!(r.status, 200);
    let json = r.json();
    let reply = json["choices"][0]["message"]["content"].as_str().unwrap();
    let whole = reference(
        &model,
        "User: Who art thou?\nAssistant:",
        &SamplingParams::greedy(),
        40,
    );
    // The reply is the completion of the templated prompt, cut at "\nUser:" if it came.
    match whole.find("\nUser:") {
        Some(at) => {
            assert_eq!(reply, &whole[..at]);
            assert_eq!(json["choices"][0]["finish_reason"], "stop");
        }
        None => {
            assert_eq!(reply, whole);
            assert_eq!(json["choices"][0]["finish_reason"], "length");
        }
    }
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(
        json["usage"]["prompt_tokens"],
        "User: Who art thou?\nAssistant:".len()
    );
}
