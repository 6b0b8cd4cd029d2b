//! The engine: a continuously running batch of generation requests, usable without HTTP.
//!
//! One scheduler thread owns the model. Each request is a [`Generator`] of its own (the same
//! type, fed the same way, that `retnet generate` drives), so its output does not depend on
//! what else runs: at temperature 0 it is `retnet generate --temperature 0` byte for byte, and
//! a seeded request samples the same tokens whenever it runs. Every step:
//!
//! 1. requests that arrived join the batch while it has free slots (the rest wait in a bounded
//!    queue); a fresh prompt resumes from its longest cached prefix state ([`PrefixCache`]), a
//!    session request from its kept state;
//! 2. every request whose client is gone leaves, freeing its slot;
//! 3. one prompt piece ([`PREFILL_PIECE`] tokens) of one prefilling request is fed, so new
//!    prompts are prefilled in chunks between the decode steps of the others, and its state is
//!    cached at the piece boundary;
//! 4. every decoding request generates one token with its own sampling parameters; finished
//!    ones leave.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pollster::block_on;
use rayon::prelude::*;
use retnet_model::session::PREFILL_PIECE;
use retnet_model::{Engine, Generator, ModelError, SamplingParams, TextStream, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::backend::EngineSource;
use crate::cache::PrefixCache;
use crate::metrics::Metrics;
use crate::text::TextOut;

/// Limits of the engine.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// Most sequences in the running batch.
    pub max_batch: usize,
    /// Most requests waiting for a slot; more are refused.
    pub queue: usize,
    /// Bytes of prefix states to keep (0: no cache).
    pub state_cache_bytes: usize,
    /// Most sessions kept.
    pub max_sessions: usize,
}

/// One generation request.
pub struct Job {
    /// Prompt tokens (may be empty when continuing a session with a pending token).
    pub prompt: Vec<u32>,
    /// Sampling parameters (validated).
    pub params: SamplingParams,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Stop sequences (non-empty strings).
    pub stop: Vec<String>,
    /// A session claimed with [`Sessions::claim`]: continue its state, keep the final one.
    pub session: Option<String>,
    /// Where the results go; a closed channel means the client went away.
    pub events: UnboundedSender<Event>,
}

/// Why a completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// A stop sequence was generated.
    Stop,
}

impl FinishReason {
    /// OpenAI's name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// What the engine reports for a job, in order: any number of `Text`, then `Done` or `Error`.
#[derive(Debug)]
pub enum Event {
    /// Text that became final.
    Text(String),
    /// The completion ended.
    Done {
        /// Why.
        reason: FinishReason,
        /// Prompt tokens (the session's pending token not counted).
        prompt_tokens: usize,
        /// Tokens generated.
        completion_tokens: usize,
        /// Prompt tokens resumed from the prefix cache.
        cached_tokens: usize,
    },
    /// The job failed; nothing more follows.
    Error {
        /// Whether the request itself was at fault (HTTP 400) rather than the server (500).
        invalid_request: bool,
        /// One line.
        message: String,
    },
}

/// Kept sessions as state-file bytes (the format of `retnet generate --save-state`), shared by
/// the HTTP layer (export, import, delete) and the scheduler (continue, keep).
#[derive(Default)]
pub struct Sessions {
    kept: HashMap<String, Vec<u8>>,
    /// Sessions a running request has claimed.
    busy: HashSet<String>,
}

/// Why a session could not be claimed or stored.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A running request uses it.
    #[error("session `{0}` is in use by another request")]
    Busy(String),
    /// The store holds its limit.
    #[error("the server keeps at most {0} sessions: delete one first")]
    Full(usize),
}

impl Sessions {
    /// Claims `id` for one request (a session that does not exist yet starts fresh).
    pub fn claim(&mut self, id: &str, max: usize) -> Result<(), SessionError> {
        if self.busy.contains(id) {
            return Err(SessionError::Busy(id.into()));
        }
        if !self.kept.contains_key(id) && self.kept.len() + self.busy.len() >= max {
            return Err(SessionError::Full(max));
        }
        self.busy.insert(id.into());
        Ok(())
    }

    /// Ends a claim, keeping `state` (the final state) if given, else the previous one.
    pub fn release(&mut self, id: &str, state: Option<Vec<u8>>) {
        self.busy.remove(id);
        if let Some(state) = state {
            self.kept.insert(id.into(), state);
        }
    }

