//! Tool-call parsers: pull function calls out of the model output.
//!
//! | name | markup |
//! |---|---|
//! | `hermes`, `qwen25` | `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, repeated |
//! | `qwen3_coder` | `<tool_call><function=NAME><parameter=K>V</parameter>…</function></tool_call>` |
//! | `llama3` | the output is `{"name": …, "parameters": {…}}` (after an optional `<\|python_tag\|>`), several joined by `;` |
//!
//! Text outside calls is `content` (trimmed). A call that does not parse
//! stays in `content` as its raw text, tags included, so no text is lost.
//! A `<tool_call>` left open at the end is parsed up to the end. llama3 calls
//! are recognised only at the start of the output; text after the last call
//! is content.

mod coder;
mod ids;
mod json;
mod stream;

use std::str::FromStr;

pub use ids::CallIdGenerator;
pub use stream::{ToolCallStream, ToolDelta};

use super::ParserKindError;
use json::{llama3_step, Llama3Step};

pub(super) const TOOL_CALL_START: &str = "<tool_call>";
pub(super) const TOOL_CALL_END: &str = "</tool_call>";
pub(super) const PYTHON_TAG: &str = "<|python_tag|>";

/// A tool-call format, chosen by `--tool-call-parser`.
///
/// ```
/// use mllm_engine::parsers::{CallIdGenerator, ToolParserKind};
///
/// let kind: ToolParserKind = "qwen3_coder".parse().unwrap();
/// let text = "Checking.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";
/// let parsed = kind.parse(text, &mut CallIdGenerator::with_seed(0));
/// assert_eq!(parsed.content, "Checking.");
/// assert_eq!(parsed.calls[0].name, "get_weather");
/// assert_eq!(parsed.calls[0].arguments, r#"{"city":"Paris","days":3}"#);
///
/// let err = "mistral".parse::<ToolParserKind>().unwrap_err();
/// assert!(err.to_string().contains("hermes, qwen25, qwen3_coder, llama3"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolParserKind {
    /// `hermes`: JSON calls in `<tool_call>` tags.
    Hermes,
    /// `qwen25`: the hermes format as Qwen2.5 emits it.
    Qwen25,
    /// `qwen3_coder`: XML-ish `<function=…>` calls in `<tool_call>` tags.
    Qwen3Coder,
    /// `llama3`: bare JSON calls, optionally after `<|python_tag|>`.
    Llama3,
}

/// How a format marks its calls.
#[derive(Debug, Clone, Copy)]
pub(super) enum Format {
    /// `<tool_call>` BODY `</tool_call>`, the body read by the function.
    Tagged(fn(&str) -> Option<(String, String)>),
    /// llama3's bare JSON.
    Llama3,
}

impl ToolParserKind {
    /// Every accepted name, in the order errors list them.
    pub const NAMES: &'static [&'static str] = &["hermes", "qwen25", "qwen3_coder", "llama3"];

    /// The name `from_str` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hermes => "hermes",
            Self::Qwen25 => "qwen25",
            Self::Qwen3Coder => "qwen3_coder",
            Self::Llama3 => "llama3",
        }
    }

    pub(super) fn format(self) -> Format {
        match self {
            Self::Hermes | Self::Qwen25 => Format::Tagged(json::parse_json_body),
            Self::Qwen3Coder => Format::Tagged(coder::parse_coder_body),
            Self::Llama3 => Format::Llama3,
        }
    }

    /// Splits a whole output into content and calls; ids come from `ids`.
    pub fn parse(self, text: &str, ids: &mut CallIdGenerator) -> ParsedToolCalls {
        let (content, found) = match self.format() {
            Format::Tagged(body) => parse_tagged(text, body),
            Format::Llama3 => parse_llama3(text),
        };
        let calls = found
            .into_iter()
            .map(|(name, arguments)| ToolCall {
                id: ids.next_id(),
                name,
                arguments,
            })
            .collect();
        ParsedToolCalls {
            content: content.trim().to_string(),
            calls,
        }
    }

    /// A fresh stream for one response; ids come from `ids`.
    pub fn stream(self, ids: CallIdGenerator) -> ToolCallStream {
        ToolCallStream::new(self.format(), ids)
    }
}

impl FromStr for ToolParserKind {
    type Err = ParserKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hermes" => Ok(Self::Hermes),
            "qwen25" => Ok(Self::Qwen25),
            "qwen3_coder" => Ok(Self::Qwen3Coder),
            "llama3" => Ok(Self::Llama3),
            _ => Err(ParserKindError::Unknown {
                family: "tool-call",
                given: s.to_string(),
                supported: Self::NAMES,
            }),
        }
    }
}

/// One function call, as the OpenAI API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_` + 24 hex characters, from a [`CallIdGenerator`].
    pub id: String,
    /// The function name.
    pub name: String,
    /// The arguments as compact JSON text.
    pub arguments: String,
}

/// The result of [`ToolParserKind::parse`].
///
/// ```
/// use mllm_engine::parsers::{CallIdGenerator, ToolParserKind};
///
/// let text = "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>";
/// let parsed = ToolParserKind::Hermes.parse(text, &mut CallIdGenerator::with_seed(1));
/// let names: Vec<_> = parsed.calls.iter().map(|c| c.name.as_str()).collect();
/// assert_eq!(names, ["a", "b"]);
/// assert_eq!(parsed.calls[0].arguments, r#"{"x":1}"#);
/// assert!(parsed.content.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedToolCalls {
    /// Text outside the calls (and raw text of malformed calls), trimmed.
    pub content: String,
    /// The calls, in order.
    pub calls: Vec<ToolCall>,
}

type Found = Vec<(String, String)>;

fn parse_tagged(text: &str, body: fn(&str) -> Option<(String, String)>) -> (String, Found) {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(TOOL_CALL_START) {
        content.push_str(&rest[..start]);
        let after = &rest[start + TOOL_CALL_START.len()..];
        let (inner, used) = match after.find(TOOL_CALL_END) {
            Some(end) => (&after[..end], end + TOOL_CALL_END.len()),
            None => (after, after.len()),
        };
        let raw_len = TOOL_CALL_START.len() + used;
        match body(inner) {
            Some(call) => calls.push(call),
            None => content.push_str(&rest[start..start + raw_len]),
        }
        rest = &rest[start + raw_len..];
    }
    content.push_str(rest);
    (content, calls)
}

/// Where llama3 calls begin in `text`, if the output is a call at all.
pub(super) fn llama3_calls_start(text: &str) -> Option<usize> {
    let opened = text.trim_start();
    let skipped = text.len() - opened.len();
    if opened.starts_with(PYTHON_TAG) {
        Some(skipped + PYTHON_TAG.len())
    } else if opened.starts_with('{') {
        Some(skipped)
    } else {
        None
    }
}

fn parse_llama3(text: &str) -> (String, Found) {
    let Some(mut pos) = llama3_calls_start(text) else {
        return (text.to_string(), Vec::new());
    };
    let mut calls = Vec::new();
    loop {
        match llama3_step(&text[pos..], calls.is_empty()) {
            Llama3Step::Call { name, arguments, end } => {
                calls.push((name, arguments));
                pos += end;
            }
            Llama3Step::Empty => return (String::new(), calls),
            Llama3Step::Incomplete | Llama3Step::Malformed => {
                let content = if calls.is_empty() { text } else { &text[pos..] };
                return (content.to_string(), calls);
            }
        }
    }
}
