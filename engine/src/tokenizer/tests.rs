//! Tokenizer tests: tiny in-memory GGUF vocabularies, error cases, streaming,
//! and (when present) the real SmolLM2-135M-Instruct GGUF.

use super::test_gguf::{GgufBuilder, V};
use super::*;

fn strs(v: &[&str]) -> V {
    V::StrArr(v.iter().map(|s| s.to_string()).collect())
}

/// Tokens 0..=2 are control tokens; `Ã`+`©` are the byte-level bytes of `é`.
const TOKENS: &[&str] = &[
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "H",
    "e",
    "l",
    "o",
    "Ġ",
    "w",
    "r",
    "d",
    "1",
    "2",
    "3",
    "He",
    "ll",
    "llo",
    "Hello",
    "Ġw",
    "or",
    "Ġwor",
    "ld",
    "Ġworld",
    "12",
    "Ã",
    "©",
    "<tool>",
];
const MERGES: &[&str] = &[
    "H e", "l l", "ll o", "He llo", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2",
];

fn tiny(pre: &str) -> GgufBuilder {
    let mut types = vec![1; TOKENS.len()];
    types[..3].fill(3);
    types[TOKENS.len() - 1] = 4;
    GgufBuilder::new()
        .kv("tokenizer.ggml.model", V::Str("gpt2".into()))
        .kv("tokenizer.ggml.pre", V::Str(pre.into()))
        .kv("tokenizer.ggml.tokens", strs(TOKENS))
        .kv("tokenizer.ggml.merges", strs(MERGES))
        .kv("tokenizer.ggml.token_type", V::I32Arr(types))
        .kv("tokenizer.ggml.bos_token_id", V::U32(1))
        .kv("tokenizer.ggml.eos_token_id", V::U32(2))
        .kv("tokenizer.ggml.padding_token_id", V::U32(0))
}

fn id(tok: &Tokenizer, s: &str) -> u32 {
    tok.token_to_id(s).unwrap()
}

#[test]
fn gguf_bpe_encodes_decodes_and_keeps_special_tokens_whole() {
    let tok = Tokenizer::from_gguf(&tiny("smollm").open()).unwrap();
    assert_eq!(tok.vocab_size(), TOKENS.len());
    let ids = tok.encode("Hello world", true).unwrap();
    assert_eq!(ids, [id(&tok, "Hello"), id(&tok, "Ġworld")]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "Hello world");

    let ids = tok.encode("<|im_start|>Hello<|im_end|><tool>", false).unwrap();
    assert_eq!(ids, [1, id(&tok, "Hello"), 2, id(&tok, "<tool>")]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "Hello<tool>");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|>Hello<|im_end|><tool>");

    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_ids(), [2]);
    assert_eq!(tok.pad_token_id(), Some(0));
    assert_eq!(tok.id_to_token(22).as_deref(), Some("Ġworld"));
    assert!(tok.chat_template().is_none());
}

#[test]
fn pre_tokenizer_choice_changes_digit_splitting() {
    let smol = Tokenizer::from_gguf(&tiny("smollm").open()).unwrap();
    let gpt2 = Tokenizer::from_gguf(&tiny("gpt2").open()).unwrap();
    let (one, two, three, twelve) = (id(&smol, "1"), id(&smol, "2"), id(&smol, "3"), id(&smol, "12"));
    assert_eq!(smol.encode("123", false).unwrap(), [one, two, three]);
    assert_eq!(gpt2.encode("123", false).unwrap(), [twelve, three]);
    for pre in ["default", "qwen2", "llama-bpe", "llama3", "starcoder", "gpt-2"] {
        let tok = Tokenizer::from_gguf(&tiny(pre).open()).unwrap();
        assert_eq!(
            tok.decode(&tok.encode("Hello world 123", false).unwrap(), false)
                .unwrap(),
            "Hello world 123",
            "{pre}"
        );
    }
}

#[test]
fn llama3_pre_adds_bos_by_default_and_flag_overrides() {
    let tok = Tokenizer::from_gguf(&tiny("llama-bpe").open()).unwrap();
    assert_eq!(tok.encode("Hello", true).unwrap(), [1, id(&tok, "Hello")]);
    assert_eq!(tok.encode("Hello", false).unwrap(), [id(&tok, "Hello")]);
    let g = tiny("llama-bpe")
        .kv("tokenizer.ggml.add_bos_token", V::Bool(false))
        .open();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.encode("Hello", true).unwrap(), [id(&tok, "Hello")]);
    let g = tiny("smollm").kv("tokenizer.ggml.add_eos_token", V::Bool(true)).open();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.encode("Hello", true).unwrap(), [id(&tok, "Hello"), 2]);
}

