//! Sampling on the GPU: each step samples from the last logits and feeds the sampled id
//! through the model without a round trip; ids are read back every few steps.

use retnet_runtime::kernels::sampling;
use retnet_runtime::GpuBuffer;

use super::forward::{record_forward, Logits, Rows};
use super::GpuSession;
use crate::error::{ModelError, Result};
use crate::reference::RetentionForm;

impl GpuSession {
    /// Generates `count` tokens with the sampler on the GPU, from the logits left by the last
    /// call (which must have computed the last row: [`GpuSession::prefill`] or
    /// [`GpuSession::step`]). Each step is one submission — sample, then feed the sampled id
    /// (which never leaves the GPU) through the model — and ids are read back every
    /// `flush_every` steps and handed to `on_tokens`. The last sampled token is *not* fed: it
    /// is returned pending, as [`crate::Generator`] keeps it. `draws` and `history` are the
    /// sampler's position and the recent tokens (prompt included).
    pub async fn sample_loop(
        &mut self,
        params: &crate::SamplingParams,
        draws: u64,
        history: &[u32],
        count: usize,
        flush_every: usize,
        on_tokens: &mut dyn FnMut(&[u32]) -> bool,
    ) -> Result<Vec<u32>> {
        let model = self.model.clone();
        let parts = model.parts();
        let c = &parts.config;
        let dev = &parts.device;
        let capacity = flush_every.clamp(1, 256);
        let window = sampling::DEFAULT_HISTORY_WINDOW;
        let recent = history
            .get(history.len().saturating_sub(window as usize)..)
            .unwrap_or_default();
        let draws32 = u32::try_from(draws)
            .map_err(|_| ModelError::invalid("more than 2^32 draws in one session"))?;
        let sampler = self.sampler(window, capacity)?;
        dev.write_u32(
            &sampler.state,
            0,
            &sampling::initial_state(window, draws32, recent),
        );
        let sample_params = sampling::SampleParams {
            vocab: c.vocab_size as u32,
            logits_offset: 0,
            temperature: params.temperature,
            top_k: params.top_k.min(u32::MAX as usize) as u32,
            top_p: params.top_p,
            repeat_penalty: params.repeat_penalty,
            seed: params.seed,
            history_window: window,
            capacity: capacity as u32,
        };
        // `count` comes from the user (`--max-tokens`): ids are collected as they come.
        let mut out = Vec::new();
        let mut unread = 0;
        for i in 0..count {
            // Each token but the last is fed, so the position must stay representable.
            crate::reference::check_advance(self.position, 1)?;
            let s = &self.scratch;
            let mut seq = dev.sequence("retnet decode step");
            let buffers = sampling::SampleBuffers {
                logits: &s.logits,
                state: &sampler.state,
                next_token: &sampler.next_token,
                generated: &sampler.generated,
            };
            seq.dispatch(sampling::sample(sample_params, buffers))?;
            let last = i + 1 == count;
            if !last {
                // Allocates only when a full-attention cache grows (once per growth block).
                self.caches.reserve(parts, self.position, 1)?;
                let rows = Rows::Sequence {
                    position: self.position as u32,
                    states: &self.states,
                    caches: &self.caches,
                    form: RetentionForm::Recurrent,
                };
                record_forward(
                    parts,
                    s,
                    &mut seq,
                    &sampler.next_token,
                    1,
                    rows,
                    Logits::Last,
                )?;
            }
            seq.submit()?;
            if !last {
                self.position += 1;
            }
            unread += 1;
            if unread == capacity || last {
                // Draw n is stored at n % capacity, and this loop's draws start at `draws`.
                let start = (draws as usize + i + 1 - unread) % capacity;
                let ids = dev.read_u32(&sampler.generated, 0, capacity).await?;
                let fresh = (0..unread)
                    .map(|k| {
                        let id = ids.get((start + k) % capacity).copied();
                        id.ok_or_else(|| ModelError::invalid("sampled ids read back short"))
                    })
                    .collect::<Result<Vec<u32>>>()?;
                // The sampler's input never leaves the GPU; the newest row (what the next draw
                // reads) is checked before the tokens are handed on. A non-finite step leaves a
                // non-finite state, so every later row is non-finite too and this sees it.
                let newest = dev.read_f32(&s.logits, 0, c.vocab_size).await?;
                crate::reference::check_finite_logits(&newest, c.vocab_size, self.position)?;
                if let Some(&bad) = fresh.iter().find(|&&t| t as usize >= c.vocab_size) {
                    return Err(ModelError::NonFinite(format!(
                        "the GPU sampler drew token {bad}, outside the vocabulary"
                    )));
                }
                unread = 0;
                out.extend_from_slice(&fresh);
                if !on_tokens(&fresh) {
                    break;
                }
            }
        }
        self.sampler = Some(sampler);
        Ok(out)
    }

    /// The sampler's buffers, created on first use and kept for the session.
    fn sampler(&mut self, window: u32, capacity: usize) -> Result<SamplerBuffers> {
        if let Some(b) = self.sampler.take() {
            if b.capacity == capacity {
                return Ok(b);
            }
        }
        let dev = self.model.device();
        Ok(SamplerBuffers {
            state: dev.create_storage("sampler state", (sampling::state_len(window) * 4) as u64)?,
            next_token: dev.create_storage("next token", 4)?,
            generated: dev.create_storage("generated", (capacity * 4) as u64)?,
            capacity,
        })
    }
}

/// GPU buffers of the sampler: its state (draw counter, history), the chosen id, recent ids.
pub(super) struct SamplerBuffers {
    pub(super) state: GpuBuffer,
    pub(super) next_token: GpuBuffer,
    pub(super) generated: GpuBuffer,
    capacity: usize,
}
