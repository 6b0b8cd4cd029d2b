//! Several sequences decoded together, one token of each per step.

use retnet_runtime::kernels::sampling;
use retnet_runtime::GpuBuffer;

use super::forward::{record_forward, Logits, Rows, Scratch};
use super::kv_cache::KvCaches;
use super::{state, GpuModel, GpuSession};
use crate::error::{ModelError, Result};
use crate::reference::check_tokens;

/// Several sequences decoded together: one token of each per step, in one dispatch per kernel.
///
/// Each sequence owns a slot of a per-layer state pool (`[slots, H, K, V]` f32). Sequences are
/// prefilled alone in a [`GpuSession`], then [`GpuBatch::insert`]ed (their state copied on the
/// GPU); they may be at different positions, and any subset may step together. In a hybrid
/// checkpoint each slot also holds its sequence's key/value caches, and the attention layers
/// run row by row against them.
pub struct GpuBatch {
    model: GpuModel,
    pools: Vec<GpuBuffer>,
    /// Each occupied slot's key/value caches (no GPU buffers for a pure RetNet model).
    caches: Vec<Option<KvCaches>>,
    /// Position of the sequence in each slot; `None` for a free slot.
    slots: Vec<Option<usize>>,
    positions_buffer: GpuBuffer,
    slots_buffer: GpuBuffer,
    scratch: Scratch,
    /// Reused per step: no allocation in the decode loop.
    row_positions: Vec<u32>,
    row_slots: Vec<u32>,
    row_tokens: Vec<u32>,
}

impl GpuBatch {
    /// A batch of up to `capacity` sequences. It holds a clone of the model's handle.
    pub fn new(model: &GpuModel, capacity: usize) -> Result<Self> {
        let parts = model.parts();
        let capacity = capacity.max(1);
        let dev = &parts.device;
        let pools = state::state_buffers(parts, "state pool", capacity)?;
        Ok(Self {
            model: model.clone(),
            pools,
            caches: (0..capacity).map(|_| None).collect(),
            slots: vec![None; capacity],
            positions_buffer: dev.create_storage("batch positions", (capacity * 4) as u64)?,
            slots_buffer: dev.create_storage("batch slots", (capacity * 4) as u64)?,
            scratch: Scratch::new(parts, capacity, true)?,
            row_positions: Vec::with_capacity(capacity),
            row_slots: Vec::with_capacity(capacity),
            row_tokens: Vec::with_capacity(capacity),
        })
    }

    /// Bytes of GPU memory this batch holds (state pools, slot tables, activations).
    pub fn buffer_bytes(&self) -> u64 {
        let pools: u64 = self.pools.iter().map(GpuBuffer::size).sum::<u64>()
            + self
                .caches
                .iter()
                .flatten()
                .map(KvCaches::bytes)
                .sum::<u64>();
        pools + self.positions_buffer.size() + self.slots_buffer.size() + self.scratch.bytes()
    }

