//! What a benchmark sends: one [`WorkItem`] per request, and the random workload (prompts of
//! random token ids with lengths drawn from ranges, fully determined by a seed).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::executor::sampler::Rng;

/// A request's prompt: token ids (exact length, no tokenizer needed) or text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Token ids, sent as `prompt: [ids]` or `input_ids`.
    Ids(Vec<u32>),
    /// Text, tokenized by the server.
    Text(String),
}

/// One request of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    /// The prompt.
    pub prompt: Prompt,
    /// Prompt tokens: exact for ids, an estimate for text (the server's count is reported).
    pub input_len: usize,
    /// Tokens to generate (`max_tokens`, with EOS ignored so the count is exact).
    pub output_len: usize,
}

/// An inclusive range of lengths, written `MIN:MAX` or a single `LEN`.
///
/// ```
/// use mllm_engine::bench_serve::LenRange;
/// let r: LenRange = "64:256".parse().unwrap();
/// assert_eq!((r.min, r.max), (64, 256));
/// assert_eq!("32".parse::<LenRange>().unwrap(), LenRange { min: 32, max: 32 });
/// assert!("0:4".parse::<LenRange>().is_err() && "9:3".parse::<LenRange>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LenRange {
    /// Shortest length (at least 1).
    pub min: usize,
    /// Longest length.
    pub max: usize,
}

impl FromStr for LenRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{t}` is not a whole number (expected MIN:MAX or LEN, e.g. 64:256)"))
        };
        let (min, max) = match s.split_once(':') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(s)?;
                (n, n)
            }
        };
        if min == 0 {
            return Err(format!("the shortest length must be at least 1, got {min}"));
        }
        if min > max {
            return Err(format!("MIN must not exceed MAX, got {min}:{max}"));
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for LenRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.min, self.max)
    }
}

/// A half-open range `[lo, hi)` of token ids to draw prompts from, written `LO:HI`.
///
/// ```
/// use mllm_engine::bench_serve::TokenIdRange;
/// let r: TokenIdRange = "1000:20000".parse().unwrap();
/// assert_eq!((r.lo, r.hi), (1000, 20000));
/// assert!("5:5".parse::<TokenIdRange>().is_err() && "x:9".parse::<TokenIdRange>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenIdRange {
    /// Smallest id.
    pub lo: u32,
    /// One past the largest id.
    pub hi: u32,
}

impl TokenIdRange {
    /// The default for a vocabulary of `vocab` ids: skip the lowest quarter (at most 1000 ids)
    /// where tokenizers keep special and control tokens.
    ///
    /// ```
    /// use mllm_engine::bench_serve::TokenIdRange;
    /// assert_eq!(TokenIdRange::for_vocab(49152), TokenIdRange { lo: 1000, hi: 49152 });
    /// assert_eq!(TokenIdRange::for_vocab(256), TokenIdRange { lo: 64, hi: 256 });
    /// ```
    pub fn for_vocab(vocab: u32) -> Self {
        let hi = vocab.max(2);
        Self {
            lo: (hi / 4).min(1000),
            hi,
        }
    }
}

impl FromStr for TokenIdRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not LO:HI (e.g. 1000:20000)"))?;
        let num = |t: &str| t.trim().parse::<u32>().map_err(|_| format!("`{t}` is not a token id"));
        let (lo, hi) = (num(a)?, num(b)?);
        if lo >= hi {
            return Err(format!("LO must be below HI, got {lo}:{hi}"));
        }
        Ok(Self { lo, hi })
    }
}

/// The random workload's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RandomSpec {
    /// Requests.
    pub num_prompts: usize,
    /// Prompt lengths (uniform).
    pub input_len: LenRange,
    /// Output lengths (uniform).
    pub output_len: LenRange,
    /// Token ids the prompts are drawn from (uniform).
    pub token_ids: TokenIdRange,
    /// Seed: the same seed gives the same workload.
    pub seed: u64,
}

/// `spec.num_prompts` requests of random token ids.
///
/// ```
/// use mllm_engine::bench_serve::{random_workload, Prompt, RandomSpec};
/// let spec = RandomSpec {
///     num_prompts: 3,
///     input_len: "4:8".parse().unwrap(),
///     output_len: "2".parse().unwrap(),
///     token_ids: "10:20".parse().unwrap(),
///     seed: 0,
/// };
/// let w = random_workload(&spec);
/// assert_eq!(w, random_workload(&spec));
/// let Prompt::Ids(ids) = &w[0].prompt else { unreachable!() };
/// assert!((4..=8).contains(&ids.len()) && ids.iter().all(|&t| (10..20).contains(&t)));
/// ```
pub fn random_workload(spec: &RandomSpec) -> Vec<WorkItem> {
    let mut rng = Rng::from_seed(spec.seed);
    (0..spec.num_prompts)
        .map(|_| {
            let input_len = draw_len(&mut rng, spec.input_len);
            let output_len = draw_len(&mut rng, spec.output_len);
            let span = u64::from(spec.token_ids.hi - spec.token_ids.lo);
            let ids = (0..input_len)
                .map(|_| spec.token_ids.lo + (rng.next_u64() % span) as u32)
                .collect();
            WorkItem {
                prompt: Prompt::Ids(ids),
                input_len,
                output_len,
            }
        })
        .collect()
}

fn draw_len(rng: &mut Rng, r: LenRange) -> usize {
    // Modulo bias is below 1e-15 for ranges this small.
    r.min + (rng.next_u64() % (r.max - r.min + 1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> RandomSpec {
        RandomSpec {
            num_prompts: 200,
            input_len: LenRange { min: 64, max: 256 },
            output_len: LenRange { min: 32, max: 128 },
            token_ids: TokenIdRange { lo: 1000, hi: 20000 },
            seed,
        }
    }

    #[test]
    fn same_seed_same_workload_other_seed_differs() {
        assert_eq!(random_workload(&spec(0)), random_workload(&spec(0)));
        assert_ne!(random_workload(&spec(0)), random_workload(&spec(1)));
    }

    #[test]
    fn lengths_and_ids_stay_in_range_and_cover_it() {
        let w = random_workload(&spec(3));
        assert_eq!(w.len(), 200);
        for item in &w {
            let Prompt::Ids(ids) = &item.prompt else {
                panic!("random prompts are ids")
            };
            assert_eq!(ids.len(), item.input_len);
            assert!((64..=256).contains(&item.input_len));
            assert!((32..=128).contains(&item.output_len));
            assert!(ids.iter().all(|t| (1000..20000).contains(t)));
        }
        // Uniform draws: 200 samples reach both ends' neighbourhoods.
        assert!(w.iter().any(|i| i.input_len < 80) && w.iter().any(|i| i.input_len > 240));
        assert!(w.iter().any(|i| i.output_len < 40) && w.iter().any(|i| i.output_len > 120));
    }

    #[test]
    fn fixed_length_range() {
        let mut s = spec(0);
        s.input_len = LenRange { min: 7, max: 7 };
        assert!(random_workload(&s).iter().all(|i| i.input_len == 7));
    }
}
