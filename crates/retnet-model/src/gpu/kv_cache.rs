//! The key/value caches of a sequence's attention layers (hybrid checkpoints) on the GPU.
//!
//! Each attention layer's cache is one f32 buffer of `ring` slots, position m at slot
//! `m % ring`, a slot holding the keys of all kv heads then their values (the layout of
//! `shaders/attention_common.wgsl`):
//! - full attention: the ring is larger than every position so far (slot = position), grown
//!   in blocks of [`GROWTH_BLOCK`] positions (at least by half each time, so a long prefill or
//!   decode reallocates O(log n) times), the old slots copied on the GPU;
//! - a window of w: a fixed ring of `w − 1 + span` slots, where `span` is the longest span a
//!   call feeds (every key a query of the call can see is still there while the call writes
//!   its own keys first): memory flat in the context.
//!
//! The CPU reference keeps a window in a ring of exactly w slots (slot `m % w`); state files
//! use that layout, and [`KvCaches::export`] / [`KvCaches::import`] translate.

use retnet_runtime::kernels::attention::{decode_scratch_len, AttentionParams};
use retnet_runtime::GpuBuffer;

use super::Parts;
use crate::config::{AttentionConfig, LayerKind};
use crate::error::{ModelError, Result};

/// Positions a full-attention cache grows by at least.
pub(super) const GROWTH_BLOCK: usize = 1024;
/// Fewest and most keys per workgroup of the split decode (see [`keys_per_split`]).
const MIN_KEYS_PER_SPLIT: u32 = 64;
const MAX_KEYS_PER_SPLIT: u32 = 256;

/// Keys per workgroup of the split decode when a query sees `visible` keys: about 32 splits
/// per head up to 8k keys (64 keys each at 1k: 16 per head), then 256 keys each (a 64k-token
/// cache is 256 workgroups per head). On the H200 a fixed 256 left a 1k-token decode at 4
/// workgroups per head, 300 µs per layer (`docs/perf-notes.md`).
pub(super) fn keys_per_split(visible: usize) -> u32 {
    let target = u32::try_from(visible.div_ceil(32)).unwrap_or(u32::MAX);
    target
        .checked_next_power_of_two()
        .unwrap_or(MAX_KEYS_PER_SPLIT)
        .clamp(MIN_KEYS_PER_SPLIT, MAX_KEYS_PER_SPLIT)
}

/// One attention layer's cache.
pub(super) struct KvCache {
    pub(super) cache: GpuBuffer,
    /// Scratch of the split decode, sized for every key the ring can hold.
    pub(super) partial: GpuBuffer,
    /// Slots: position m is at slot `m % ring`.
    pub(super) ring: usize,
}

/// The caches of one sequence, one per layer (`None` for retention layers).
pub(super) struct KvCaches {
    pub(super) layers: Vec<Option<KvCache>>,
}

impl KvCache {
    fn slot_values(attn: &AttentionConfig) -> usize {
        2 * attn.kv_width()
    }

    /// An empty cache of `ring` slots.
    fn new(model: &Parts, layer: usize, attn: &AttentionConfig, ring: usize) -> Result<Self> {
        let values = ring
            .checked_mul(Self::slot_values(attn))
            .filter(|&v| {
                let bytes = v as u64 * 4;
                let limits = model.device.limits();
                bytes <= limits.max_storage_buffer_binding_size && bytes <= limits.max_buffer_size
            })
            .ok_or_else(|| {
                ModelError::invalid(format!(
                    "the key/value cache of attention layer {layer} would need {ring} positions \
                     of {} bytes, over this GPU's largest buffer binding ({} bytes): use a \
                     shorter context or the CPU backend",
                    Self::slot_values(attn) * 4,
                    model.device.limits().max_storage_buffer_binding_size
                ))
            })?;
        let cache = model.device.create_storage_f32("kv cache", values)?;
        // Sized for the most splits any step can make: every visible key, MIN_KEYS_PER_SPLIT
        // to a split.
        let visible = attn.window.unwrap_or(ring).min(ring);
        let partial_len =
            decode_scratch_len(&decode_params(attn, visible, ring), MIN_KEYS_PER_SPLIT);
        let partial_len = usize::try_from(partial_len)
            .map_err(|_| ModelError::invalid("a decode scratch too large to address"))?;
        let partial = model
            .device
            .create_storage_f32("attention partials", partial_len)?;
        Ok(Self {
            cache,
            partial,
            ring,
        })
    }

