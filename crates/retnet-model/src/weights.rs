//! Model weights: the tensors a model has ([`TensorRole`]), where they come from
//! ([`WeightSource`]: a checkpoint read lazily, or host f32), their fingerprint, and the host
//! f32 copy the CPU reference computes with ([`ModelWeights`]).

use std::collections::BTreeMap;
use std::path::Path;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::config::{AttentionConfig, DecaySource, Family, LayerKind, ModelConfig, RotaryStyle};
use crate::error::{ModelError, Result};
use crate::safetensors_store::TensorStore;

/// A linear layer's weight, stored `[out, in]` row-major as in PyTorch (`y = x Wᵀ`).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Output features (rows).
    pub out_features: usize,
    /// Input features (columns).
    pub in_features: usize,
    /// `out_features × in_features` values.
    pub data: Vec<f32>,
}

/// The parts of a softmax-attention layer (hybrid checkpoints) beyond its four projections.
///
/// In such a layer `q_proj`, `k_proj`, `v_proj` and `out_proj` of [`LayerWeights`] are the
/// attention's projections (`[H·D, d]`, `[H_kv·D, d]`, `[H_kv·D, d]`, `[d, H·D]`), `g_proj`
/// is empty (`0 × d`) and `head_norm` is `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionWeights {
    /// The layer's shape (heads, window, rotary base).
    pub config: AttentionConfig,
    /// Biases of q, k, v (`qkv_bias`): `[H·D]`, `[H_kv·D]`, `[H_kv·D]`.
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    /// RMSNorm weights `[D]` of each query and key head (before rotary, ε = 1e-5), when the
    /// checkpoint holds them.
    pub qk_norm: Option<[Vec<f32>; 2]>,
    /// Rotary angle per dimension pair, `[D/2]`: 1/θ^(2i/D).
    pub rotary_theta: Vec<f32>,
}

/// ε of the q/k RMSNorms: fla's `RMSNorm` default, which `fla.layers.attn.Attention` keeps.
pub const QK_NORM_EPS: f32 = 1e-5;

/// The weights of one block: retention (or attention, in hybrid checkpoints) and the FFN.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    /// RMSNorm weight before (pre-norm) or after (post-norm) retention, `[d]`.
    pub retention_norm: Vec<f32>,
    /// `[H·K, d]`.
    pub q_proj: Linear,
    /// `[H_kv·K, d]`.
    pub k_proj: Linear,
    /// `[H_kv·V, d]`.
    pub v_proj: Linear,
    /// Output gate, `[H·V, d]`.
    pub g_proj: Linear,
    /// `[d, H·V]`.
    pub out_proj: Linear,
    /// Per-head RMSNorm weight `[V]`, shared by all heads (fla); `None` when the norm has none.
    pub head_norm: Option<Vec<f32>>,
    /// RMSNorm weight around the FFN, `[d]`.
    pub ffn_norm: Vec<f32>,
    /// The activated FFN branch (torchscale `fc1`, fla `gate_proj`), `[f, d]`.
    pub ffn_act: Linear,
    /// The linear FFN branch (torchscale `gate`, fla `up_proj`), `[f, d]`.
    pub ffn_lin: Linear,
    /// FFN output (torchscale `fc2`, fla `down_proj`), `[d, f]`.
    pub ffn_down: Linear,
    /// `Some` for a softmax-attention layer of a hybrid checkpoint (see [`AttentionWeights`]).
    pub attention: Option<AttentionWeights>,
}

/// All weights of a model, converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelWeights {
    /// Token embeddings `[vocab, d]`.
    pub embed: Linear,
    /// `layernorm_embedding` weight, `[d]`.
    pub embed_norm: Option<Vec<f32>>,
    /// The blocks, first to last.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm weight (pre-norm models), `[d]`.
    pub final_norm: Option<Vec<f32>>,
    /// Output head `[vocab, d]`; `None` when tied to the embeddings.
    pub head: Option<Linear>,
    /// log γ_h per head, `[H]`.
    pub log_decay: Vec<f32>,
    /// Rotary angle per dimension pair, `[K/2]`: pair i turns by n·θ_i at position n.
    pub rotary_theta: Vec<f32>,
}

