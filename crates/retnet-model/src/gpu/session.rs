//! One sequence on the GPU: its state, its position, and the activation buffers its spans
//! reuse.

use retnet_runtime::GpuBuffer;

use super::forward::{record_forward, Logits, Rows, Scratch};
use super::kv_cache::KvCaches;
use super::sampler::SamplerBuffers;
use super::{state, GpuModel, MAX_SPAN_LOOP_LIMITED};
use crate::config::{LayerKind, ModelConfig};
use crate::error::{ModelError, Result};
use crate::reference::{check_tokens, RetentionForm};
use crate::weights::WeightsFingerprint;

/// Which rows of logits a forward pass computes and returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Every position: `[T, vocab]`.
    All,
    /// The last position only: `[vocab]` (prefill before generation).
    Last,
}

/// A sequence on the GPU: its recurrent state (one `[H, K, V]` f32 buffer per retention
/// layer), its attention layers' key/value caches (hybrid checkpoints), its position, and
/// activation buffers reused from call to call.
pub struct GpuSession {
    pub(super) model: GpuModel,
    pub(super) states: Vec<GpuBuffer>,
    pub(super) caches: KvCaches,
    pub(super) position: usize,
    pub(super) scratch: Scratch,
    pub(super) sampler: Option<SamplerBuffers>,
}

impl GpuSession {
    pub(super) fn new(model: GpuModel) -> Result<Self> {
        let parts = model.parts();
        let states = state::state_buffers(parts, "state", 1)?;
        let caches = KvCaches::new(parts)?;
        let scratch = Scratch::new(parts, 1, false)?;
        Ok(Self {
            model,
            states,
            caches,
            position: 0,
            scratch,
            sampler: None,
        })
    }

    /// The model this session runs.
    pub fn model(&self) -> &GpuModel {
        &self.model
    }

    /// Tokens consumed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes of GPU memory this session holds (states, key/value caches, activations, sampler
    /// buffers).
    pub fn buffer_bytes(&self) -> u64 {
        let states: u64 =
            self.states.iter().map(GpuBuffer::size).sum::<u64>() + self.caches.bytes();
        let sampler = self.sampler.as_ref().map_or(0, |s| {
            s.state.size() + s.next_token.size() + s.generated.size()
        });
        states + self.scratch.bytes() + sampler
    }

    /// The per-layer state buffers (`[H, K, V]` f32 each; a one-value placeholder for an
    /// attention layer).
    pub fn states(&self) -> &[GpuBuffer] {
        &self.states
    }

    /// Feeds `tokens` chunkwise; returns the logits of the last one.
    pub async fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let chunk_size = self.model.config().default_chunk_size;
        self.forward(
            tokens,
            RetentionForm::Chunkwise { chunk_size },
            LogitRows::Last,
        )
        .await
    }

    /// Feeds one token with the recurrent form; returns its logits.
    pub async fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        self.forward(&[token], RetentionForm::Recurrent, LogitRows::Last)
            .await
    }

    /// Feeds `tokens` in `form` and returns the requested logits. The parallel form starts
    /// from a zero state and leaves no state behind, so it is only accepted for a whole
    /// sequence at position 0; use it through [`GpuModel::logits`].
    pub async fn forward(
        &mut self,
        tokens: &[u32],
        form: RetentionForm,
        rows: LogitRows,
    ) -> Result<Vec<f32>> {
        let model = self.model.parts();
        let c = &model.config;
        check_tokens(tokens, c.vocab_size)?;
        let span = match form {
            RetentionForm::Chunkwise { chunk_size: 0 } => return Err(ModelError::ZeroChunkSize),
            RetentionForm::Parallel if self.position != 0 => {
                return Err(ModelError::invalid(
                    "the parallel form runs a whole sequence from position 0",
                ))
            }
            // One span: the parallel kernel neither reads nor writes the state. Except on a
            // CPU adapter (llvmpipe), whose loop limit would silently cut a long parallel
            // dispatch short: there, beyond one span, the sequence continues chunkwise.
            RetentionForm::Parallel
                if !model.loop_limited || tokens.len() <= MAX_SPAN_LOOP_LIMITED =>
            {
                tokens.len()
            }
            _ => model.max_span(),
        };
        let form = match form {
            RetentionForm::Parallel if span < tokens.len() => RetentionForm::Chunkwise {
                chunk_size: model.max_chunk,
            },
            other => other,
        };
        crate::reference::check_advance(self.position, tokens.len())?;
        let vocab = c.vocab_size;
        let mut out = Vec::with_capacity(match rows {
            LogitRows::All => crate::reference::logits_len(tokens.len(), vocab)?,
            LogitRows::Last => vocab,
        });
        // Counted rather than collected: a decode step should allocate nothing it can avoid.
        let span_count = tokens.len().div_ceil(span);
        for (i, span_tokens) in tokens.chunks(span).enumerate() {
            let last = i + 1 == span_count;
            let span_logits = match rows {
                LogitRows::All => Logits::All,
                LogitRows::Last if last => Logits::Last,
                LogitRows::Last => Logits::None,
            };
            self.record_and_submit(span_tokens, form, span_logits)?;
            let n = match span_logits {
                Logits::None => continue,
                Logits::Last => vocab,
                Logits::All => span_tokens.len() * vocab,
            };
            let logits = self.model.device().read_f32(&self.scratch.logits, 0, n);
            out.extend(logits.await?);
        }
        let rows_out = out.len() / vocab.max(1);
        crate::reference::check_finite_logits(&out, vocab, self.position - rows_out)?;
        Ok(out)
    }

    /// Records one span's dispatches and submits them.
    fn record_and_submit(
        &mut self,
        tokens: &[u32],
        form: RetentionForm,
        logits: Logits,
    ) -> Result<()> {
        let model = self.model.parts();
        let all_logits = logits == Logits::All;
        if tokens.len() > self.scratch.tokens
            || (all_logits && self.scratch.logit_rows < self.scratch.rows)
        {
            let tokens = tokens.len().next_power_of_two().max(self.scratch.tokens);
            self.scratch = Scratch::new(model, tokens, all_logits)?;
        }
        if matches!(form, RetentionForm::Chunkwise { .. }) {
            self.scratch.prepare_chunk_states(model)?;
        }
        self.caches.reserve(model, self.position, tokens.len())?;
        let rows = Rows::Sequence {
            position: self.position as u32,
            states: &self.states,
            caches: &self.caches,
            form,
        };
        let s = &self.scratch;
        model.device.write_u32(&s.token_ids, 0, tokens);
        let mut seq = model.device.sequence("retnet forward");
        record_forward(model, s, &mut seq, &s.token_ids, tokens.len(), rows, logits)?;
        seq.submit()?;
        self.position += tokens.len();
        Ok(())
    }
}