    fn bytes(&self) -> u64 {
        self.cache.size() + self.partial.size()
    }
}

/// Parameters of a decode step at `position` (only the sizes matter to the scratch length).
fn decode_params(attn: &AttentionConfig, position: usize, ring: usize) -> AttentionParams {
    AttentionParams {
        queries: 1,
        heads: attn.num_heads as u32,
        kv_heads: attn.num_kv_heads as u32,
        head_dim: attn.head_dim as u32,
        start_pos: position.saturating_sub(1) as u32,
        window: attn.window.map(|w| w as u32),
        ring: ring as u32,
        scale: 1.0,
        q_stride: 0,
        q_offset: 0,
        out_stride: 0,
        out_offset: 0,
    }
}

/// The positions a sequence at `position` keeps, `kept_from(..)..position`: all of them, or
/// the last w (its next query needs w − 1 of them; a state file holds w, as the CPU
/// reference's ring does).
fn kept_from(attn: &AttentionConfig, position: usize) -> usize {
    attn.window.map_or(0, |w| position.saturating_sub(w))
}

/// Runs of consecutive positions `first..end` whose slots are consecutive in a ring of
/// `from` slots and in one of `to` slots: `(position, slot in from, slot in to, length)`.
fn runs(first: usize, end: usize, from: usize, to: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut out = Vec::new();
    let mut m = first;
    while m < end {
        let (a, b) = (m % from, m % to);
        let len = (end - m).min(from - a).min(to - b);
        out.push((m, a, b, len));
        m += len;
    }
    out
}