impl ModelWeights {
    /// The output head: its own matrix, or the embeddings when tied.
    pub fn head(&self) -> &Linear {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// Reads every tensor the config requires from a model directory.
    pub fn load(config: &ModelConfig, dir: &Path) -> Result<Self> {
        let store = TensorStore::open(dir)?;
        Self::from_store(config, &store, &mut |_, _| {})
    }

    /// Reads every tensor the config requires from opened safetensors files, calling
    /// `progress(layers_done, layers_total)` after each layer (for progress bars).
    pub fn from_store(
        config: &ModelConfig,
        store: &TensorStore,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let source = CheckpointWeights::new(config, store)?;
        Ok(Self::from_source(config, &source, progress)?.0)
    }

    /// Reads every tensor of `source` into host f32, with the weights' fingerprint.
    pub fn from_source(
        config: &ModelConfig,
        source: &dyn WeightSource,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Self, WeightsFingerprint)> {
        let mut reader = WeightReader::new(source);
        let d = config.d_model;
        let f = config.ffn_dim;
        let (vw, kvw) = (config.value_width(), config.kv_value_width());
        // Grown as layers are read: a config's layer count is not trusted before its tensors.
        let mut layers = Vec::new();
        for i in 0..config.num_layers {
            let r = &mut reader;
            let role = |t| TensorRole::Layer(i, t);
            if let LayerKind::Attention(attn) = config.layer_kind(i) {
                let (qw, kw) = (attn.query_width(), attn.kv_width());
                let qkv_bias = if attn.qkv_bias {
                    Some([
                        r.read(role(LayerTensor::AttnQBias))?,
                        r.read(role(LayerTensor::AttnKBias))?,
                        r.read(role(LayerTensor::AttnVBias))?,
                    ])
                } else {
                    None
                };
                let qk_norm = match (
                    r.optional(role(LayerTensor::AttnQNorm))?,
                    r.optional(role(LayerTensor::AttnKNorm))?,
                ) {
                    (Some(q), Some(k)) => Some([q, k]),
                    (None, None) => None,
                    _ => {
                        return Err(ModelError::invalid(format!(
                            "layer {i} holds only one of the q and k norm weights"
                        )))
                    }
                };
                layers.push(LayerWeights {
                    retention_norm: r.read(role(LayerTensor::RetentionNorm))?,
                    q_proj: r.linear(role(LayerTensor::Q), qw, d)?,
                    k_proj: r.linear(role(LayerTensor::K), kw, d)?,
                    v_proj: r.linear(role(LayerTensor::V), kw, d)?,
                    g_proj: Linear {
                        out_features: 0,
                        in_features: d,
                        data: Vec::new(),
                    },
                    out_proj: r.linear(role(LayerTensor::Out), d, qw)?,
                    head_norm: None,
                    ffn_norm: r.read(role(LayerTensor::FfnNorm))?,
                    ffn_act: r.linear(role(LayerTensor::FfnAct), f, d)?,
                    ffn_lin: r.linear(role(LayerTensor::FfnLin), f, d)?,
                    ffn_down: r.linear(role(LayerTensor::FfnDown), d, f)?,
                    attention: Some(AttentionWeights {
                        config: attn.clone(),
                        qkv_bias,
                        qk_norm,
                        rotary_theta: attention_rotary(attn.rope_theta, attn.head_dim),
                    }),
                });
                progress(i + 1, config.num_layers);
                continue;
            }
            let head_norm = r.optional(role(LayerTensor::HeadNorm))?;
            layers.push(LayerWeights {
                retention_norm: r.read(role(LayerTensor::RetentionNorm))?,
                q_proj: r.linear(role(LayerTensor::Q), config.query_width(), d)?,
                k_proj: r.linear(role(LayerTensor::K), config.key_width(), d)?,
                v_proj: r.linear(role(LayerTensor::V), kvw, d)?,
                g_proj: r.linear(role(LayerTensor::G), vw, d)?,
                out_proj: r.linear(role(LayerTensor::Out), d, vw)?,
                head_norm,
                ffn_norm: r.read(role(LayerTensor::FfnNorm))?,
                ffn_act: r.linear(role(LayerTensor::FfnAct), f, d)?,
                ffn_lin: r.linear(role(LayerTensor::FfnLin), f, d)?,
                ffn_down: r.linear(role(LayerTensor::FfnDown), d, f)?,
                attention: None,
            });
            progress(i + 1, config.num_layers);
        }
        // In the order the loader has always read them (the first missing tensor is named).
        let vocab = config.vocab_size;
        let head = match source.len(TensorRole::Head) {
            Some(_) => Some(reader.linear(TensorRole::Head, vocab, d)?),
            None => None,
        };
        let log_decay = reader.read(TensorRole::LogDecay)?;
        let rotary_theta = reader.read(TensorRole::RotaryTheta)?;
        let weights = Self {
            embed: reader.linear(TensorRole::Embed, vocab, d)?,
            embed_norm: reader.optional(TensorRole::EmbedNorm)?,
            layers,
            final_norm: reader.optional(TensorRole::FinalNorm)?,
            head,
            log_decay,
            rotary_theta,
        };
        Ok((weights, reader.fingerprint()))
    }

    /// The fingerprint of these weights: the same as that of the checkpoint they were read
    /// from ([`WeightsFingerprint`] hashes the values, not the file).
    pub fn fingerprint(&self) -> WeightsFingerprint {
        let mut reader = WeightReader::new(self);
        for role in TensorRole::all(self.layers.len()) {
            if let Some(len) = WeightSource::len(self, role) {
                let mut chunk = vec![0.0; len.min(READ_CHUNK)];
                // Reading from memory cannot fail but for a role this struct lacks.
                let _ = reader.stream(role, &mut chunk, &mut |_| Ok(()));
            }
        }
        reader.fingerprint()
    }
}

impl ModelWeights {
    /// Checks that these weights fit `config`: one [`LayerWeights`] per layer (attention
    /// layers where the config has them), every tensor of the shape the config implies
    /// (matrices with matching `out_features × in_features`), every value finite and every log
    /// decay ≤ 0. [`crate::CpuModel::new`] checks this.
    pub fn check(&self, config: &ModelConfig) -> Result<()> {
        if self.layers.len() != config.num_layers {
            return Err(ModelError::invalid(format!(
                "the weights have {} layers, the config {}",
                self.layers.len(),
                config.num_layers
            )));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let attention = matches!(config.layer_kind(i), LayerKind::Attention(_));
            if layer.attention.is_some() != attention {
                return Err(ModelError::invalid(format!(
                    "layer {i} of the weights is {}, but the config makes it {}",
                    if layer.attention.is_some() {
                        "attention"
                    } else {
                        "retention"
                    },
                    if attention { "attention" } else { "retention" },
                )));
            }
            for (role, linear) in [
                (LayerTensor::Q, &layer.q_proj),
                (LayerTensor::K, &layer.k_proj),
                (LayerTensor::V, &layer.v_proj),
                (LayerTensor::G, &layer.g_proj),
                (LayerTensor::Out, &layer.out_proj),
                (LayerTensor::FfnAct, &layer.ffn_act),
                (LayerTensor::FfnLin, &layer.ffn_lin),
                (LayerTensor::FfnDown, &layer.ffn_down),
            ] {
                let shape = TensorRole::Layer(i, role).shape(config);
                let expected = shape.unwrap_or_else(|| vec![0, config.d_model]);
                let found = vec![linear.out_features, linear.in_features];
                if found != expected
                    || Some(linear.data.len())
                        != expected.iter().try_fold(1usize, |a, &n| a.checked_mul(n))
                {
                    return Err(ModelError::ShapeMismatch {
                        name: TensorRole::Layer(i, role).label(),
                        expected,
                        found,
                    });
                }
            }
        }
        for (role, linear) in [
            (TensorRole::Embed, Some(&self.embed)),
            (TensorRole::Head, self.head.as_ref()),
        ] {
            if let (Some(l), Some(shape)) = (linear, role.shape(config)) {
                if vec![l.out_features, l.in_features] != shape {
                    return Err(ModelError::ShapeMismatch {
                        name: role.label(),
                        expected: shape,
                        found: vec![l.out_features, l.in_features],
                    });
                }
            }
        }
        for role in TensorRole::all(config.num_layers) {
            let expected = role.shape(config);
            let held = WeightSource::len(self, role);
            let optional = matches!(
                role,
                TensorRole::Layer(_, LayerTensor::AttnQNorm | LayerTensor::AttnKNorm)
            );
            let want = expected
                .as_ref()
                .and_then(|s| s.iter().try_fold(1usize, |a, &n| a.checked_mul(n)));
            let fits = match (want, held) {
                (None, None) => true,
                (Some(w), Some(h)) => w == h,
                (Some(_), None) => optional,
                (None, Some(_)) => false,
            };
            if !fits {
                return Err(ModelError::ShapeMismatch {
                    name: role.label(),
                    expected: expected.unwrap_or_default(),
                    found: held.map_or_else(Vec::new, |n| vec![n]),
                });
            }
            if let Some(values) = self.slice(role) {
                check_values(self, role, 0, values)?;
            }
        }
        Ok(())
    }
}

/// Values per piece when a tensor is read in pieces (4 MiB of f32).
pub const READ_CHUNK: usize = 1 << 20;

/// One tensor of the model by what it is, however a checkpoint family names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TensorRole {
    /// Token embeddings `[vocab, d]`.
    Embed,
    /// `layernorm_embedding`, `[d]` (torchscale, when the config asks for it).
    EmbedNorm,
    /// A tensor of layer `.0`.
    Layer(usize, LayerTensor),
    /// The final RMSNorm, `[d]` (pre-norm models).
    FinalNorm,
    /// The output head `[vocab, d]` (untied models).
    Head,
    /// log γ_h per head, `[H]` (a checkpoint buffer or the formula).
    LogDecay,
    /// Rotary angle per dimension pair, `[K/2]` (a checkpoint buffer or the formula).
    RotaryTheta,
}

