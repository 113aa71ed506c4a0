//! Where weights come from ([`WeightSource`]: safetensors, a GGUF, an in-memory map) and the
//! bookkeeping of loading by HF name: missing names with suggestions, unused names reported.

use std::collections::{BTreeSet, HashMap};

use super::{ModelError, Result};
use crate::loader::safetensors::SafetensorsModel;
use crate::tensor::Tensor;

/// A checkpoint seen through HF parameter names (`model.layers.0.self_attn.q_proj.weight`).
pub trait WeightSource {
    /// Every tensor name in the checkpoint.
    fn names(&self) -> Vec<String>;
    /// The tensor `name` in row-major HF layout, `None` if absent.
    fn get(&self, name: &str) -> Result<Option<Tensor>>;
}

impl WeightSource for SafetensorsModel {
    fn names(&self) -> Vec<String> {
        SafetensorsModel::names(self).into_iter().map(String::from).collect()
    }
    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        if !self.contains(name) {
            return Ok(None);
        }
        Ok(Some(SafetensorsModel::get(self, name)?))
    }
}

impl WeightSource for HashMap<String, Tensor> {
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        Ok(HashMap::get(self, name).cloned())
    }
}

/// Checkpoint names that are never parameters (RoPE tables the converters keep).
fn ignorable(name: &str) -> bool {
    name.contains("rotary_emb.inv_freq") || name.starts_with("rope_freqs")
}

/// Loading session over a [`WeightSource`]: remembers which names were used.
pub(crate) struct WeightReader<'a> {
    src: &'a dyn WeightSource,
    names: Vec<String>,
    used: BTreeSet<String>,
}

impl<'a> WeightReader<'a> {
    pub(crate) fn new(src: &'a dyn WeightSource) -> Self {
        let mut names = src.names();
        names.sort();
        Self {
            src,
            names,
            used: BTreeSet::new(),
        }
    }

    /// The tensor `name`, or [`ModelError::MissingWeight`] with similar names.
    pub(crate) fn take(&mut self, name: &str) -> Result<Tensor> {
        match self.src.get(name)? {
            Some(t) => {
                self.used.insert(name.to_string());
                Ok(t)
            }
            None => Err(ModelError::MissingWeight {
                name: name.to_string(),
                near: self.near(name),
            }),
        }
    }

    /// The tensor `name` checked against `shape`.
    pub(crate) fn take_shaped(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.take(name)?;
        if t.shape() != shape {
            return Err(ModelError::WeightShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.shape().to_vec(),
            });
        }
        Ok(t)
    }

    /// Marks `name` as consumed without loading it (e.g. a redundant tied `lm_head.weight`).
    pub(crate) fn skip(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    /// Up to 3 checkpoint names closest to `name` by edit distance.
    fn near(&self, name: &str) -> Vec<String> {
        let mut scored: Vec<(usize, &String)> = self.names.iter().map(|n| (edit_distance(n, name), n)).collect();
        scored.sort();
        scored
            .into_iter()
            .filter(|(d, _)| *d <= name.len() / 3)
            .take(3)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Errors if the checkpoint holds names that were never used.
    pub(crate) fn finish(self) -> Result<()> {
        let extra: Vec<String> = self
            .names
            .iter()
            .filter(|n| !self.used.contains(*n) && !ignorable(n))
            .take(10)
            .cloned()
            .collect();
        if extra.is_empty() {
            Ok(())
        } else {
            Err(ModelError::UnexpectedWeights { names: extra })
        }
    }
}

/// Levenshtein distance over bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
