//! A generation session on the CPU reference: prefill, sample, step, save and resume.
//!
//! The last sampled token is kept *pending* (not yet fed through the model) until more input
//! is needed. A saved session therefore holds exactly the tokens it has consumed plus the one
//! it owes, and resuming continues as if it had never stopped: the pending token (and any new
//! prompt) is fed first, then sampling goes on with the same draw counter and penalty history.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{ModelError, Result};
use crate::reference::{CpuModel, CpuState, RetentionForm};
use crate::sampling::{apply_repeat_penalty, sample, SamplingParams};
use crate::state_file::{load_state, save_state, SavedState};

/// How many recent tokens the repetition penalty looks at.
pub const REPEAT_WINDOW: usize = 64;

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

/// A sequence being generated on the CPU.
pub struct CpuSession<'m> {
    model: &'m CpuModel,
    state: CpuState,
    book: SessionBook,
    /// Logits after the last consumed token, if nothing is pending.
    last_logits: Option<Vec<f32>>,
    chunk_size: usize,
}

impl<'m> CpuSession<'m> {
    /// A fresh session at position 0.
    pub fn new(model: &'m CpuModel) -> Self {
        Self {
            model,
            state: model.new_state(),
            book: SessionBook::default(),
            last_logits: None,
            chunk_size: model.config().default_chunk_size,
        }
    }

    /// Tokens consumed so far.
    pub fn position(&self) -> usize {
        self.state.position
    }

    /// The session's bookkeeping.
    pub fn book(&self) -> &SessionBook {
        &self.book
    }

    /// Feeds the pending token (if any) and `tokens` with the chunkwise form.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<()> {
        let mut input: Vec<u32> = self.book.pending.take().into_iter().collect();
        input.extend_from_slice(tokens);
        if input.is_empty() {
            return if self.last_logits.is_some() {
                Ok(())
            } else {
                Err(ModelError::EmptyTokens)
            };
        }
        self.model.check_tokens(&input)?;
        let form = if input.len() == 1 {
            RetentionForm::Recurrent
        } else {
            RetentionForm::Chunkwise {
                chunk_size: self.chunk_size,
            }
        };
        let logits = self.model.forward(&input, &mut self.state, form)?;
        let vocab = self.model.config().vocab_size;
        self.last_logits = Some(logits[logits.len() - vocab..].to_vec());
        self.book.remember(tokens);
        Ok(())
    }

    /// Samples the next token; it stays pending until the next call needs its logits.
    pub fn next_token(&mut self, params: &SamplingParams) -> Result<u32> {
        if self.book.pending.is_some() {
            self.prefill(&[])?;
        }
        let mut logits = self.last_logits.take().ok_or(ModelError::EmptyTokens)?;
        apply_repeat_penalty(&mut logits, &self.book.history, params.repeat_penalty);
        let token = sample(&logits, params, self.book.draws);
        self.book.draws += 1;
        self.book.remember(&[token]);
        self.book.pending = Some(token);
        Ok(token)
    }

    /// Saves the state and bookkeeping to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let saved = SavedState {
            position: self.state.position,
            layers: self.state.layers.clone(),
            extra: self.book.to_strings(),
        };
        save_state(path, self.model.config(), &saved)
    }

    /// Resumes a session saved by [`CpuSession::save`] for this model.
    pub fn load(model: &'m CpuModel, path: &Path) -> Result<Self> {
        let saved = load_state(path, model.config())?;
        let book =
            SessionBook::from_strings(&saved.extra).ok_or_else(|| ModelError::StateFile {
                path: path.to_path_buf(),
                message: "missing or bad session bookkeeping (pending, history, draws)".into(),
            })?;
        let mut session = Self::new(model);
        session.state = CpuState {
            position: saved.position,
            layers: saved.layers,
        };
        session.book = book;
        Ok(session)
    }
}
