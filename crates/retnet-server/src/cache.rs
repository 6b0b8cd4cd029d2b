//! The exact prefix-state cache.
//!
//! A RetNet sequence's whole past is its recurrent state, so the state after a prompt's first
//! `k` tokens lets any later prompt with the same first `k` tokens skip them exactly. States are
//! kept at prefill piece boundaries ([`PREFILL_PIECE`]): the pieces of a prompt are counted from
//! its start, so a resumed prompt is fed in the very pieces an uncached run would feed, and its
//! output is bit for bit the uncached one. Entries are evicted least recently used first to stay
//! within a byte budget.

use std::collections::HashMap;

use retnet_model::session::PREFILL_PIECE;

/// One cached state: per layer `H × K × V` f32, after the key's tokens.
struct Entry {
    layers: Vec<Vec<f32>>,
    bytes: usize,
    last_used: u64,
}

/// States after prompt prefixes, keyed by the prefix's tokens, within a byte budget.
pub struct PrefixCache {
    entries: HashMap<Vec<u32>, Entry>,
    budget: usize,
    used: usize,
    clock: u64,
}

impl PrefixCache {
    /// An empty cache holding at most `budget` bytes of states (0: caching off).
    pub fn new(budget: usize) -> Self {
        Self {
            entries: HashMap::new(),
            budget,
            used: 0,
            clock: 0,
        }
    }

    /// Bytes of states held.
    pub fn bytes(&self) -> usize {
        self.used
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the state after `prefix` is held.
    pub fn contains(&self, prefix: &[u32]) -> bool {
        self.entries.contains_key(prefix)
    }

    /// The longest cached prefix of `prompt` that leaves at least one token to feed (the
    /// logits of the last prompt token are needed to sample): its length and state.
    pub fn longest_prefix(&mut self, prompt: &[u32]) -> Option<(usize, &[Vec<f32>])> {
        let longest = prompt.len().saturating_sub(1) / PREFILL_PIECE * PREFILL_PIECE;
        let len = (1..=longest / PREFILL_PIECE)
            .rev()
            .map(|k| k * PREFILL_PIECE)
            .find(|&len| {
                prompt
                    .get(..len)
                    .is_some_and(|p| self.entries.contains_key(p))
            })?;
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(prompt.get(..len)?)?;
        entry.last_used = clock;
        Some((len, &entry.layers))
    }

    /// Keeps the state after `prefix`, evicting the least recently used entries to make room;
    /// a state larger than the whole budget is not kept.
    pub fn insert(&mut self, prefix: Vec<u32>, layers: Vec<Vec<f32>>) {
        let bytes = layers.iter().map(|l| l.len() * 4).sum::<usize>() + prefix.len() * 4;
        if bytes > self.budget || self.entries.contains_key(&prefix) {
            return;
        }
        while self.used + bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.used -= e.bytes;
            }
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.insert(
            prefix,
            Entry {
                layers,
                bytes,
                last_used: self.clock,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(v: f32) -> Vec<Vec<f32>> {
        vec![vec![v; 8]; 2]
    }

    #[test]
    fn finds_the_longest_prefix_that_leaves_a_token() {
        let mut cache = PrefixCache::new(1 << 20);
        let prompt: Vec<u32> = (0..3 * PREFILL_PIECE as u32).collect();
        cache.insert(prompt[..PREFILL_PIECE].to_vec(), state(1.0));
        cache.insert(prompt[..2 * PREFILL_PIECE].to_vec(), state(2.0));
        cache.insert(prompt.clone(), state(3.0));
        // The whole prompt is cached, but one token must be left to feed.
        let (len, layers) = cache.longest_prefix(&prompt).unwrap();
        assert_eq!((len, layers[0][0]), (2 * PREFILL_PIECE, 2.0));
        let mut other = prompt.clone();
        other[PREFILL_PIECE + 3] = 9999;
        assert_eq!(cache.longest_prefix(&other).unwrap().0, PREFILL_PIECE);
        other[0] = 9999;
        assert!(cache.longest_prefix(&other).is_none());
    }

    #[test]
    fn evicts_the_least_recently_used_within_the_budget() {
        let entry = 2 * 8 * 4 + PREFILL_PIECE * 4;
        let mut cache = PrefixCache::new(2 * entry);
        let a: Vec<u32> = vec![1; PREFILL_PIECE];
        let b: Vec<u32> = vec![2; PREFILL_PIECE];
        let c: Vec<u32> = vec![3; PREFILL_PIECE];
        cache.insert(a.clone(), state(1.0));
        cache.insert(b.clone(), state(2.0));
        let mut longer = a.clone();
        longer.push(0);
        assert!(cache.longest_prefix(&longer).is_some()); // a is now the most recent
        cache.insert(c.clone(), state(3.0));
        assert!(cache.contains(&a) && cache.contains(&c) && !cache.contains(&b));
        assert_eq!(cache.bytes(), 2 * entry);
        let mut tiny = PrefixCache::new(entry - 1);
        tiny.insert(a, state(1.0));
        assert!(tiny.is_empty());
    }
}