impl KvCaches {
    /// Empty caches for a sequence at position 0 whose calls feed at most `span` tokens.
    pub(super) fn new(model: &Parts) -> Result<Self> {
        let c = &model.config;
        let layers = (0..c.num_layers)
            .map(|i| match c.layer_kind(i) {
                LayerKind::Retention => Ok(None),
                LayerKind::Attention(a) => {
                    KvCache::new(model, i, a, initial_ring(a, model.max_span())).map(Some)
                }
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Bytes of GPU memory the caches hold.
    pub(super) fn bytes(&self) -> u64 {
        self.layers.iter().flatten().map(KvCache::bytes).sum()
    }

    /// Makes room for a call that feeds `span` tokens to a sequence at `position`: full caches
    /// grow to hold `position + span` positions, window rings to `w − 1 + span` slots, their
    /// kept positions copied over on the GPU. Allocates nothing when there is room (every
    /// decode step but one in [`GROWTH_BLOCK`]s).
    pub(super) fn reserve(&mut self, model: &Parts, position: usize, span: usize) -> Result<()> {
        let c = &model.config;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let (LayerKind::Attention(a), Some(cache)) = (c.layer_kind(i), layer.as_mut()) else {
                continue;
            };
            let end = position
                .checked_add(span)
                .ok_or_else(|| ModelError::invalid("a position past the address space"))?;
            let needed = match a.window {
                None => end,
                Some(w) => w - 1 + span,
            };
            if needed <= cache.ring {
                continue;
            }
            let ring = match a.window {
                None => needed
                    .max(cache.ring + cache.ring / 2)
                    .div_ceil(GROWTH_BLOCK)
                    .saturating_mul(GROWTH_BLOCK),
                Some(_) => needed,
            };
            let grown = KvCache::new(model, i, a, ring)?;
            let slot_bytes = (KvCache::slot_values(a) * 4) as u64;
            for (_, from, to, len) in runs(kept_from(a, position), position, cache.ring, ring) {
                model.device.copy_region(
                    &cache.cache,
                    from as u64 * slot_bytes,
                    &grown.cache,
                    to as u64 * slot_bytes,
                    len as u64 * slot_bytes,
                );
            }
            *cache = grown;
        }
        Ok(())
    }

    /// A copy on the GPU of caches at `position`, with rings of the same sizes.
    pub(super) fn duplicate(&self, model: &Parts, position: usize) -> Result<Self> {
        let c = &model.config;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (LayerKind::Attention(a), Some(cache)) = (c.layer_kind(i), layer.as_ref()) else {
                layers.push(None);
                continue;
            };
            let copy = KvCache::new(model, i, a, cache.ring)?;
            let slot_bytes = (KvCache::slot_values(a) * 4) as u64;
            for (_, from, to, len) in runs(kept_from(a, position), position, cache.ring, cache.ring)
            {
                model.device.copy_region(
                    &cache.cache,
                    from as u64 * slot_bytes,
                    &copy.cache,
                    to as u64 * slot_bytes,
                    len as u64 * slot_bytes,
                );
            }
            layers.push(Some(copy));
        }
        Ok(Self { layers })
    }

    /// Layer `layer`'s cache at `position` in the CPU reference's layout (see
    /// [`crate::reference::kv_cache_len`]): positions from `cached_positions` back, full at
    /// slot m, a window at slot m % w.
    pub(super) async fn export(
        &self,
        model: &Parts,
        layer: usize,
        position: usize,
    ) -> Result<Vec<f32>> {
        let (LayerKind::Attention(a), Some(Some(cache))) =
            (model.config.layer_kind(layer), self.layers.get(layer))
        else {
            return Err(ModelError::invalid(format!(
                "layer {layer} has no key/value cache"
            )));
        };
        let slot = KvCache::slot_values(a);
        let cached = a.cached_positions(position);
        let mut out = vec![0.0f32; cached * slot];
        let cpu_ring = a.window.unwrap_or(usize::MAX);
        for (_, from, to, len) in runs(position - cached, position, cache.ring, cpu_ring) {
            let values = model
                .device
                .read_f32(&cache.cache, from * slot, len * slot)
                .await?;
            if let Some(dst) = out.get_mut(to * slot..(to + len) * slot) {
                dst.copy_from_slice(&values);
            }
        }
        Ok(out)
    }

    /// Writes layer `layer`'s cache at `position` from the CPU reference's layout (the length
    /// already checked by [`crate::reference::check_state_shape`]), growing it as needed.
    pub(super) fn import(
        &mut self,
        model: &Parts,
        layer: usize,
        position: usize,
        values: &[f32],
    ) -> Result<()> {
        let LayerKind::Attention(a) = model.config.layer_kind(layer) else {
            return Err(ModelError::invalid(format!(
                "layer {layer} has no key/value cache"
            )));
        };
        let slot = KvCache::slot_values(a);
        let ring = initial_ring(a, model.max_span()).max(match a.window {
            None => position.div_ceil(GROWTH_BLOCK).saturating_mul(GROWTH_BLOCK),
            Some(_) => 0,
        });
        let cache = KvCache::new(model, layer, a, ring)?;
        let cpu_ring = a.window.unwrap_or(usize::MAX);
        let first = position - a.cached_positions(position);
        for (_, from, to, len) in runs(first, position, cpu_ring, ring) {
            let Some(src) = values.get(from * slot..(from + len) * slot) else {
                return Err(ModelError::invalid(
                    "a key/value cache shorter than its position",
                ));
            };
            model.device.write_f32(&cache.cache, to * slot, src);
        }
        match self.layers.get_mut(layer) {
            Some(entry) => *entry = Some(cache),
            None => return Err(ModelError::invalid("a state of another shape")),
        }
        Ok(())
    }
}

/// The ring a fresh cache starts with: one growth block (full), `w − 1 + span` (window).
fn initial_ring(attn: &AttentionConfig, span: usize) -> usize {
    match attn.window {
        None => GROWTH_BLOCK,
        Some(w) => w - 1 + span,
    }
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn split_sizes_grow_with_the_keys_and_stay_within_bounds() {
        use super::keys_per_split;
        assert_eq!(keys_per_split(1), 64);
        assert_eq!(keys_per_split(1024), 64);
        assert_eq!(keys_per_split(4096), 128);
        assert_eq!(keys_per_split(8192), 256);
        assert_eq!(keys_per_split(65536), 256);
        assert_eq!(keys_per_split(usize::MAX), 256);
        let mut last = 0;
        for visible in (1..100_000).step_by(997) {
            let k = keys_per_split(visible);
            assert!(k >= last && (64..=256).contains(&k));
            last = k;
        }
    }

    #[test]
    fn runs_cover_every_position_once_in_both_rings() {
        for (first, end, from, to) in [(0, 10, 4, 7), (5, 30, 8, 8), (3, 3, 5, 9), (7, 50, 13, 64)]
        {
            let r = runs(first, end, from, to);
            let mut m = first;
            for &(p, a, b, len) in &r {
                assert_eq!(p, m);
                assert!(len > 0 && a + len <= from && b + len <= to);
                assert_eq!((a, b), (p % from, p % to));
                m += len;
            }
            assert_eq!(m, end);
        }
    }
}
