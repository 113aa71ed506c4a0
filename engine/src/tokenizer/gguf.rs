//! Byte-level BPE tokenizer from GGUF `tokenizer.ggml.*` metadata.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

use super::{pretok, Result, SpecialIds, Tokenizer, TokenizerError, DEFAULT_TEMPLATE};
use crate::loader::gguf::GgufFile;

/// llama.cpp token types that become added tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn str_array<'a>(gguf: &'a GgufFile, key: &'static str) -> Result<Vec<&'a str>> {
    match gguf.get(key) {
        None => Err(TokenizerError::MissingKey { key }),
        Some(v) => v.as_str_array().ok_or_else(|| TokenizerError::InvalidMetadata {
            key,
            msg: "expected an array of strings".into(),
        }),
    }
}

fn token_id(gguf: &GgufFile, key: &'static str, n_vocab: usize) -> Result<Option<u32>> {
    let Some(v) = gguf.get(key) else { return Ok(None) };
    match v.as_u64().and_then(|id| u32::try_from(id).ok()) {
        Some(id) if (id as usize) < n_vocab => Ok(Some(id)),
        _ => Err(TokenizerError::InvalidMetadata {
            key,
            msg: format!("{v:?} is not a token id below the vocabulary size {n_vocab}"),
        }),
    }
}

fn flag(gguf: &GgufFile, key: &'static str) -> Result<Option<bool>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| TokenizerError::InvalidMetadata {
            key,
            msg: format!("expected a bool, found {v:?}"),
        }),
    }
}

/// The added tokens (control → special, user-defined → normal) from `tokenizer.ggml.token_type`.
fn added_tokens(gguf: &GgufFile, tokens: &[&str]) -> Result<Vec<AddedToken>> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let Some(types) = gguf.get(KEY) else { return Ok(vec![]) };
    let bad = |msg: String| TokenizerError::InvalidMetadata { key: KEY, msg };
    let types = types
        .as_array()
        .ok_or_else(|| bad("expected an array of integers".into()))?;
    if types.len() != tokens.len() {
        return Err(bad(format!("{} entries for {} tokens", types.len(), tokens.len())));
    }
    let mut added = Vec::new();
    for (t, &tok) in types.iter().zip(tokens) {
        match t.as_i64() {
            Some(TOKEN_TYPE_CONTROL) => added.push(AddedToken::from(tok, true).normalized(false)),
            Some(TOKEN_TYPE_USER_DEFINED) => added.push(AddedToken::from(tok, false).normalized(false)),
            Some(_) => {}
            None => return Err(bad(format!("non-integer entry {t:?}"))),
        }
    }
    Ok(added)
}

/// `"<bos> $A <eos>"` as a post-processor, or `None` when nothing is added.
fn post_processor(
    inner: &tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<Option<TemplateProcessing>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let mut pieces = Vec::new();
    let mut specials = Vec::new();
    for (id, is_bos) in [(bos, true), (eos, false)] {
        let Some(id) = id else { continue };
        let tok = inner.id_to_token(id).unwrap_or_default();
        if tok.is_empty() || tok.chars().any(char::is_whitespace) {
            return Err(TokenizerError::Build(format!(
                "special token {id} ({tok:?}) cannot be templated"
            )));
        }
        specials.push((tok.clone(), id));
        pieces.push((tok, is_bos));
    }
    let mut template: Vec<String> = pieces.iter().filter(|p| p.1).map(|p| p.0.clone()).collect();
    template.push("$A".into());
    template.extend(pieces.iter().filter(|p| !p.1).map(|p| p.0.clone()));
    TemplateProcessing::builder()
        .try_single(template.join(" "))
        .map_err(TokenizerError::Build)?
        .special_tokens(specials)
        .build()
        .map(Some)
        .map_err(|e| TokenizerError::Build(e.to_string()))
}

/// `tokenizer.chat_template`, plus the named `tokenizer.chat_template.<name>`
/// listed in `tokenizer.chat_templates`.
fn chat_templates(gguf: &GgufFile) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = gguf
        .get_str("tokenizer.chat_template")
        .map(|t| (DEFAULT_TEMPLATE.to_string(), t.to_string()))
        .into_iter()
        .collect();
    for name in gguf.get_str_array("tokenizer.chat_templates").unwrap_or_default() {
        if let Some(t) = gguf.get_str(&format!("tokenizer.chat_template.{name}")) {
            out.push((name.to_string(), t.to_string()));
        }
    }
    out
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file (`tokenizer.ggml.model ==
    /// "gpt2"`, i.e. byte-level BPE; see [`super::SUPPORTED_PRE_TOKENIZERS`]).
    /// SentencePiece (`"llama"`) and other tokenizer models are rejected with
    /// [`TokenizerError::UnsupportedModel`].
    ///
    /// ```no_run
    /// use mllm_engine::{loader::gguf::GgufFile, tokenizer::Tokenizer};
    /// let gguf = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    /// let tok = Tokenizer::from_gguf(&gguf)?;
    /// assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        const MODEL: &str = "tokenizer.ggml.model";
        let model = gguf.get_str(MODEL).ok_or(TokenizerError::MissingKey { key: MODEL })?;
        match model {
            "gpt2" => {}
            "llama" => {
                return Err(TokenizerError::UnsupportedModel {
                    model: model.into(),
                    reason: "SentencePiece vocabularies are not supported yet; only byte-level BPE (`gpt2`) is",
                })
            }
            _ => {
                return Err(TokenizerError::UnsupportedModel {
                    model: model.into(),
                    reason: "only byte-level BPE (`gpt2`) is supported",
                })
            }
        }
        let tokens = str_array(gguf, "tokenizer.ggml.tokens")?;
        let merges = str_array(gguf, "tokenizer.ggml.merges")?;
        let spec = pretok::spec_for(gguf.get_str("tokenizer.ggml.pre"))?;

        let mut vocab = Vocab::default();
        for (id, &tok) in tokens.iter().enumerate() {
            vocab.entry(tok.to_string()).or_insert(id as u32);
        }
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| TokenizerError::InvalidMetadata {
                        key: "tokenizer.ggml.merges",
                        msg: format!("merge {m:?} is not two tokens separated by a space"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(spec.ignore_merges)
            .build()
            .map_err(|e| TokenizerError::Build(e.to_string()))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(spec.pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let added = added_tokens(gguf, &tokens)?;
        let (special, normal): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
        let build_err = |e: tokenizers::Error| TokenizerError::Build(e.to_string());
        inner.add_special_tokens(special).map_err(build_err)?;
        inner.add_tokens(normal).map_err(build_err)?;

        let n = tokens.len();
        let bos = token_id(gguf, "tokenizer.ggml.bos_token_id", n)?;
        let eos = token_id(gguf, "tokenizer.ggml.eos_token_id", n)?;
        let add_bos = flag(gguf, "tokenizer.ggml.add_bos_token")?.unwrap_or(spec.default_add_bos);
        let add_eos = flag(gguf, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let processor = post_processor(&inner, bos.filter(|_| add_bos), eos.filter(|_| add_eos))?;
        inner.with_post_processor(processor);

        let mut eos_ids: Vec<u32> = eos.into_iter().collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = token_id(gguf, key, n)?
                && !eos_ids.contains(&id)
            {
                eos_ids.push(id);
            }
        }
        let special = SpecialIds {
            bos,
            eos: eos_ids,
            pad: token_id(gguf, "tokenizer.ggml.padding_token_id", n)?,
        };
        Self::assemble(inner, special, chat_templates(gguf))
    }
}