/// The tensors of one layer, in the order of [`LayerWeights`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum LayerTensor {
    RetentionNorm,
    Q,
    K,
    V,
    G,
    Out,
    HeadNorm,
    FfnNorm,
    FfnAct,
    FfnLin,
    FfnDown,
    /// Attention layers (hybrid checkpoints): q, k, v biases and q, k RMSNorm weights.
    AttnQBias,
    AttnKBias,
    AttnVBias,
    AttnQNorm,
    AttnKNorm,
}

impl LayerTensor {
    const ALL: [LayerTensor; 16] = [
        LayerTensor::RetentionNorm,
        LayerTensor::Q,
        LayerTensor::K,
        LayerTensor::V,
        LayerTensor::G,
        LayerTensor::Out,
        LayerTensor::HeadNorm,
        LayerTensor::FfnNorm,
        LayerTensor::FfnAct,
        LayerTensor::FfnLin,
        LayerTensor::FfnDown,
        LayerTensor::AttnQBias,
        LayerTensor::AttnKBias,
        LayerTensor::AttnVBias,
        LayerTensor::AttnQNorm,
        LayerTensor::AttnKNorm,
    ];
}

impl TensorRole {
    /// Every role a model of `layers` layers may have, in load order (a config decides which
    /// of the optional ones it has: [`TensorRole::shape`]).
    pub fn all(layers: usize) -> impl Iterator<Item = TensorRole> {
        let layer_roles = (0..layers).flat_map(|i| {
            LayerTensor::ALL
                .into_iter()
                .map(move |t| TensorRole::Layer(i, t))
        });
        [TensorRole::Embed, TensorRole::EmbedNorm]
            .into_iter()
            .chain(layer_roles)
            .chain([
                TensorRole::FinalNorm,
                TensorRole::Head,
                TensorRole::LogDecay,
                TensorRole::RotaryTheta,
            ])
    }

