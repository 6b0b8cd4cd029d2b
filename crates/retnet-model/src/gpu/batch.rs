//! Several sequences decoded together, one token of each per step.

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

    /// Advances each listed sequence by one token: `inputs[i] = (slot, token)`. Returns the
    /// logits `[inputs.len(), vocab]`, row i for `inputs[i]`.
    pub async fn step(&mut self, inputs: &[(usize, u32)]) -> Result<Vec<f32>> {
        let parts = self.model.parts();
        let c = &parts.config;
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
            self.row_positions.push(position as u32);
            self.row_slots.push(slot as u32);
            self.row_tokens.push(token);
        }
        check_tokens(&self.row_tokens, c.vocab_size)?;
        for (&slot, &position) in self.row_slots.iter().zip(&self.row_positions) {
            if let Some(Some(caches)) = self.caches.get_mut(slot as usize) {
                // Allocates only when a full-attention cache grows (once per growth block).
                caches.reserve(parts, position as usize, 1)?;
            }
        }
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
