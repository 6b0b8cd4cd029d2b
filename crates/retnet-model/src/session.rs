//! Generation sessions on either backend: prefill, sample, step, save and resume.
//!
//! An [`Engine`] is a model plus one sequence's recurrent state on some backend — the CPU
//! reference ([`CpuEngine`]) or the GPU ([`crate::GpuSession`]). A [`Generator`] drives an engine
//! with the sampler and keeps the bookkeeping that a resumed session needs.
//!
//! The last sampled token is kept *pending* (not yet fed through the model) until more input
//! is needed. A saved session therefore holds exactly the tokens it has consumed plus the one
//! it owes, and resuming continues as if it had never stopped: the pending token (and any new
//! prompt) is fed first, then sampling goes on with the same draw counter and penalty history.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::reference::{CpuModel, CpuState, RetentionForm};
use crate::sampling::{apply_repeat_penalty, sample, SamplingParams};
use crate::state_file::{load_state, save_state, state_from_bytes, state_to_bytes, SavedState};
use crate::weights::WeightsFingerprint;

/// How many recent tokens the repetition penalty looks at.
pub const REPEAT_WINDOW: usize = 64;

/// Tokens per prefill piece. [`Generator::prefill`] feeds its input in pieces of this many
/// tokens (the last one shorter), counted from the start of the input, and so does a server
/// that interleaves [`Generator::feed_piece`] with other sequences' decode steps. Every caller
/// therefore computes a prompt in the very same pieces, so the results agree bit for bit, and a
/// state saved at a piece boundary ([`Generator::with_consumed_prefix`]) resumes exactly.
pub const PREFILL_PIECE: usize = 256;

/// A model and the recurrent state of one sequence, on some backend.
pub trait Engine {
    /// The model's config.
    fn config(&self) -> &ModelConfig;
    /// The fingerprint of the model's weights (a saved state records it).
    fn fingerprint(&self) -> &WeightsFingerprint;
    /// Tokens consumed so far.
    fn position(&self) -> usize;
    /// Feeds `tokens` (chunkwise, or recurrent for one token) and returns the logits of the
    /// last one (`[vocab]`), or of every one (`[T, vocab]`) when `all_rows`.
    fn feed(&mut self, tokens: &[u32], all_rows: bool) -> impl Future<Output = Result<Vec<f32>>>;
    /// A copy of the state: per layer `H × K × V` f32 (retention) or the key/value cache
    /// (attention layers, see [`crate::CpuState`]).
    fn export_state(&self) -> impl Future<Output = Result<Vec<Vec<f32>>>>;
    /// Replaces the state and position.
    fn import_state(&mut self, position: usize, layers: &[Vec<f32>]) -> Result<()>;
    /// Makes `logits` (`[vocab]`) the logits of the last consumed token, as if it had just
    /// been fed: a resumed session that owes no token samples from them.
    fn restore_logits(&mut self, logits: &[f32]) -> Result<()> {
        let _ = logits;
        Ok(())
    }
    /// An independent copy of this sequence (on the GPU, the state is copied on the GPU).
    fn fork(&self) -> Result<Self>
    where
        Self: Sized;
    /// Samples `count` tokens on the device itself, from the logits of the last consumed token,
    /// feeding each but the last (see [`Generator::generate`]); `None` when this engine samples
    /// on the host.
    fn sample_on_device(
        &mut self,
        params: &SamplingParams,
        draws: u64,
        history: &[u32],
        count: usize,
        on_tokens: &mut dyn FnMut(&[u32]) -> bool,
    ) -> impl Future<Output = Result<Option<Vec<u32>>>> {
        let _ = (params, draws, history, count, on_tokens);
        async { Ok(None) }
    }
}

/// The CPU reference as an [`Engine`].
pub struct CpuEngine<'m> {
    model: &'m CpuModel,
    state: CpuState,
}

impl<'m> CpuEngine<'m> {
    /// A fresh sequence.
    pub fn new(model: &'m CpuModel) -> Self {
        Self {
            model,
            state: model.new_state(),
        }
    }
}

