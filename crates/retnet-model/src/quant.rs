//! Quantized weights (`--weights int8|q4`) on both backends: the block formats of
//! `docs/weight-formats.md`, encoded and decoded by one codec ([`QuantFormat`], defined next to
//! the WGSL that decodes it in `retnet-kernels` and re-exported here, because the runtime's
//! `WeightWriter`, which sits below this crate, encodes the GPU buffers with it while the
//! weights stream in). The CPU engines compute with what the GPU reads: [`ModelWeights::store_as`]
//! replaces every weight matrix by its decoded blocks, so the CPU reference ([`CpuModel`]) and
//! the fast CPU engine (built from it) decode exactly the blocks each quantized GPU kernel
//! decodes, and the GPU is checked against them, not only against f16.
//!
//! What is quantized: every projection of every layer (q, k, v, g, out, the FFN's three). The
//! embedding table and the output head stay f16 (the gather reads one row per token, so
//! quantizing it saves no bandwidth; the head sets every logit, and is where 4-bit errors would
//! show most directly); the norm weights, decays and angles stay f32, as for f16 weights.

pub use retnet_runtime::kernels::quant::{QuantFormat, RowEncoder, BLOCK, F16_MAX};

use crate::error::{ModelError, Result};
use crate::gpu::WeightPrecision;
use crate::reference::CpuModel;
use crate::weights::{Linear, ModelWeights};

impl WeightPrecision {
    /// The block format of the layers' matrices (`None` for f32 and f16).
    pub fn quant(self) -> Option<QuantFormat> {
        match self {
            WeightPrecision::Int8 => Some(QuantFormat::Int8),
            WeightPrecision::Q4 => Some(QuantFormat::Q4),
            WeightPrecision::F32 | WeightPrecision::F16 => None,
        }
    }

    /// Short name (`f32`, `f16`, `int8`, `q4`).
    pub fn name(self) -> &'static str {
        match self {
            WeightPrecision::F32 => "f32",
            WeightPrecision::F16 => "f16",
            WeightPrecision::Int8 => "int8",
            WeightPrecision::Q4 => "q4",
        }
    }

    /// Whether the layers' matrices are held in f16 or in a format whose parameters f16 holds
    /// (q4), so that a weight beyond ±65504 is refused.
    pub(crate) fn needs_half_range(self) -> bool {
        matches!(self, WeightPrecision::F16 | WeightPrecision::Q4)
    }
}

impl ModelWeights {
    /// Replaces every weight matrix by the values a GPU load with `precision` computes with:
    /// f32 keeps them; f16 rounds every matrix to f16; int8 and q4 encode and decode each
    /// layer's matrices by blocks of 32 along their rows and round the embeddings and the head
    /// to f16. A weight that f16 cannot hold where f16 is used is refused, as the GPU load
    /// refuses it.
    pub fn store_as(&mut self, precision: WeightPrecision) -> Result<()> {
        if precision == WeightPrecision::F32 {
            return Ok(());
        }
        let half = |m: &mut Linear, name: &str| -> Result<()> {
            check_half_range(name, &m.data)?;
            for v in &mut m.data {
                *v = half::f16::from_f32(*v).to_f32();
            }
            Ok(())
        };
        half(&mut self.embed, "embeddings")?;
        if let Some(head) = &mut self.head {
            half(head, "head")?;
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, m) in [
                ("q_proj", &mut layer.q_proj),
                ("k_proj", &mut layer.k_proj),
                ("v_proj", &mut layer.v_proj),
                ("g_proj", &mut layer.g_proj),
                ("out_proj", &mut layer.out_proj),
                ("ffn_act", &mut layer.ffn_act),
                ("ffn_lin", &mut layer.ffn_lin),
                ("ffn_down", &mut layer.ffn_down),
            ] {
                let name = format!("layer {i} {name}");
                match precision.quant() {
                    None => half(m, &name)?,
                    Some(format) => {
                        if precision.needs_half_range() {
                            check_half_range(&name, &m.data)?;
                        }
                        format.round_trip(&mut m.data, m.in_features);
                    }
                }
            }
        }
        Ok(())
    }
}

impl CpuModel {
    /// This model with its weights as a GPU load with `precision` holds them
    /// ([`ModelWeights::store_as`]): the CPU reference of a quantized GPU model, and what the
    /// fast CPU engine packs for `--weights int8|q4 --backend cpu`. The fingerprint stays the
    /// checkpoint's (as a GPU load of any precision keeps it).
    pub fn stored_as(self, precision: WeightPrecision) -> Result<CpuModel> {
        if precision == WeightPrecision::F32 {
            return Ok(self);
        }
        let fingerprint = self.fingerprint().clone();
        let (config, mut weights) = self.into_parts();
        weights.store_as(precision)?;
        CpuModel::with_fingerprint(config, weights, fingerprint)
    }
}

/// Refuses a weight that f16 cannot hold, naming the matrix.
fn check_half_range(name: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| v.abs() > F16_MAX) {
        None => Ok(()),
        Some(i) => Err(ModelError::NonFinite(format!(
            "{name} holds {} at element {i}, beyond f16's range (±65504): load it with f32 \
             weights",
            values.get(i).copied().unwrap_or(f32::NAN),
        ))),
    }
}
