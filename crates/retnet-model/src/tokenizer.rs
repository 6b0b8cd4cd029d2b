//! Text ↔ token ids: the checkpoint's own `tokenizer.json` (Hugging Face format, e.g. the Llama
//! tokenizer of fla-hub models), or raw bytes for byte-vocabulary models.
//!
//! The WebAssembly build has no Hugging Face tokenizer (the `tokenizers` crate needs a random
//! source configured for the browser); it reads byte-level models only.

use std::path::Path;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// A tokenizer for one model.
pub enum Tokenizer {
    /// One token per byte (vocabulary of 256).
    Bytes,
    /// A Hugging Face `tokenizer.json`.
    #[cfg(not(target_arch = "wasm32"))]
    HuggingFace(Box<tokenizers::Tokenizer>),
}

impl Tokenizer {
    /// The model directory's `tokenizer.json` if it has one, else bytes when the vocabulary has
    /// exactly 256 entries.
    pub fn for_model(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        // Anything at that path (a FIFO or a directory too) is the model's tokenizer, refused
        // by `from_file` if unreadable, rather than silently replaced by bytes.
        if path.exists() {
            return Self::from_file(&path);
        }
        Self::bytes_for(config).ok_or_else(|| {
            ModelError::Tokenizer(format!(
                "{} has no tokenizer.json and its vocabulary has {} entries, not 256 bytes",
                dir.display(),
                config.vocab_size
            ))
        })
    }

    /// A Hugging Face `tokenizer.json`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::files::read_bounded(path, crate::files::MAX_TOKENIZER_BYTES)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut tok = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        // One sequence is encoded at a time, for generation: padding would append pad tokens
        // to a prompt (a `Fixed(huge)` length or `pad_to_multiple_of` would also allocate
        // without bound), and truncation would silently drop part of it.
        tok.with_padding(None);
        let _ = tok.with_truncation(None);
        Ok(Self::HuggingFace(Box::new(tok)))
    }

    /// A Hugging Face `tokenizer.json`: not available in the WebAssembly build.
    #[cfg(target_arch = "wasm32")]
    pub fn from_file(path: &Path) -> Result<Self> {
        Err(ModelError::Tokenizer(format!(
            "{}: Hugging Face tokenizers are not available in the WebAssembly build",
            path.display()
        )))
    }

    /// The byte tokenizer, if the vocabulary is exactly the 256 bytes.
    pub fn bytes_for(config: &ModelConfig) -> Option<Self> {
        (config.vocab_size == 256).then_some(Self::Bytes)
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Bytes => Ok(text.bytes().map(u32::from).collect()),
            #[cfg(not(target_arch = "wasm32"))]
            Self::HuggingFace(t) => t
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| ModelError::Tokenizer(e.to_string())),
        }
    }

    /// Bytes of the text of `ids` (UTF-8 for Hugging Face tokenizers; raw for bytes).
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>> {
        match self {
            Self::Bytes => Ok(ids.iter().map(|&i| i.min(255) as u8).collect()),
            #[cfg(not(target_arch = "wasm32"))]
            Self::HuggingFace(t) => t
                .decode(ids, false)
                .map(String::into_bytes)
                .map_err(|e| ModelError::Tokenizer(e.to_string())),
        }
    }
}

/// Turns a growing list of generated ids into text bytes as soon as they are final.
///
/// Subword tokenizers can only decode some ids together (a multi-byte character split over two
/// tokens decodes to U+FFFD until its second half arrives), so output is held back while the
/// decoded tail is incomplete.
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self {
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds one id; returns the bytes that became final.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Vec<u8>> {
        if matches!(tokenizer, Tokenizer::Bytes) {
            return tokenizer.decode(&[id]);
        }
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids)?;
        if text.ends_with("\u{FFFD}".as_bytes()) {
            return Ok(Vec::new());
        }
        let Some(new) = text.get(self.emitted..).map(<[u8]>::to_vec) else {
            return Ok(Vec::new());
        };
        self.emitted = text.len();
        Ok(new)
    }
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}