    /// The state bytes of a kept session not in use.
    pub fn get(&self, id: &str) -> Option<&[u8]> {
        self.kept.get(id).map(Vec::as_slice)
    }

    /// Stores imported state bytes (checked by the caller) under `id`.
    pub fn put(&mut self, id: &str, state: Vec<u8>, max: usize) -> Result<(), SessionError> {
        if self.busy.contains(id) {
            return Err(SessionError::Busy(id.into()));
        }
        if !self.kept.contains_key(id) && self.kept.len() + self.busy.len() >= max {
            return Err(SessionError::Full(max));
        }
        self.kept.insert(id.into(), state);
        Ok(())
    }

    /// Deletes a session; whether it existed.
    pub fn delete(&mut self, id: &str) -> Result<bool, SessionError> {
        if self.busy.contains(id) {
            return Err(SessionError::Busy(id.into()));
        }
        Ok(self.kept.remove(id).is_some())
    }

    /// Sessions kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

/// What the scheduler shares with the HTTP layer.
pub struct Shared {
    /// The limits.
    pub options: EngineOptions,
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// Counters and gauges.
    pub metrics: Metrics,
    /// Kept sessions.
    pub sessions: Mutex<Sessions>,
}

impl Shared {
    /// Releases a session claim (a poisoned lock is taken over: the map stays consistent).
    pub fn release_session(&self, id: &str, state: Option<Vec<u8>>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.release(id, state);
        self.metrics.sessions.store(sessions.len() as u64, Relaxed);
    }
}

/// A request in the batch.
struct Active<E: Engine> {
    job: Job,
    generator: Generator<E>,
    text: TextStream,
    out: TextOut,
    generated: usize,
    cached_tokens: usize,
    /// Whether its prompt's piece-boundary states may go to the prefix cache (fresh prompts).
    cacheable: bool,
}

/// How a step left a request.
enum Outcome {
    Running,
    Finished(FinishReason),
    Gone,
    Failed(Failure),
}

/// Why a request failed.
enum Failure {
    Model(ModelError),
    /// The request asked for something impossible.
    Request(&'static str),
    /// The engine misbehaved.
    Internal(&'static str),
}

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        Failure::Model(e)
    }
}

/// Runs the scheduler until `jobs` is closed and the batch is empty. Call it on a thread of its
/// own: it blocks.
pub fn run<S: EngineSource>(source: &S, shared: &Shared, jobs: Receiver<Job>) {
    let options = shared.options;
    let metrics = &shared.metrics;
    let mut cache = PrefixCache::new(options.state_cache_bytes);
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut batch: Vec<Active<S::Engine<'_>>> = Vec::with_capacity(options.max_batch);
    let mut open = true;
    let mut window = (Instant::now(), 0u64);
    while open || !batch.is_empty() || !waiting.is_empty() {
        if batch.is_empty() && waiting.is_empty() {
            Metrics::set_f64(&metrics.tokens_per_second, 0.0);
            match jobs.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => break,
            }
            window = (Instant::now(), metrics.generated_tokens.load(Relaxed));
        }
        loop {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        while batch.len() < options.max_batch.max(1) {
            let Some(job) = waiting.pop_front() else {
                break;
            };
            metrics.queue_length.fetch_sub(1, Relaxed);
            if job.events.is_closed() {
                metrics.disconnects.fetch_add(1, Relaxed);
                if let Some(id) = &job.session {
                    shared.release_session(id, None);
                }
                continue;
            }
            match admit(source, shared, &mut cache, job) {
                Ok(active) => batch.push(active),
                Err((job, e)) => fail(shared, &job, e),
            }
        }
        metrics.batch_occupancy.store(batch.len() as u64, Relaxed);
        if batch.is_empty() {
            continue;
        }

        // One prompt piece of the first prefilling request, then one token of every decoding
        // one (on the CPU, spread over the cores: each sequence is independent).
        let prefilling = batch
            .iter()
            .position(|a| !a.job.events.is_closed() && a.generator.queued_tokens() > 0);
        let mut piece = prefilling
            .and_then(|i| batch.get_mut(i))
            .map(|active| prefill_piece(active, &mut cache, metrics));
        let tokenizer = &shared.tokenizer;
        let mut outcomes: Vec<Outcome> = if source.parallel_steps() {
            let one = |(i, a)| step(i, a, prefilling, tokenizer, metrics);
            batch.par_iter_mut().enumerate().map(one).collect()
        } else {
            let one = |(i, a)| step(i, a, prefilling, tokenizer, metrics);
            batch.iter_mut().enumerate().map(one).collect()
        };
        if let (Some(i), Some(outcome)) = (prefilling, piece.take()) {
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = outcome;
            }
        }
        metrics.steps.fetch_add(1, Relaxed);
        let mut outcomes = outcomes.into_iter();
        batch.retain_mut(|active| match outcomes.next().unwrap_or(Outcome::Running) {
            Outcome::Running => true,
            Outcome::Gone => {
                metrics.disconnects.fetch_add(1, Relaxed);
                if let Some(id) = &active.job.session {
                    shared.release_session(id, None);
                }
                false
            }
            Outcome::Failed(e) => {
                fail(shared, &active.job, e);
                false
            }
            Outcome::Finished(reason) => {
                finish(active, reason, shared);
                false
            }
        });
        metrics.batch_occupancy.store(batch.len() as u64, Relaxed);
        metrics.cache_bytes.store(cache.bytes() as u64, Relaxed);
        metrics.cache_entries.store(cache.len() as u64, Relaxed);
        let generated = metrics.generated_tokens.load(Relaxed);
        let elapsed = window.0.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            let rate = (generated - window.1) as f64 / elapsed.max(1e-9);
            Metrics::set_f64(&metrics.tokens_per_second, rate);
            window = (Instant::now(), generated);
        }
    }
}

