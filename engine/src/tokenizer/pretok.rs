//! `tokenizer.ggml.pre` → HF pre-tokenizer, as llama.cpp's `llama-vocab.cpp` maps them.
//!
//! Each entry reproduces the HF `tokenizer.json` of the model family the name
//! stands for, so ids match `transformers`: `smollm`/`starcoder` are
//! `Digits(individual) + ByteLevel(regex)`, `gpt2` is `ByteLevel(regex)`,
//! `llama3`/`qwen2` are one `Split` regex then `ByteLevel` without regex, and
//! `default` is llama.cpp's fallback sequence of regexes.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use super::{Result, TokenizerError};

/// GPT-2's pattern (what `ByteLevel(use_regex=true)` applies), without its trailing `\s+`.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's pattern, as in its `tokenizer.json`.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pattern (single digits), as in its `tokenizer.json`.
const QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEFAULT` regex sequence.
const DEFAULT: [&str; 4] = [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"];

/// The `tokenizer.ggml.pre` values mllm understands.
pub const SUPPORTED_PRE_TOKENIZERS: [&str; 12] = [
    "default",
    "gpt2",
    "gpt-2",
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "qwen2",
];

/// How a GGUF BPE vocabulary pre-tokenizes, and llama.cpp's per-family defaults.
pub(crate) struct PreTokenizerSpec {
    /// The HF pre-tokenizer.
    pub(crate) pre_tokenizer: PreTokenizerWrapper,
    /// Whole pre-tokens found in the vocabulary skip the merges (Llama 3).
    pub(crate) ignore_merges: bool,
    /// Whether BOS is added when `tokenizer.ggml.add_bos_token` is absent.
    pub(crate) default_add_bos: bool,
}

fn byte_level(use_regex: bool) -> PreTokenizerWrapper {
    ByteLevel::new(false, true, use_regex).into()
}

fn regexes(patterns: &[&str]) -> Result<PreTokenizerWrapper> {
    let mut seq = Vec::with_capacity(patterns.len() + 1);
    for p in patterns {
        let split = Split::new(
            SplitPattern::Regex((*p).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Build(format!("pre-tokenizer regex {p:?}: {e}")))?;
        seq.push(split.into());
    }
    seq.push(byte_level(false));
    Ok(Sequence::new(seq).into())
}

/// The spec for `tokenizer.ggml.pre` (`None` = absent, which llama.cpp treats as `default`).
pub(crate) fn spec_for(pre: Option<&str>) -> Result<PreTokenizerSpec> {
    let plain = |pre_tokenizer| PreTokenizerSpec {
        pre_tokenizer,
        ignore_merges: false,
        default_add_bos: false,
    };
    Ok(match pre.unwrap_or("default") {
        "default" => plain(regexes(&DEFAULT)?),
        "gpt2" | "gpt-2" => plain(byte_level(true)),
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            plain(Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into())
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => PreTokenizerSpec {
            pre_tokenizer: regexes(&[LLAMA3])?,
            ignore_merges: true,
            default_add_bos: true,
        },
        "qwen2" => plain(regexes(&[QWEN2])?),
        other => return Err(TokenizerError::UnsupportedPreTokenizer { pre: other.to_string() }),
    })
}