    /// The shape this role has in a model of `config` (`[out, in]` for a matrix), or `None`
    /// when such a model has no such tensor (an optional norm, a tied head, a layer past the
    /// last).
    pub fn shape(self, config: &ModelConfig) -> Option<Vec<usize>> {
        let c = config;
        let (d, f) = (c.d_model, c.ffn_dim);
        Some(match self {
            TensorRole::Embed => vec![c.vocab_size, d],
            TensorRole::EmbedNorm if c.embedding_norm && c.family == Family::Torchscale => {
                vec![d]
            }
            TensorRole::FinalNorm if c.final_norm => vec![d],
            TensorRole::Head if !c.tied_head => vec![c.vocab_size, d],
            TensorRole::EmbedNorm | TensorRole::FinalNorm | TensorRole::Head => return None,
            TensorRole::LogDecay => vec![c.num_heads],
            TensorRole::RotaryTheta => vec![c.head_k_dim / 2],
            TensorRole::Layer(i, _) if i >= c.num_layers => return None,
            TensorRole::Layer(i, t) if c.layer_kind(i) != LayerKind::Retention => {
                let LayerKind::Attention(a) = c.layer_kind(i) else {
                    return None;
                };
                let (qw, kw) = (a.query_width(), a.kv_width());
                match t {
                    LayerTensor::RetentionNorm | LayerTensor::FfnNorm => vec![d],
                    LayerTensor::Q => vec![qw, d],
                    LayerTensor::K | LayerTensor::V => vec![kw, d],
                    LayerTensor::Out => vec![d, qw],
                    LayerTensor::FfnAct | LayerTensor::FfnLin => vec![f, d],
                    LayerTensor::FfnDown => vec![d, f],
                    LayerTensor::AttnQBias if a.qkv_bias => vec![qw],
                    LayerTensor::AttnKBias | LayerTensor::AttnVBias if a.qkv_bias => vec![kw],
                    // Only where the checkpoint holds them (see AttentionConfig::qk_norm).
                    LayerTensor::AttnQNorm | LayerTensor::AttnKNorm if a.qk_norm => {
                        vec![a.head_dim]
                    }
                    _ => return None,
                }
            }
            TensorRole::Layer(_, t) => match t {
                LayerTensor::RetentionNorm | LayerTensor::FfnNorm => vec![d],
                LayerTensor::Q => vec![c.query_width(), d],
                LayerTensor::K => vec![c.key_width(), d],
                LayerTensor::V => vec![c.kv_value_width(), d],
                LayerTensor::G => vec![c.value_width(), d],
                LayerTensor::Out => vec![d, c.value_width()],
                LayerTensor::HeadNorm if c.head_norm_weight => vec![c.head_v_dim],
                LayerTensor::HeadNorm => return None,
                LayerTensor::FfnAct | LayerTensor::FfnLin => vec![f, d],
                LayerTensor::FfnDown => vec![d, f],
                LayerTensor::AttnQBias
                | LayerTensor::AttnKBias
                | LayerTensor::AttnVBias
                | LayerTensor::AttnQNorm
                | LayerTensor::AttnKNorm => return None,
            },
        })
    }

    /// A stable name (part of the weights fingerprint: never change one).
    fn label(self) -> String {
        match self {
            TensorRole::Layer(i, t) => format!("layers.{i}.{t:?}"),
            other => format!("{other:?}"),
        }
    }
}

/// Where a model's weights come from, read tensor by tensor in pieces: a checkpoint's files
/// ([`CheckpointWeights`], nothing is read before it is asked for) or weights already in host
/// memory ([`ModelWeights`]).
pub trait WeightSource {
    /// Elements of the tensor, or `None` when the model has no such tensor.
    fn len(&self, role: TensorRole) -> Option<usize>;
    /// Decodes elements `start .. start + out.len()` of the tensor to f32.
    fn read(&self, role: TensorRole, start: usize, out: &mut [f32]) -> Result<()>;
    /// Called once a tensor has been read: the source may drop what it holds of it.
    fn release(&self, role: TensorRole) {
        let _ = role;
    }
    /// Checks, without reading values, that the tensor can be read (present, of the shape the
    /// config implies, of a readable dtype): readers call this before allocating for it.
    fn check(&self, role: TensorRole) -> Result<()> {
        let _ = role;
        Ok(())
    }
    /// The tensor's name in error messages (the checkpoint's own name where there is one).
    fn name(&self, role: TensorRole) -> String {
        role.label()
    }
}

/// Reads tensors from a [`WeightSource`] and hashes every value that passes, for
/// [`WeightsFingerprint`].
pub struct WeightReader<'s> {
    source: &'s dyn WeightSource,
    digests: BTreeMap<TensorRole, u64>,
}