/// A new request's generator: from its session's state, from the longest cached prefix of its
/// prompt, or fresh; its prompt queued.
#[allow(clippy::result_large_err)]
fn admit<'s, S: EngineSource>(
    source: &'s S,
    shared: &Shared,
    cache: &mut PrefixCache,
    job: Job,
) -> Result<Active<S::Engine<'s>>, (Job, Failure)> {
    let metrics = &shared.metrics;
    let engine = match source.engine() {
        Ok(e) => e,
        Err(e) => return Err((job, e.into())),
    };
    let kept = job.session.as_ref().and_then(|id| {
        let sessions = shared.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(id).map(<[u8]>::to_vec)
    });
    let mut cached_tokens = 0;
    let made = match (&job.session, kept) {
        (Some(id), Some(bytes)) => Generator::load_bytes(engine, &format!("session {id}"), &bytes),
        _ => match cache.longest_prefix(&job.prompt) {
            Some((len, layers)) => {
                cached_tokens = len;
                let prefix = job.prompt.get(..len).unwrap_or_default();
                Generator::with_consumed_prefix(engine, prefix, layers)
            }
            None => {
                if job.session.is_none() {
                    metrics.cache_misses.fetch_add(1, Relaxed);
                }
                Ok(Generator::new(engine))
            }
        },
    };
    let mut generator = match made {
        Ok(g) => g,
        Err(e) => return Err((job, e.into())),
    };
    if cached_tokens > 0 {
        metrics.cache_hits.fetch_add(1, Relaxed);
        metrics
            .cache_hit_tokens
            .fetch_add(cached_tokens as u64, Relaxed);
    }
    let rest = job.prompt.get(cached_tokens..).unwrap_or_default();
    if rest.is_empty() && generator.book().pending.is_none() {
        let message = "nothing to continue from: give a prompt (or a session with a state)";
        return Err((job, Failure::Request(message)));
    }
    generator.queue_input(rest);
    let fresh = generator.position() == cached_tokens && generator.book().draws == 0;
    Ok(Active {
        out: TextOut::new(job.stop.clone()),
        cacheable: fresh && cache_enabled(shared),
        job,
        generator,
        text: TextStream::new(),
        generated: 0,
        cached_tokens,
    })
}

fn cache_enabled(shared: &Shared) -> bool {
    shared.options.state_cache_bytes > 0
}

/// One step of a request other than the prefilling one: it leaves if its client is gone, waits
/// if its prompt is not fed yet, else generates a token.
fn step<E: Engine>(
    index: usize,
    active: &mut Active<E>,
    prefilling: Option<usize>,
    tokenizer: &Tokenizer,
    metrics: &Metrics,
) -> Outcome {
    if Some(index) == prefilling {
        Outcome::Running
    } else if active.job.events.is_closed() {
        Outcome::Gone
    } else if active.generator.queued_tokens() > 0 {
        Outcome::Running
    } else {
        decode(active, tokenizer, metrics)
    }
}