    /// Copies a session's state into a free slot; returns the slot.
    pub fn insert(&mut self, session: &GpuSession) -> Result<usize> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| ModelError::invalid("the batch is full"))?;
        if !GpuModel::same(&self.model, session.model()) {
            return Err(ModelError::invalid(
                "a session of another model cannot join this batch",
            ));
        }
        let parts = self.model.parts();
        let caches = session.caches.duplicate(parts, session.position)?;
        state::copy_slots(parts, &session.states, 0, &self.pools, slot);
        if let (Some(s), Some(c)) = (self.slots.get_mut(slot), self.caches.get_mut(slot)) {
            *s = Some(session.position);
            *c = Some(caches);
        }
        Ok(slot)
    }

    /// Frees a slot.
    pub fn remove(&mut self, slot: usize) {
        if let (Some(s), Some(c)) = (self.slots.get_mut(slot), self.caches.get_mut(slot)) {
            *s = None;
            *c = None;
        }
    }

    /// The position of the sequence in `slot`, if any.
    pub fn position(&self, slot: usize) -> Option<usize> {
        self.slots.get(slot).copied().flatten()
    }

    /// A session holding a copy of the sequence in `slot` (to save it, or continue alone).
    pub fn extract(&self, slot: usize) -> Result<GpuSession> {
        let position = self
            .position(slot)
            .ok_or_else(|| ModelError::invalid(format!("batch slot {slot} is empty")))?;
        let parts = self.model.parts();
        let mut session = GpuSession::new(self.model.clone())?;
        state::copy_slots(parts, &self.pools, slot, &session.states, 0);
        if let Some(Some(caches)) = self.caches.get(slot) {
            session.caches = caches.duplicate(parts, position)?;
        }
        session.position = position;
        Ok(session)
    }

    /// Fills the reused row tables from `inputs[i] = (slot, token)` for a call that advances
    /// each listed sequence by `steps` tokens: each slot occupied, listed once, and its position
    /// representable after the call.
    fn load_rows(&mut self, inputs: &[(usize, u32)], steps: usize) -> Result<()> {
        self.row_positions.clear();
        self.row_slots.clear();
        self.row_tokens.clear();
        for (i, &(slot, token)) in inputs.iter().enumerate() {
            let position = self
                .position(slot)
                .ok_or_else(|| ModelError::invalid(format!("batch slot {slot} is empty")))?;
            if inputs.iter().take(i).any(|&(other, _)| other == slot) {
                return Err(ModelError::invalid(format!(
                    "slot {slot} listed twice in one step"
                )));
            }
            crate::reference::check_advance(position, steps)?;
            self.row_positions.push(position as u32);
            self.row_slots.push(slot as u32);
            self.row_tokens.push(token);
        }
        Ok(())
    }

    /// Room in each listed row's key/value caches for one more token (hybrid checkpoints):
    /// allocates only when a full-attention cache grows (once per growth block).
    fn reserve_caches(&mut self) -> Result<()> {
        let parts = self.model.parts();
        for (&slot, &position) in self.row_slots.iter().zip(&self.row_positions) {
            if let Some(Some(caches)) = self.caches.get_mut(slot as usize) {
                caches.reserve(parts, position as usize, 1)?;
            }
        }
        Ok(())
    }

    /// Advances each listed sequence by one token: `inputs[i] = (slot, token)`. Returns the
    /// logits `[inputs.len(), vocab]`, row i for `inputs[i]`.
    pub async fn step(&mut self, inputs: &[(usize, u32)]) -> Result<Vec<f32>> {
        // A clone of the handle (an Arc), so the row tables can be refilled while it is read.
        let model = self.model.clone();
        let parts = model.parts();
        let c = &parts.config;
        self.load_rows(inputs, 1)?;
        check_tokens(&self.row_tokens, c.vocab_size)?;
        self.reserve_caches()?;
        let dev = &parts.device;
        dev.write_u32(&self.positions_buffer, 0, &self.row_positions);
        dev.write_u32(&self.slots_buffer, 0, &self.row_slots);
        let rows = Rows::Batch {
            positions: &self.positions_buffer,
            slots: &self.slots_buffer,
            pools: &self.pools,
            caches: &self.caches,
            host_positions: &self.row_positions,
            host_slots: &self.row_slots,
        };
        let s = &self.scratch;
        dev.write_u32(&s.token_ids, 0, &self.row_tokens);
        let mut seq = dev.sequence("retnet batched step");
        record_forward(
            parts,
            s,
            &mut seq,
            &s.token_ids,
            inputs.len(),
            rows,
            Logits::All,
        )?;
        seq.submit()?;
        for &(slot, _) in inputs {
            if let Some(Some(p)) = self.slots.get_mut(slot) {
                *p += 1;
            }
        }
        Ok(dev
            .read_f32(&self.scratch.logits, 0, inputs.len() * c.vocab_size)
            .await?)
    }
}

/// Steps between two read-backs of the sampled ids in [`GpuBatch::generate`].
const BATCH_FLUSH_EVERY: usize = 16;