impl crate::session::Engine for GpuSession {
    fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    fn fingerprint(&self) -> &WeightsFingerprint {
        self.model.fingerprint()
    }

    fn position(&self) -> usize {
        self.position
    }

    async fn feed(&mut self, tokens: &[u32], all_rows: bool) -> Result<Vec<f32>> {
        let form = if tokens.len() == 1 {
            RetentionForm::Recurrent
        } else {
            RetentionForm::Chunkwise {
                chunk_size: self.model.config().default_chunk_size,
            }
        };
        let rows = if all_rows {
            LogitRows::All
        } else {
            LogitRows::Last
        };
        self.forward(tokens, form, rows).await
    }

    async fn export_state(&self) -> Result<Vec<Vec<f32>>> {
        let parts = self.model.parts();
        let len = parts.config.retention_state_len();
        let mut layers = Vec::with_capacity(self.states.len());
        for (i, state) in self.states.iter().enumerate() {
            layers.push(match parts.config.layer_kind(i) {
                LayerKind::Retention => self.model.device().read_f32(state, 0, len).await?,
                LayerKind::Attention(_) => self.caches.export(parts, i, self.position).await?,
            });
        }
        Ok(layers)
    }

    fn import_state(&mut self, position: usize, layers: &[Vec<f32>]) -> Result<()> {
        crate::reference::check_state_shape(self.model.config(), position, layers)?;
        if layers.len() != self.states.len() {
            return Err(ModelError::invalid("a state of another shape"));
        }
        let parts = self.model.parts();
        for (i, (buffer, values)) in self.states.iter().zip(layers).enumerate() {
            match parts.config.layer_kind(i) {
                LayerKind::Retention => self.model.device().write_f32(buffer, 0, values),
                LayerKind::Attention(_) => self.caches.import(parts, i, position, values)?,
            }
        }
        self.position = position;
        Ok(())
    }

    fn restore_logits(&mut self, logits: &[f32]) -> Result<()> {
        if logits.len() != self.model.config().vocab_size {
            return Err(ModelError::invalid("logits of another vocabulary"));
        }
        // The sampler reads the last row's logits from the start of the logits buffer.
        self.model
            .device()
            .write_f32(&self.scratch.logits, 0, logits);
        Ok(())
    }

    async fn sample_on_device(
        &mut self,
        params: &crate::SamplingParams,
        draws: u64,
        history: &[u32],
        count: usize,
        on_tokens: &mut dyn FnMut(&[u32]) -> bool,
    ) -> Result<Option<Vec<u32>>> {
        const FLUSH_EVERY: usize = 16;
        self.sample_loop(params, draws, history, count, FLUSH_EVERY, on_tokens)
            .await
            .map(Some)
    }

    fn fork(&self) -> Result<Self> {
        let parts = self.model.parts();
        let copy = GpuSession::new(self.model.clone())?;
        state::copy_slots(parts, &self.states, 0, &copy.states, 0);
        Ok(GpuSession {
            position: self.position,
            caches: self.caches.duplicate(parts, self.position)?,
            ..copy
        })
    }
}