impl Engine for CpuEngine<'_> {
    fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    fn fingerprint(&self) -> &WeightsFingerprint {
        self.model.fingerprint()
    }

    fn position(&self) -> usize {
        self.state.position
    }

    async fn feed(&mut self, tokens: &[u32], all_rows: bool) -> Result<Vec<f32>> {
        let form = if tokens.len() == 1 {
            RetentionForm::Recurrent
        } else {
            RetentionForm::Chunkwise {
                chunk_size: self.model.config().default_chunk_size,
            }
        };
        let logits = self.model.forward(tokens, &mut self.state, form)?;
        let vocab = self.model.config().vocab_size;
        Ok(if all_rows {
            logits
        } else {
            let mut logits = logits;
            logits.split_off(logits.len().saturating_sub(vocab))
        })
    }

    async fn export_state(&self) -> Result<Vec<Vec<f32>>> {
        Ok(self.state.layers.clone())
    }

    fn import_state(&mut self, position: usize, layers: &[Vec<f32>]) -> Result<()> {
        self.model.check_state(position, layers)?;
        self.state = CpuState {
            position,
            layers: layers.to_vec(),
        };
        Ok(())
    }

    fn fork(&self) -> Result<Self> {
        Ok(Self {
            model: self.model,
            state: self.state.clone(),
        })
    }
}