/// Feeds one prompt piece; keeps the state at the piece boundary in the cache.
fn prefill_piece<E: Engine>(
    active: &mut Active<E>,
    cache: &mut PrefixCache,
    metrics: &Metrics,
) -> Outcome {
    let fed = match block_on(active.generator.feed_piece()) {
        Ok(n) => n,
        Err(e) => return Outcome::Failed(e.into()),
    };
    metrics.prefill_tokens.fetch_add(fed as u64, Relaxed);
    let position = active.generator.position();
    if active.cacheable && fed == PREFILL_PIECE && position % PREFILL_PIECE == 0 {
        if let Some(prefix) = active.job.prompt.get(..position) {
            if !cache.contains(prefix) {
                match block_on(active.generator.engine().export_state()) {
                    Ok(layers) => cache.insert(prefix.to_vec(), layers),
                    Err(e) => return Outcome::Failed(e.into()),
                }
            }
        }
    }
    Outcome::Running
}

/// Generates one token and sends the text it completes.
fn decode<E: Engine>(active: &mut Active<E>, tokenizer: &Tokenizer, metrics: &Metrics) -> Outcome {
    if active.generated >= active.job.max_tokens {
        return Outcome::Finished(FinishReason::Length);
    }
    let mut token = None;
    let params = active.job.params;
    let step = block_on(active.generator.generate(&params, 1, &mut |t: &[u32]| {
        token = t.first().copied();
        true
    }));
    if let Err(e) = step {
        return Outcome::Failed(e.into());
    }
    let Some(token) = token else {
        return Outcome::Failed(Failure::Internal("the sampler returned no token"));
    };
    active.generated += 1;
    metrics.generated_tokens.fetch_add(1, Relaxed);
    let bytes = match active.text.push(tokenizer, token) {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(e.into()),
    };
    let (text, stopped) = active.out.push(&bytes);
    if !text.is_empty() && active.job.events.send(Event::Text(text)).is_err() {
        return Outcome::Gone;
    }
    if stopped {
        Outcome::Finished(FinishReason::Stop)
    } else if active.generated >= active.job.max_tokens {
        Outcome::Finished(FinishReason::Length)
    } else {
        Outcome::Running
    }
}

fn finish<E: Engine>(active: &mut Active<E>, reason: FinishReason, shared: &Shared) {
    if reason == FinishReason::Length {
        let rest = active.out.finish();
        if !rest.is_empty() {
            let _ = active.job.events.send(Event::Text(rest));
        }
    }
    if let Some(id) = &active.job.session {
        match block_on(active.generator.save_bytes()) {
            Ok(bytes) => shared.release_session(id, Some(bytes)),
            Err(e) => {
                shared.release_session(id, None);
                fail(shared, &active.job, e.into());
                return;
            }
        }
    }
    let _ = active.job.events.send(Event::Done {
        reason,
        prompt_tokens: active.job.prompt.len(),
        completion_tokens: active.generated,
        cached_tokens: active.cached_tokens,
    });
}

fn fail(shared: &Shared, job: &Job, failure: Failure) {
    if let Some(id) = &job.session {
        shared.release_session(id, None);
    }
    shared.metrics.request_errors.fetch_add(1, Relaxed);
    let (invalid_request, message) = match failure {
        Failure::Request(m) => (true, m.to_string()),
        Failure::Internal(m) => (false, m.to_string()),
        Failure::Model(e) => (
            matches!(
                e,
                ModelError::EmptyTokens
                    | ModelError::TokenOutOfRange { .. }
                    | ModelError::StateFile { .. }
                    | ModelError::InvalidConfig(_)
                    | ModelError::Tokenizer(_)
            ),
            e.to_string(),
        ),
    };
    let _ = job.events.send(Event::Error {
        invalid_request,
        message,
    });
}

/// Starts the scheduler on a thread of its own; returns the sender jobs go to.
pub fn spawn<S: EngineSource>(
    source: S,
    shared: Arc<Shared>,
) -> std::io::Result<std::sync::mpsc::Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("retnet-scheduler".into())
        .spawn(move || run(&source, &shared, rx))?;
    Ok(tx)
}