impl<'s> WeightReader<'s> {
    /// A reader over `source`.
    pub fn new(source: &'s dyn WeightSource) -> Self {
        Self {
            source,
            digests: BTreeMap::new(),
        }
    }

    /// The source.
    pub fn source(&self) -> &'s dyn WeightSource {
        self.source
    }

    /// Reads a whole tensor into host memory.
    pub fn read(&mut self, role: TensorRole) -> Result<Vec<f32>> {
        let len = self.len(role)?;
        self.source.check(role)?;
        let mut values = vec![0.0; len];
        self.source.read(role, 0, &mut values)?;
        check_values(self.source, role, 0, &values)?;
        self.source.release(role);
        self.digests.insert(role, xxh3_64(bytes_of(&values)));
        Ok(values)
    }

    /// Reads a tensor that the model may lack.
    pub fn optional(&mut self, role: TensorRole) -> Result<Option<Vec<f32>>> {
        match self.source.len(role) {
            Some(_) => self.read(role).map(Some),
            None => Ok(None),
        }
    }

    fn linear(
        &mut self,
        role: TensorRole,
        out_features: usize,
        in_features: usize,
    ) -> Result<Linear> {
        Ok(Linear {
            out_features,
            in_features,
            data: self.read(role)?,
        })
    }

    /// Reads a tensor piece by piece through `chunk` (whose length is the piece size), handing
    /// each piece to `sink`.
    pub fn stream(
        &mut self,
        role: TensorRole,
        chunk: &mut [f32],
        sink: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        let mut piece = self.piece(role)?;
        while let Some(values) = piece.next(self.source, chunk)? {
            sink(values)?;
        }
        self.finish(piece);
        Ok(())
    }

    /// Starts reading a tensor piece by piece: [`TensorPieces::next`] until `None`, then
    /// [`WeightReader::finish`]. (For loaders that await between pieces.)
    pub fn piece(&self, role: TensorRole) -> Result<TensorPieces> {
        self.source.check(role)?;
        Ok(TensorPieces {
            role,
            len: self.len(role)?,
            done: 0,
            hasher: Xxh3::new(),
        })
    }

    /// Records a tensor read through [`WeightReader::piece`].
    pub fn finish(&mut self, pieces: TensorPieces) {
        self.source.release(pieces.role);
        self.digests.insert(pieces.role, pieces.hasher.digest());
    }

    fn len(&self, role: TensorRole) -> Result<usize> {
        self.source
            .len(role)
            .ok_or_else(|| ModelError::invalid(format!("the model has no tensor {role:?}")))
    }

    /// The fingerprint of every tensor read so far.
    pub fn fingerprint(&self) -> WeightsFingerprint {
        let mut hasher = Xxh3::new();
        for (role, digest) in &self.digests {
            hasher.update(role.label().as_bytes());
            hasher.update(&digest.to_le_bytes());
        }
        WeightsFingerprint(format!("{:016x}", hasher.digest()))
    }
}

/// A tensor being read piece by piece ([`WeightReader::piece`]).
pub struct TensorPieces {
    role: TensorRole,
    len: usize,
    done: usize,
    hasher: Xxh3,
}

impl TensorPieces {
    /// Elements of the tensor.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements read so far.
    pub fn done(&self) -> usize {
        self.done
    }

    /// The next piece (at most `chunk.len()` values, decoded into `chunk`), or `None` at the end.
    pub fn next<'c>(
        &mut self,
        source: &dyn WeightSource,
        chunk: &'c mut [f32],
    ) -> Result<Option<&'c [f32]>> {
        let n = chunk.len().min(self.len - self.done);
        if n == 0 {
            return Ok(None);
        }
        let (piece, _) = chunk.split_at_mut(n);
        source.read(self.role, self.done, piece)?;
        check_values(source, self.role, self.done, piece)?;
        self.done += n;
        self.hasher.update(bytes_of(piece));
        Ok(Some(piece))
    }
}

/// Refuses values no model computes with: NaN or infinite ones anywhere (stored tensors are
/// checked as they are decoded too, formulas and in-memory weights here), and a log decay
/// above 0 (a decay γ > 1 makes the state grow without bound).
fn check_values(
    source: &dyn WeightSource,
    role: TensorRole,
    start: usize,
    values: &[f32],
) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite(format!(
            "tensor `{}` holds a non-finite value ({}) at element {}",
            source.name(role),
            values.get(i).copied().unwrap_or(f32::NAN),
            start + i
        )));
    }
    if role == TensorRole::LogDecay {
        if let Some(i) = values.iter().position(|&v| v > 0.0) {
            return Err(ModelError::NonFinite(format!(
                "tensor `{}` holds the log decay {} at element {}: a decay above 1 grows \
                 without bound (log γ must be ≤ 0)",
                source.name(role),
                values.get(i).copied().unwrap_or(f32::NAN),
                start + i
            )));
        }
    }
    Ok(())
}

/// The little-endian bytes of f32 values (every target this crate builds for is little-endian).
fn bytes_of(values: &[f32]) -> &[u8] {
    bytemuck::cast_slice(values)
}

/// A hash of every weight value (decoded to f32, whatever the file's dtype, naming or sharding),
/// so that a recurrent state saved from one checkpoint is refused by another with the same
/// config. xxh3 over each tensor's values, then over the tensors by role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WeightsFingerprint(pub String);