/// Mean negative log-likelihood (nats per token) of each token of `tokens` given the ones
/// before it, the whole sequence as one context (T − 1 predictions), fed in spans of `span`
/// tokens so memory stays bounded. `progress(done, total)` reports tokens consumed.
pub async fn mean_nll<E: Engine>(
    engine: &mut E,
    tokens: &[u32],
    span: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<f64> {
    if tokens.len() < 2 {
        return Err(ModelError::invalid(
            "perplexity needs at least 2 tokens of text",
        ));
    }
    let vocab = engine.config().vocab_size;
    let span = span.max(1);
    let mut total = 0.0f64;
    for (s, chunk) in tokens.chunks(span).enumerate() {
        let start = s * span;
        let logits = engine.feed(chunk, true).await?;
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            let Some(&next) = tokens.get(start + i + 1) else {
                break;
            };
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_z = max
                + row
                    .iter()
                    .map(|&l| (l as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            let logit = row.get(next as usize).ok_or(ModelError::TokenOutOfRange {
                token: next as i64,
                position: start + i + 1,
                vocab_size: vocab,
            })?;
            crate::reference::check_finite_logits(row, vocab, start + i)?;
            total += log_z - *logit as f64;
        }
        progress(start + chunk.len(), tokens.len());
    }
    let mean = total / (tokens.len() - 1) as f64;
    if !mean.is_finite() {
        return Err(ModelError::NonFinite(format!(
            "the mean negative log-likelihood is not finite ({mean}): the model's logits \
             overflowed"
        )));
    }
    Ok(mean)
}

/// What a session must remember besides the recurrent state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionBook {
    /// The last sampled token, not yet fed through the model.
    pub pending: Option<u32>,
    /// The most recent tokens (at most [`REPEAT_WINDOW`]), for the repetition penalty.
    pub history: Vec<u32>,
    /// Draws made so far: the index of the next random draw.
    pub draws: u64,
}

impl SessionBook {
    fn remember(&mut self, tokens: &[u32]) {
        self.history.extend_from_slice(tokens);
        let excess = self.history.len().saturating_sub(REPEAT_WINDOW);
        self.history.drain(..excess);
    }

    fn to_strings(&self) -> HashMap<String, String> {
        let history: Vec<String> = self.history.iter().map(u32::to_string).collect();
        let mut m = HashMap::from([
            ("draws".to_string(), self.draws.to_string()),
            ("history".to_string(), history.join(",")),
        ]);
        if let Some(p) = self.pending {
            m.insert("pending".into(), p.to_string());
        }
        m
    }

    fn from_strings(m: &HashMap<String, String>) -> Option<Self> {
        let parse_list = |s: &str| -> Option<Vec<u32>> {
            if s.is_empty() {
                return Some(Vec::new());
            }
            s.split(',').map(|t| t.parse().ok()).collect()
        };
        Some(Self {
            pending: match m.get("pending") {
                Some(p) => Some(p.parse().ok()?),
                None => None,
            },
            history: parse_list(m.get("history")?)?,
            draws: m.get("draws")?.parse().ok()?,
        })
    }
}

/// Text generation over an [`Engine`].
pub struct Generator<E: Engine> {
    engine: E,
    book: SessionBook,
    /// Logits after the last consumed token, while nothing is pending.
    last_logits: Option<Vec<f32>>,
    /// Input queued by [`Generator::queue_input`]: the pending token and a prompt.
    queued: Vec<u32>,
    /// How much of `queued` has been fed.
    fed: usize,
}

/// A generation session on the CPU reference.
pub type CpuSession<'m> = Generator<CpuEngine<'m>>;

impl<E: Engine> Generator<E> {
    /// A generator over an engine (normally a fresh one).
    pub fn new(engine: E) -> Self {
        Self {
            engine,
            book: SessionBook::default(),
            last_logits: None,
            queued: Vec::new(),
            fed: 0,
        }
    }

    /// A generator over a fresh sequence's engine that has already consumed `prefix` and holds
    /// the state `layers` (e.g. a prefix cache's snapshot). It continues exactly as a
    /// generator that fed `prefix` itself, because `prefix` ends on a piece boundary
    /// ([`PREFILL_PIECE`]); any other length is refused.
    pub fn with_consumed_prefix(
        mut engine: E,
        prefix: &[u32],
        layers: &[Vec<f32>],
    ) -> Result<Self> {
        if prefix.is_empty() || prefix.len() % PREFILL_PIECE != 0 {
            return Err(ModelError::invalid(format!(
                "a consumed prefix must be a positive multiple of {PREFILL_PIECE} tokens, got {}",
                prefix.len()
            )));
        }
        engine.import_state(prefix.len(), layers)?;
        let mut generator = Self::new(engine);
        generator.book.remember(prefix);
        Ok(generator)
    }

    /// Tokens consumed so far.
    pub fn position(&self) -> usize {
        self.engine.position()
    }

    /// The session's bookkeeping.
    pub fn book(&self) -> &SessionBook {
        &self.book
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Feeds the pending token (if any) and `tokens`, in pieces of [`PREFILL_PIECE`] tokens.
    /// After an error the session is not usable.
    pub async fn prefill(&mut self, tokens: &[u32]) -> Result<()> {
        if self.book.pending.is_none() && tokens.is_empty() && self.queued_tokens() == 0 {
            return if self.last_logits.is_some() {
                Ok(())
            } else {
                Err(ModelError::invalid(
                    "nothing to continue from: give a prompt (or a state with a pending token)",
                ))
            };
        }
        self.queue_input(tokens);
        while self.feed_piece().await? > 0 {}
        Ok(())
    }

    /// Queues the pending token (if any) and `tokens` to be fed by [`Generator::feed_piece`]
    /// (what [`Generator::prefill`] does in one call).
    pub fn queue_input(&mut self, tokens: &[u32]) {
        if let Some(pending) = self.book.pending.take() {
            self.queued.push(pending);
        }
        self.queued.extend_from_slice(tokens);
        self.book.remember(tokens);
        if self.queued_tokens() > 0 {
            self.last_logits = None;
        }
    }

    /// Queued tokens not yet fed.
    pub fn queued_tokens(&self) -> usize {
        self.queued.len() - self.fed
    }

    /// Feeds the next piece of the queued input (up to [`PREFILL_PIECE`] tokens); returns how
    /// many tokens it fed (0 when nothing was queued).
    pub async fn feed_piece(&mut self) -> Result<usize> {
        let end = self.queued.len().min(self.fed + PREFILL_PIECE);
        let Some(piece) = self.queued.get(self.fed..end).filter(|p| !p.is_empty()) else {
            return Ok(0);
        };
        let logits = self.engine.feed(piece, false).await?;
        let fed = piece.len();
        self.fed = end;
        if self.fed == self.queued.len() {
            self.queued.clear();
            self.fed = 0;
            self.last_logits = Some(logits);
        }
        Ok(fed)
    }

    /// Samples the next token; it stays pending until the next call needs its logits.
    pub async fn next_token(&mut self, params: &SamplingParams) -> Result<u32> {
        if self.book.pending.is_some() || self.queued_tokens() > 0 {
            self.prefill(&[]).await?;
        }
        let mut logits = self
            .last_logits
            .take()
            .ok_or_else(|| ModelError::invalid("nothing to continue from: give a prompt first"))?;
        let vocab = self.engine.config().vocab_size;
        crate::reference::check_finite_logits(&logits, vocab, self.engine.position())?;
        apply_repeat_penalty(&mut logits, &self.book.history, params.repeat_penalty);
        let token = sample(&logits, params, self.book.draws);
        self.book.draws = self.book.draws.saturating_add(1);
        self.book.remember(&[token]);
        self.book.pending = Some(token);
        Ok(token)
    }

    /// Generates up to `count` tokens, handing them to `on_tokens` as they are known (it
    /// returns `false` to stop early). On the GPU the sampler runs there too and the sampled ids
    /// feed the next step without a round trip through the CPU; elsewhere this is
    /// [`Generator::next_token`] in a loop. Returns how many tokens were generated.
    pub async fn generate(
        &mut self,
        params: &SamplingParams,
        count: usize,
        on_tokens: &mut dyn FnMut(&[u32]) -> bool,
    ) -> Result<usize> {
        if count == 0 {
            return Ok(0);
        }
        if self.book.pending.is_some() {
            self.prefill(&[]).await?;
        }
        if self.last_logits.is_none() {
            return Err(ModelError::invalid(
                "nothing to continue from: give a prompt first",
            ));
        }
        if self.queued_tokens() > 0 {
            self.prefill(&[]).await?;
        }
        let sampled = self
            .engine
            .sample_on_device(
                params,
                self.book.draws,
                &self.book.history,
                count,
                on_tokens,
            )
            .await?;
        match sampled {
            Some(tokens) => {
                self.book.draws = self.book.draws.saturating_add(tokens.len() as u64);
                self.book.remember(&tokens);
                self.book.pending = tokens.last().copied();
                self.last_logits = None;
                Ok(tokens.len())
            }
            None => {
                for n in 0..count {
                    let token = self.next_token(params).await?;
                    if !on_tokens(&[token]) {
                        return Ok(n + 1);
                    }
                }
                Ok(count)
            }
        }
    }

    /// An independent copy of this session: same state, position, pending token, history and
    /// draw counter; the two continue separately.
    pub fn fork(&self) -> Result<Self> {
        Ok(Self {
            engine: self.engine.fork()?,
            book: self.book.clone(),
            last_logits: self.last_logits.clone(),
            queued: self.queued.clone(),
            fed: self.fed,
        })
    }

    /// Saves the state and bookkeeping to a safetensors file.
    pub async fn save(&self, path: &Path) -> Result<()> {
        let e = &self.engine;
        save_state(path, e.config(), e.fingerprint(), &self.saved().await?)
    }

    /// The bytes of the file [`Generator::save`] writes (for embedders without a file system,
    /// e.g. the browser).
    pub async fn save_bytes(&self) -> Result<Vec<u8>> {
        let name = Path::new("<state>");
        let e = &self.engine;
        state_to_bytes(name, e.config(), e.fingerprint(), &self.saved().await?)
    }

    async fn saved(&self) -> Result<SavedState> {
        if self.queued_tokens() > 0 {
            return Err(ModelError::invalid(
                "a session with queued input cannot be saved before it is fed",
            ));
        }
        Ok(SavedState {
            position: self.engine.position(),
            layers: self.engine.export_state().await?,
            extra: self.book.to_strings(),
            // With no pending token, a resumed session needs these to continue without input.
            last_logits: match self.book.pending {
                Some(_) => None,
                None => self.last_logits.clone(),
            },
        })
    }

    /// Resumes a session saved by [`Generator::save`] (from either backend) into `engine`.
    pub fn load(engine: E, path: &Path) -> Result<Self> {
        let saved = load_state(path, engine.config(), engine.fingerprint())?;
        Self::resume(engine, path, saved)
    }

    /// [`Generator::load`] from the bytes of a state file; `name` is used in error messages.
    pub fn load_bytes(engine: E, name: &str, bytes: &[u8]) -> Result<Self> {
        let name = Path::new(name);
        let saved = state_from_bytes(name, bytes, engine.config(), engine.fingerprint())?;
        Self::resume(engine, name, saved)
    }

    fn resume(mut engine: E, name: &Path, saved: SavedState) -> Result<Self> {
        let bad = |message: String| ModelError::StateFile {
            path: name.to_path_buf(),
            message,
        };
        let book = SessionBook::from_strings(&saved.extra).ok_or_else(|| {
            bad("missing or bad session bookkeeping (pending, history, draws)".into())
        })?;
        let vocab = engine.config().vocab_size;
        if book.history.len() > REPEAT_WINDOW {
            return Err(bad(format!(
                "the history holds {} tokens, more than the {REPEAT_WINDOW} a session keeps",
                book.history.len()
            )));
        }
        let ids = book.pending.iter().map(|&p| ("pending token", p));
        let ids = ids.chain(book.history.iter().map(|&h| ("history token", h)));
        for (what, id) in ids {
            if id as usize >= vocab {
                return Err(bad(format!(
                    "{what} {id} is out of range: the vocabulary has {vocab} entries"
                )));
            }
        }
        // The GPU sampler counts draws in u32: both backends refuse a count it cannot continue.
        if book.draws > u64::from(u32::MAX) {
            return Err(bad(format!(
                "{} draws is beyond the {} a session can make",
                book.draws,
                u32::MAX
            )));
        }
        if book.pending.is_some() && saved.last_logits.is_some() {
            return Err(bad("holds both a pending token and the last logits".into()));
        }
        engine
            .import_state(saved.position, &saved.layers)
            .map_err(|e| bad(e.to_string()))?;
        if let Some(logits) = &saved.last_logits {
            engine.restore_logits(logits)?;
        }
        Ok(Self {
            engine,
            book,
            last_logits: saved.last_logits,
            queued: Vec::new(),
            fed: 0,
        })
    }
}
