//! The recurrent state on the GPU: one `[slots, H, K, V]` f32 buffer per retention layer. A
//! session owns one slot per layer; a batch owns a pool of slots and copies sessions in and out
//! of them. An attention layer (hybrid checkpoints) has no recurrent state: its entry is a
//! one-value placeholder that nothing reads, which keeps the list indexed by layer (its
//! key/value cache lives in `kv_cache`).

use retnet_runtime::GpuBuffer;

use super::Parts;
use crate::config::LayerKind;
use crate::error::Result;

/// Per-layer state buffers of `slots` sequences each (zeroed: position 0).
pub(super) fn state_buffers(model: &Parts, label: &str, slots: usize) -> Result<Vec<GpuBuffer>> {
    let c = &model.config;
    let len = slots
        .checked_mul(c.retention_state_len())
        .ok_or_else(|| crate::error::ModelError::invalid("a state pool too large to address"))?;
    (0..c.num_layers)
        .map(|i| {
            let len = match c.layer_kind(i) {
                LayerKind::Retention => len,
                LayerKind::Attention(_) => 1,
            };
            Ok(model.device.create_storage_f32(label, len)?)
        })
        .collect()
}

/// Bytes of one sequence's state in one layer.
pub(super) fn slot_bytes(model: &Parts) -> u64 {
    (model.config.retention_state_len() * 4) as u64
}

/// Copies slot `from_slot` of every layer of `from` into slot `to_slot` of `to`, on the GPU.
pub(super) fn copy_slots(
    model: &Parts,
    from: &[GpuBuffer],
    from_slot: usize,
    to: &[GpuBuffer],
    to_slot: usize,
) {
    let bytes = slot_bytes(model);
    let layers = from.iter().zip(to).enumerate();
    for (_, (src, dst)) in
        layers.filter(|(i, _)| model.config.layer_kind(*i) == LayerKind::Retention)
    {
        model.device.copy_region(
            src,
            from_slot as u64 * bytes,
            dst,
            to_slot as u64 * bytes,
            bytes,
        );
    }
}