impl std::fmt::Display for WeightsFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl WeightSource for ModelWeights {
    fn len(&self, role: TensorRole) -> Option<usize> {
        self.slice(role).map(<[f32]>::len)
    }

    fn read(&self, role: TensorRole, start: usize, out: &mut [f32]) -> Result<()> {
        let values = self
            .slice(role)
            .and_then(|v| v.get(start..start.checked_add(out.len())?))
            .ok_or_else(|| {
                ModelError::invalid(format!("{role:?}: no elements {start}..+{}", out.len()))
            })?;
        out.copy_from_slice(values);
        Ok(())
    }
}

impl ModelWeights {
    fn slice(&self, role: TensorRole) -> Option<&[f32]> {
        Some(match role {
            TensorRole::Embed => &self.embed.data,
            TensorRole::EmbedNorm => self.embed_norm.as_deref()?,
            TensorRole::FinalNorm => self.final_norm.as_deref()?,
            TensorRole::Head => &self.head.as_ref()?.data,
            TensorRole::LogDecay => &self.log_decay,
            TensorRole::RotaryTheta => &self.rotary_theta,
            TensorRole::Layer(i, t) => {
                let l = self.layers.get(i)?;
                let attn = l.attention.as_ref();
                match t {
                    LayerTensor::G if attn.is_some() => return None,
                    LayerTensor::AttnQBias => &attn?.qkv_bias.as_ref()?[0],
                    LayerTensor::AttnKBias => &attn?.qkv_bias.as_ref()?[1],
                    LayerTensor::AttnVBias => &attn?.qkv_bias.as_ref()?[2],
                    LayerTensor::AttnQNorm => &attn?.qk_norm.as_ref()?[0],
                    LayerTensor::AttnKNorm => &attn?.qk_norm.as_ref()?[1],
                    LayerTensor::RetentionNorm => &l.retention_norm,
                    LayerTensor::Q => &l.q_proj.data,
                    LayerTensor::K => &l.k_proj.data,
                    LayerTensor::V => &l.v_proj.data,
                    LayerTensor::G => &l.g_proj.data,
                    LayerTensor::Out => &l.out_proj.data,
                    LayerTensor::HeadNorm => l.head_norm.as_deref()?,
                    LayerTensor::FfnNorm => &l.ffn_norm,
                    LayerTensor::FfnAct => &l.ffn_act.data,
                    LayerTensor::FfnLin => &l.ffn_lin.data,
                    LayerTensor::FfnDown => &l.ffn_down.data,
                }
            }
        })
    }
}

/// The weights of a checkpoint's safetensors files, read lazily: a tensor is only touched when
/// asked for, piece by piece, and its pages of the memory map are released once it is read.
pub struct CheckpointWeights<'a> {
    config: &'a ModelConfig,
    store: &'a TensorStore,
    names: CheckpointNames,
}

/// Where a role's values come from.
enum Resolved {
    /// A tensor of the checkpoint, of this shape.
    Stored(String, Vec<usize>),
    /// Derived values (a formula, or a buffer stored in another layout).
    Computed(Vec<f32>),
}

impl<'a> CheckpointWeights<'a> {
    /// The weights of `store` for a model of `config`: checks the tensor names' family and
    /// the layer count (shapes are checked as each tensor is read).
    pub fn new(config: &'a ModelConfig, store: &'a TensorStore) -> Result<Self> {
        config.check()?;
        // Every layer has several tensors, so a layer count above the files' tensor count is
        // refused before anything iterates over the layers.
        let tensors = store.names().count();
        if config.num_layers > tensors {
            return Err(ModelError::invalid(format!(
                "the config's layer count {} is more than the weights files' {tensors} tensors \
                 can hold",
                config.num_layers
            )));
        }
        let names = CheckpointNames::detect(config, store)?;
        names.check_layer_count(config, store)?;
        Ok(Self {
            config,
            store,
            names,
        })
    }

    /// Checks every tensor the config requires: present, of the right shape and a readable
    /// dtype, without reading any values.
    pub fn check(&self) -> Result<()> {
        for role in TensorRole::all(self.config.num_layers) {
            if self.len(role).is_none() {
                continue; // a tensor this model does not have
            }
            if let Resolved::Stored(name, shape) = self.resolve(role)? {
                self.store.tensor(&name, &shape)?;
            }
        }
        Ok(())
    }