#[test]
fn gguf_chat_template_and_end_of_turn_ids() {
    let g = tiny("smollm")
        .kv(
            "tokenizer.chat_template",
            V::Str("{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}".into()),
        )
        .kv("tokenizer.ggml.eot_token_id", V::U32(0))
        .open();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.eos_token_ids(), [2, 0]);
    let out = tok
        .chat_template()
        .unwrap()
        .render(&[ChatMessage::new("user", "hi")], false, None)
        .unwrap();
    assert_eq!(out, "<|im_start|>hi<|im_end|>");
    assert_eq!(tok.chat_template_names().collect::<Vec<_>>(), [DEFAULT_TEMPLATE]);
}

#[test]
fn gguf_errors_are_typed_and_named() {
    let g = tiny("smollm").kv("tokenizer.ggml.model", V::Str("llama".into()));
    // The builder would write a duplicate key; build the SentencePiece case separately.
    assert!(crate::loader::gguf::GgufFile::from_bytes(g.bytes()).is_err());
    let sp = GgufBuilder::new()
        .kv("tokenizer.ggml.model", V::Str("llama".into()))
        .kv("tokenizer.ggml.tokens", strs(&["<s>"]))
        .open();
    let e = Tokenizer::from_gguf(&sp).unwrap_err();
    assert!(
        matches!(e, TokenizerError::UnsupportedModel { .. }) && e.to_string().contains("SentencePiece"),
        "{e}"
    );

    let e = Tokenizer::from_gguf(&tiny("klingon").open()).unwrap_err();
    assert!(
        e.to_string().contains("klingon") && e.to_string().contains("smollm"),
        "{e}"
    );

    let e = Tokenizer::from_gguf(&GgufBuilder::new().open()).unwrap_err();
    assert!(e.to_string().contains("tokenizer.ggml.model"), "{e}");

    let no_merges = GgufBuilder::new()
        .kv("tokenizer.ggml.model", V::Str("gpt2".into()))
        .kv("tokenizer.ggml.tokens", strs(&["a"]))
        .open();
    let e = Tokenizer::from_gguf(&no_merges).unwrap_err();
    assert!(e.to_string().contains("tokenizer.ggml.merges"), "{e}");

    let bad_merge = GgufBuilder::new()
        .kv("tokenizer.ggml.model", V::Str("gpt2".into()))
        .kv("tokenizer.ggml.tokens", strs(&["a"]))
        .kv("tokenizer.ggml.merges", strs(&["ab"]))
        .open();
    let e = Tokenizer::from_gguf(&bad_merge).unwrap_err();
    assert!(e.to_string().contains("\"ab\""), "{e}");

    let bad_bos = GgufBuilder::new()
        .kv("tokenizer.ggml.model", V::Str("gpt2".into()))
        .kv("tokenizer.ggml.tokens", strs(&["a"]))
        .kv("tokenizer.ggml.merges", strs(&[]))
        .kv("tokenizer.ggml.bos_token_id", V::U32(7))
        .open();
    let e = Tokenizer::from_gguf(&bad_bos).unwrap_err();
    assert!(e.to_string().contains("bos_token_id"), "{e}");

    let bad_template = tiny("smollm")
        .kv("tokenizer.chat_template", V::Str("{% for %}".into()))
        .open();
    assert!(matches!(
        Tokenizer::from_gguf(&bad_template),
        Err(TokenizerError::Template { .. })
    ));
}

#[test]
fn decode_stream_waits_for_complete_utf8() {
    let tok = Tokenizer::from_gguf(&tiny("smollm").open()).unwrap();
    let ids = [id(&tok, "Hello"), id(&tok, "Ã"), id(&tok, "©"), id(&tok, "Ġworld"), 2];
    let mut stream = tok.decode_stream(true);
    let pieces: Vec<Option<String>> = ids.iter().map(|&i| stream.step(&tok, i).unwrap()).collect();
    assert_eq!(
        pieces,
        [
            Some("Hello".into()),
            None,
            Some("é".into()),
            Some(" world".into()),
            None
        ]
    );
    assert_eq!(stream.pending(), [2]);
    let mut stream = tok.decode_stream(false);
    let text: String = ids.iter().filter_map(|&i| stream.step(&tok, i).unwrap()).collect();
    assert_eq!(text, "Helloé world<|im_end|>");
}