impl GpuBatch {
    /// Decodes `count` steps of every listed sequence with sampling on the GPU: step 0 feeds
    /// `inputs[i] = (slot, token)`, every later step feeds the token sampled at the step before,
    /// so no logits and no ids cross to the CPU between steps; the ids are read back every
    /// [`BATCH_FLUSH_EVERY`] steps and handed to `on_tokens(ids)`, `ids[i]` the tokens sampled
    /// for `inputs[i]` since the last call (returning `false` stops after that read-back).
    ///
    /// Every row samples with the same `params` (the draw index of each row starts at
    /// `draws`); `histories[i]` are row i's recent tokens for the repetition penalty (empty:
    /// none). Returns the tokens sampled per row; each sequence advances by as many, its last
    /// sampled token not yet fed (pass it to the next [`GpuBatch::step`] or `generate`).
    pub async fn generate(
        &mut self,
        inputs: &[(usize, u32)],
        params: &crate::SamplingParams,
        draws: u32,
        histories: &[&[u32]],
        count: usize,
        on_tokens: &mut dyn FnMut(&[Vec<u32>]) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        let model = self.model.clone();
        let parts = model.parts();
        let c = &parts.config;
        let dev = &parts.device;
        let rows = inputs.len();
        if !histories.is_empty() && histories.len() != rows {
            return Err(ModelError::invalid(
                "generate takes one history per row, or none",
            ));
        }
        self.load_rows(inputs, count)?;
        let mut out: Vec<Vec<u32>> = vec![Vec::with_capacity(count); rows];
        if rows == 0 || count == 0 {
            return Ok(out);
        }
        check_tokens(&self.row_tokens, c.vocab_size)?;

        // The sampler's buffers for this call: per row its state words, its next id (the next
        // step's embedding input) and a ring of recent ids.
        let window = sampling::DEFAULT_HISTORY_WINDOW;
        let state_len = sampling::state_len(window);
        let capacity = BATCH_FLUSH_EVERY.min(count);
        let mut states = Vec::with_capacity(rows * state_len);
        for i in 0..rows {
            let history = histories.get(i).copied().unwrap_or_default();
            states.extend(sampling::initial_state(window, draws, history));
        }
        let state = dev.upload_u32("batch sampler state", &states)?;
        let next_token = dev.upload_u32("batch next tokens", &self.row_tokens)?;
        let generated = dev.create_storage("batch generated", (rows * capacity * 4) as u64)?;
        dev.write_u32(&self.slots_buffer, 0, &self.row_slots);
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

        let mut unread = 0;
        for step in 0..count {
            self.reserve_caches()?;
            // Positions are known on the host: a small write, not a round trip.
            dev.write_u32(&self.positions_buffer, 0, &self.row_positions);
            let batch_rows = Rows::Batch {
                positions: &self.positions_buffer,
                slots: &self.slots_buffer,
                pools: &self.pools,
                caches: &self.caches,
                host_positions: &self.row_positions,
                host_slots: &self.row_slots,
            };
            let s = &self.scratch;
            let mut seq = dev.sequence("retnet batched decode step");
            record_forward(
                parts,
                s,
                &mut seq,
                &next_token,
                rows,
                batch_rows,
                Logits::All,
            )?;
            let buffers = sampling::SampleBuffers {
                logits: &s.logits,
                state: &state,
                next_token: &next_token,
                generated: &generated,
            };
            seq.dispatch(sampling::sample_rows(sample_params, rows as u32, buffers))?;
            seq.submit()?;
            for p in self.row_positions.iter_mut() {
                *p += 1;
            }
            for &slot in &self.row_slots {
                if let Some(Some(p)) = self.slots.get_mut(slot as usize) {
                    *p += 1;
                }
            }
            unread += 1;
            if unread == capacity || step + 1 == count {
                let ids = dev.read_u32(&generated, 0, rows * capacity).await?;
                // The draws of this call are numbered `draws + step`: draw n sits at
                // n % capacity of its row.
                let first = draws as usize + step + 1 - unread;
                let logits = dev.read_f32(&s.logits, 0, rows * c.vocab_size).await?;
                crate::reference::check_finite_logits(&logits, c.vocab_size, step)?;
                let mut fresh = vec![Vec::with_capacity(unread); rows];
                for (row, tokens) in fresh.iter_mut().enumerate() {
                    for k in 0..unread {
                        let at = row * capacity + (first + k) % capacity;
                        let id = ids
                            .get(at)
                            .copied()
                            .ok_or_else(|| ModelError::invalid("sampled ids read back short"))?;
                        if id as usize >= c.vocab_size {
                            return Err(ModelError::NonFinite(format!(
                                "the GPU sampler drew token {id}, outside the vocabulary"
                            )));
                        }
                        tokens.push(id);
                    }
                }
                unread = 0;
                for (all, new) in out.iter_mut().zip(&fresh) {
                    all.extend_from_slice(new);
                }
                if !on_tokens(&fresh) {
                    break;
                }
            }
        }
        Ok(out)
    }
}