    fn resolve(&self, role: TensorRole) -> Result<Resolved> {
        let config = self.config;
        let names = &self.names;
        let shape = role
            .shape(config)
            .ok_or_else(|| ModelError::invalid(format!("the model has no tensor {role:?}")))?;
        let stored = |name: &str| Resolved::Stored(name.to_string(), shape.clone());
        Ok(match role {
            TensorRole::Embed => stored(&names.embed),
            TensorRole::EmbedNorm => match &names.embed_norm {
                Some(name) => stored(name),
                None => return Err(ModelError::invalid("this family has no embedding norm")),
            },
            TensorRole::FinalNorm => stored(&names.final_norm),
            TensorRole::Head => {
                let name = names
                    .head_candidates
                    .iter()
                    .find(|n| self.store.contains(n))
                    .ok_or_else(|| ModelError::MissingTensor {
                        name: names.head_candidates.join("` or `"),
                        dir: self.store.dir().to_path_buf(),
                    })?;
                stored(name)
            }
            TensorRole::LogDecay => match (config.decay_source, &names.decay_buffer) {
                (DecaySource::CheckpointBuffer, Some(name)) if self.store.contains(name) => {
                    stored(name)
                }
                _ => Resolved::Computed(decay_formula(config.num_heads)),
            },
            TensorRole::RotaryTheta => match (&names.angle_buffer, config.rotary) {
                (Some(name), RotaryStyle::InterleavedPairs) if self.store.contains(name) => {
                    // torchscale stores each pair's angle twice: [θ0, θ0, θ1, θ1, …].
                    let angle = self.store.read_f32(name, &[config.head_k_dim])?;
                    Resolved::Computed(angle.iter().step_by(2).copied().collect())
                }
                _ => Resolved::Computed(rotary_formula(config.rotary, config.head_k_dim)),
            },
            TensorRole::Layer(i, t) => {
                let suffix = match t {
                    LayerTensor::RetentionNorm => names.retention_norm,
                    LayerTensor::Q => names.q_proj,
                    LayerTensor::K => names.k_proj,
                    LayerTensor::V => names.v_proj,
                    LayerTensor::G => names.g_proj,
                    LayerTensor::Out => names.out_proj,
                    LayerTensor::HeadNorm => {
                        let fused = names.layer(i, names.head_norm_fused);
                        if self.store.contains(&fused) {
                            return Ok(stored(&fused));
                        }
                        names.head_norm_plain
                    }
                    LayerTensor::FfnNorm => names.ffn_norm,
                    LayerTensor::FfnAct => names.ffn_act,
                    LayerTensor::FfnLin => names.ffn_lin,
                    LayerTensor::FfnDown => names.ffn_down,
                    LayerTensor::AttnQBias => "attn.q_proj.bias",
                    LayerTensor::AttnKBias => "attn.k_proj.bias",
                    LayerTensor::AttnVBias => "attn.v_proj.bias",
                    LayerTensor::AttnQNorm => "attn.q_norm.weight",
                    LayerTensor::AttnKNorm => "attn.k_norm.weight",
                };
                stored(&names.layer(i, suffix))
            }
        })
    }
}

impl WeightSource for CheckpointWeights<'_> {
    fn len(&self, role: TensorRole) -> Option<usize> {
        if let TensorRole::Layer(_, LayerTensor::AttnQNorm | LayerTensor::AttnKNorm) = role {
            // fla 0.6.0 writes `qk_norm: true` without the norms (see AttentionConfig::qk_norm).
            match self.resolve(role) {
                Ok(Resolved::Stored(name, _)) if self.store.contains(&name) => {}
                _ => return None,
            }
        }
        role.shape(self.config).map(|s| s.iter().product())
    }

    fn read(&self, role: TensorRole, start: usize, out: &mut [f32]) -> Result<()> {
        match self.resolve(role)? {
            Resolved::Stored(name, shape) => self.store.tensor(&name, &shape)?.decode(start, out),
            Resolved::Computed(values) => {
                let values = start
                    .checked_add(out.len())
                    .and_then(|end| values.get(start..end))
                    .ok_or_else(|| ModelError::invalid(format!("{role:?}: read past its end")))?;
                out.copy_from_slice(values);
                Ok(())
            }
        }
    }

    fn check(&self, role: TensorRole) -> Result<()> {
        if let Resolved::Stored(name, shape) = self.resolve(role)? {
            self.store.tensor(&name, &shape)?;
        }
        Ok(())
    }

    fn name(&self, role: TensorRole) -> String {
        match self.resolve(role) {
            Ok(Resolved::Stored(name, _)) => name,
            _ => role.label(),
        }
    }

    fn release(&self, role: TensorRole) {
        if matches!(role, TensorRole::LogDecay | TensorRole::RotaryTheta) {
            return;
        }
        if let Ok(Resolved::Stored(name, shape)) = self.resolve(role) {
            if let Ok(tensor) = self.store.tensor(&name, &shape) {
                tensor.release();
            }
        }
    }
}

/// fla's `RotaryEmbedding(dim, base)`: inv_freq_i = 1/θ^(2i/D), i < D/2, as f32.
pub fn attention_rotary(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect()
}

/// log γ_h = log(1 − 2^(−5−h)). γ is rounded to f32 as both peers compute it: for h ≥ 20 the
/// subtraction rounds to 1, so those heads do not decay at all (below that it is exact). The
/// logarithm of that γ is taken in f64 and rounded once to f32, so log γ, from which every
/// kernel derives γ^n and γ^n − 1, carries no error beyond its own rounding.
pub fn decay_formula(heads: usize) -> Vec<f32> {
    (0..heads)
        .map(|h| {
            let exponent = -5.0f32 - h as f32;
            let gamma = 1.0f32 - exponent.exp2();
            f64::from(gamma).ln() as f32
        })
        .collect()
}