#[test]
fn from_dir_reads_hf_files() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Tokenizer::from_gguf(&tiny("smollm").open()).unwrap();
    tok.inner().save(dir.path().join("tokenizer.json"), false).unwrap();
    let config = serde_json::json!({
        "bos_token": {"content": "<|im_start|>", "special": true},
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "default", "template": "D{{ messages[0].content }}"},
            {"name": "tool_use", "template": "T{{ eos_token }}"}
        ]
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": [2, 0]}"#).unwrap();
    let msgs = [ChatMessage::new("user", "x")];

    let hf = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(hf.bos_token_id(), Some(1));
    assert_eq!(hf.eos_token_ids(), [2, 0]);
    assert_eq!(hf.chat_template().unwrap().render(&msgs, false, None).unwrap(), "Dx");
    assert_eq!(
        hf.chat_template_named("tool_use")
            .unwrap()
            .render(&msgs, false, None)
            .unwrap(),
        "T<|im_end|>"
    );
    assert_eq!(hf.encode("<|im_start|>Hello world", false).unwrap(), [1, 17, 22]);

    std::fs::write(dir.path().join("chat_template.jinja"), "J{{ bos_token }}").unwrap();
    let hf = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(
        hf.chat_template().unwrap().render(&msgs, false, None).unwrap(),
        "J<|im_start|>"
    );

    let bare = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(bare.bos_token_id(), None);

    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": "<nope>"}"#).unwrap();
    let e = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("<nope>"), "{e}");
    let e = Tokenizer::from_dir(dir.path().join("missing")).unwrap_err();
    assert!(matches!(e, TokenizerError::Io { .. }), "{e}");
}

/// The SmolLM2-135M-Instruct GGUF, if it is on this machine.
fn smollm2_path() -> Option<std::path::PathBuf> {
    let path = match std::env::var_os("MLLM_TEST_GGUF") {
        Some(p) => p.into(),
        None => dirs::home_dir()?.join(".cache/mllm/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    path.exists().then_some(path)
}

/// Expected ids come from the Python `tokenizers` package running SmolLM2's HF
/// pipeline (BPE over the GGUF vocab/merges, `Digits(individual_digits=True)` +
/// `ByteLevel(add_prefix_space=False)`, control tokens as special tokens).
#[test]
fn real_smollm2_gguf() {
    let Some(path) = smollm2_path() else {
        eprintln!("skipping: SmolLM2-135M-Instruct.Q4_1.gguf not found (set MLLM_TEST_GGUF)");
        return;
    };
    let gguf = crate::loader::gguf::GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_ids(), [2]);
    assert_eq!(tok.token_to_id("Hello"), Some(19556));
    assert_eq!(tok.token_to_id("Ġworld"), Some(905));
    let cases: &[(&str, &[u32])] = &[
        ("Hello world", &[19556, 905]),
        ("12345", &[33, 34, 35, 36, 37]),
        (
            "héllo wörld ✓ 日本語",
            &[
                88, 2756, 31394, 267, 29989, 400, 4636, 246, 237, 17097, 241, 115, 40993, 179, 120, 248,
            ],
        ),
        (
            "emoji 🎉👍🏽!",
            &[391, 33777, 15107, 232, 227, 10813, 235, 231, 10813, 233, 138, 17],
        ),
        (
            "def f(x):\n    return x  # hi\n\n\tdone",
            &[
                1604, 275, 24, 104, 727, 472, 1003, 1792, 216, 907, 15876, 1116, 197, 22744,
            ],
        ),
        ("<|im_start|>user\nHi<|im_end|>\n", &[1, 4093, 198, 26843, 2, 198]),
        (
            "I'll don't  spaces   end ",
            &[57, 3060, 1326, 982, 216, 5600, 256, 1112, 216],
        ),
    ];
    for (text, expected) in cases {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(&ids, expected, "{text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), *text);
        let mut stream = tok.decode_stream(false);
        let streamed: String = ids.iter().filter_map(|&i| stream.step(&tok, i).unwrap()).collect();
        assert_eq!(streamed, *text);
    }
    let msgs = [ChatMessage::new("user", "What is 2+2?")];
    let out = tok.chat_template().unwrap().render(&msgs, true, None).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );

    let cfg = crate::loader::config::ModelConfig::from_gguf(&gguf).unwrap();
    assert_eq!(cfg.architectures, ["LlamaForCausalLM"]);
    assert_eq!(
        (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size),
        (30, 576, 1536)
    );
    assert_eq!(
        (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim),
        (9, 3, 64)
    );
    assert_eq!((cfg.vocab_size, cfg.max_position_embeddings), (49152, 8192));
    assert_eq!(cfg.rope_theta, 100000.0);
    assert!(cfg.tie_word_embeddings);
}