/// The rotary angle of each pair for a key dim of `k`.
pub fn rotary_formula(style: RotaryStyle, k: usize) -> Vec<f32> {
    let pairs = k / 2;
    (0..pairs)
        .map(|i| {
            let exponent = match style {
                // torch.linspace(0, 1, K/2)
                RotaryStyle::InterleavedPairs if pairs > 1 => i as f64 / (pairs - 1) as f64,
                RotaryStyle::InterleavedPairs => 0.0,
                RotaryStyle::SplitHalves => (2 * i) as f64 / k as f64,
            };
            (1.0 / 10000f64.powf(exponent)) as f32
        })
        .collect()
}

/// The tensor names of one checkpoint family and prefix.
struct CheckpointNames {
    layer_prefix: String,
    embed: String,
    embed_norm: Option<String>,
    final_norm: String,
    head_candidates: Vec<String>,
    decay_buffer: Option<String>,
    angle_buffer: Option<String>,
    retention_norm: &'static str,
    q_proj: &'static str,
    k_proj: &'static str,
    v_proj: &'static str,
    g_proj: &'static str,
    out_proj: &'static str,
    head_norm_fused: &'static str,
    head_norm_plain: &'static str,
    ffn_norm: &'static str,
    ffn_act: &'static str,
    ffn_lin: &'static str,
    ffn_down: &'static str,
}

impl CheckpointNames {
    fn detect(config: &ModelConfig, store: &TensorStore) -> Result<Self> {
        match config.family {
            Family::Torchscale => {
                // plain torchscale state dict, fairseq (`decoder.`), syncdoth (`model.`)
                let prefix = ["", "decoder.", "model."]
                    .into_iter()
                    .find(|p| store.contains(&format!("{p}embed_tokens.weight")))
                    .ok_or_else(|| ModelError::MissingTensor {
                        name: "embed_tokens.weight` (or `decoder.`/`model.` prefixed".into(),
                        dir: store.dir().to_path_buf(),
                    })?;
                let p = |s: &str| format!("{prefix}{s}");
                let first = p("layers.0.");
                if store.contains(&format!("{first}retention.q_proj.bias"))
                    || (store.contains(&format!("{first}ffn.fc1.weight"))
                        && !store.contains(&format!("{first}ffn.gate.weight")))
                {
                    return Err(ModelError::unsupported(
                        format!("{first}ffn / retention biases"),
                        "this is a torchscale v1 checkpoint (biased projections, FFN without \
                         gate); only v2 (torchscale 0.3.0) checkpoints are supported",
                    ));
                }
                let (norm_before, norm_after) =
                    ("retention_layer_norm.weight", "final_layer_norm.weight");
                Ok(Self {
                    layer_prefix: p("layers."),
                    embed: p("embed_tokens.weight"),
                    embed_norm: Some(p("layernorm_embedding.weight")),
                    final_norm: p("layer_norm.weight"),
                    head_candidates: vec![p("output_projection.weight"), "lm_head.weight".into()],
                    decay_buffer: Some(p("retnet_rel_pos.decay")),
                    angle_buffer: Some(p("retnet_rel_pos.angle")),
                    retention_norm: norm_before,
                    q_proj: "retention.q_proj.weight",
                    k_proj: "retention.k_proj.weight",
                    v_proj: "retention.v_proj.weight",
                    g_proj: "retention.g_proj.weight",
                    out_proj: "retention.out_proj.weight",
                    head_norm_fused: "retention.group_norm.weight",
                    head_norm_plain: "retention.group_norm.weight",
                    ffn_norm: norm_after,
                    ffn_act: "ffn.fc1.weight",
                    ffn_lin: "ffn.gate.weight",
                    ffn_down: "ffn.fc2.weight",
                })
            }
            Family::Fla => Ok(Self {
                layer_prefix: "model.layers.".into(),
                embed: "model.embeddings.weight".into(),
                embed_norm: None,
                final_norm: "model.norm.weight".into(),
                head_candidates: vec!["lm_head.weight".into()],
                decay_buffer: None,
                angle_buffer: None,
                retention_norm: "attn_norm.weight",
                q_proj: "attn.q_proj.weight",
                k_proj: "attn.k_proj.weight",
                v_proj: "attn.v_proj.weight",
                g_proj: "attn.g_proj.weight",
                out_proj: "attn.o_proj.weight",
                head_norm_fused: "attn.g_norm_swish_gate.weight",
                head_norm_plain: "attn.g_norm.weight",
                ffn_norm: "mlp_norm.weight",
                ffn_act: "mlp.gate_proj.weight",
                ffn_lin: "mlp.up_proj.weight",
                ffn_down: "mlp.down_proj.weight",
            }),
        }
    }

    fn layer(&self, index: usize, suffix: &str) -> String {
        format!("{}{index}.{suffix}", self.layer_prefix)
    }

    /// A checkpoint with more layers than its config says is a config/weights disagreement,
    /// not something to ignore silently.
    fn check_layer_count(&self, config: &ModelConfig, store: &TensorStore) -> Result<()> {
        let deepest = store
            .names()
            .filter_map(|name| name.strip_prefix(self.layer_prefix.as_str()))
            .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .max();
        match deepest {
            Some(last) if last >= config.num_layers => Err(ModelError::invalid(format!(
                "the weights hold layer {last} but the config says {} layers",
                config.num_layers
            ))),
            _ => Ok(()),
        }
    }
}
