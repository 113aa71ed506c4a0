//! Reasoning parsers: split `<think>`…`</think>` off the model output.
//!
//! One think block per response. The block is recognised only at the start
//! of the output (after whitespace); a parser that *starts in reasoning*
//! (deepseek-r1, qwen3-thinking, or qwen3 when the chat template already put
//! `<think>` into the prompt) treats everything up to `</think>` as
//! reasoning, consuming a leading `<think>` if the model repeats it. Without
//! `</think>` the whole rest is reasoning. Both parts are trimmed; empty
//! reasoning is `None`.

use std::str::FromStr;

use super::text::{partial_tag_len, Trimmer};
use super::ParserKindError;

const START: &str = "<think>";
const END: &str = "</think>";

/// A reasoning format, chosen by `--reasoning-parser`.
///
/// ```
/// use mllm_engine::parsers::ReasoningParserKind;
///
/// let kind: ReasoningParserKind = "deepseek-r1".parse().unwrap();
/// assert_eq!(kind, ReasoningParserKind::DeepSeekR1);
/// let err = "r2".parse::<ReasoningParserKind>().unwrap_err();
/// assert!(err.to_string().contains("qwen3, qwen3-thinking, deepseek-r1"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasoningParserKind {
    /// `qwen3`: reasoning only when the output opens with `<think>`.
    Qwen3,
    /// `qwen3-thinking`: the template opened `<think>`; output starts in reasoning.
    Qwen3Thinking,
    /// `deepseek-r1`: the template opened `<think>`; output starts in reasoning.
    DeepSeekR1,
}

impl ReasoningParserKind {
    /// Every accepted name, in the order errors list them.
    pub const NAMES: &'static [&'static str] = &["qwen3", "qwen3-thinking", "deepseek-r1"];

    /// The name `from_str` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qwen3 => "qwen3",
            Self::Qwen3Thinking => "qwen3-thinking",
            Self::DeepSeekR1 => "deepseek-r1",
        }
    }

    /// A parser; `thinking_started` says the prompt already ends inside
    /// `<think>` (it only matters for `qwen3`, the others always start there).
    pub fn parser(self, thinking_started: bool) -> ReasoningParser {
        let starts_in_reasoning = thinking_started || self != Self::Qwen3;
        ReasoningParser { starts_in_reasoning }
    }
}

impl FromStr for ReasoningParserKind {
    type Err = ParserKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "qwen3" => Ok(Self::Qwen3),
            "qwen3-thinking" => Ok(Self::Qwen3Thinking),
            "deepseek-r1" => Ok(Self::DeepSeekR1),
            _ => Err(ParserKindError::Unknown {
                family: "reasoning",
                given: s.to_string(),
                supported: Self::NAMES,
            }),
        }
    }
}

/// A configured reasoning parser: one-shot [`parse`](Self::parse) or a
/// [`stream`](Self::stream).
///
/// ```
/// use mllm_engine::parsers::ReasoningParserKind;
///
/// let p = ReasoningParserKind::DeepSeekR1.parser(false);
/// let (reasoning, content) = p.parse("Let me think.\n</think>\n\nIt is 4.");
/// assert_eq!(reasoning.as_deref(), Some("Let me think."));
/// assert_eq!(content, "It is 4.");
///
/// let p = ReasoningParserKind::Qwen3.parser(false);
/// assert_eq!(p.parse("No thinking."), (None, "No thinking.".to_string()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasoningParser {
    starts_in_reasoning: bool,
}

impl ReasoningParser {
    /// Splits a whole output into `(reasoning_content, content)`.
    pub fn parse(&self, text: &str) -> (Option<String>, String) {
        let opened = text.trim_start();
        let body = if let Some(rest) = opened.strip_prefix(START) {
            rest
        } else if self.starts_in_reasoning {
            text
        } else {
            return (None, text.trim().to_string());
        };
        let (reasoning, content) = match body.find(END) {
            Some(i) => (&body[..i], &body[i + END.len()..]),
            None => (body, ""),
        };
        let reasoning = reasoning.trim();
        let reasoning = (!reasoning.is_empty()).then(|| reasoning.to_string());
        (reasoning, content.trim().to_string())
    }

    /// A fresh stream for one response.
    pub fn stream(&self) -> ReasoningStream {
        ReasoningStream {
            starts_in_reasoning: self.starts_in_reasoning,
            state: State::Start,
            buf: String::new(),
            reasoning: Trimmer::default(),
            content: Trimmer::default(),
        }
    }
}

/// One piece of streamed output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReasoningDelta {
    /// Text for `reasoning_content`.
    Reasoning(String),
    /// Text for `content`.
    Content(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not yet known whether the output opens with `<think>`.
    Start,
    /// Inside the think block, looking for `</think>`.
    Reasoning,
    /// Everything else is content.
    Content,
}

/// The streaming form of [`ReasoningParser`]: feed deltas, get
/// [`ReasoningDelta`]s that never contain (part of) a tag; their
/// concatenation equals [`ReasoningParser::parse`] of the whole text.
///
/// ```
/// use mllm_engine::parsers::{ReasoningDelta, ReasoningParserKind};
///
/// let mut s = ReasoningParserKind::Qwen3.parser(false).stream();
/// let mut out = s.push("<thi");
/// assert!(out.is_empty()); // could still be `<think>`
/// out.extend(s.push("nk>why</th"));
/// out.extend(s.push("ink>because"));
/// out.extend(s.finish());
/// assert_eq!(out, [
///     ReasoningDelta::Reasoning("why".into()),
///     ReasoningDelta::Content("because".into()),
/// ]);
/// ```
#[derive(Debug)]
pub struct ReasoningStream {
    starts_in_reasoning: bool,
    state: State,
    buf: String,
    reasoning: Trimmer,
    content: Trimmer,
}

impl ReasoningStream {
    /// Feeds one delta of generated text.
    pub fn push(&mut self, delta: &str) -> Vec<ReasoningDelta> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let opened = self.buf.trim_start();
                    if let Some(rest) = opened.strip_prefix(START) {
                        self.buf = rest.to_string();
                        self.state = State::Reasoning;
                    } else if START.starts_with(opened) {
                        return out;
                    } else {
                        self.state = self.unopened_state();
                    }
                }
                State::Reasoning => match self.buf.find(END) {
                    Some(i) => {
                        let rest = self.buf.split_off(i);
                        let reasoning = std::mem::replace(&mut self.buf, rest[END.len()..].into());
                        self.emit_reasoning(&reasoning, &mut out);
                        self.state = State::Content;
                    }
                    None => {
                        let keep = partial_tag_len(&self.buf, END);
                        let held = self.buf.split_off(self.buf.len() - keep);
                        let reasoning = std::mem::replace(&mut self.buf, held);
                        self.emit_reasoning(&reasoning, &mut out);
                        return out;
                    }
                },
                State::Content => {
                    let content = std::mem::take(&mut self.buf);
                    push_nonempty(&mut out, ReasoningDelta::Content(self.content.push(&content)));
                    return out;
                }
            }
        }
    }

    /// Flushes what was held back at the end of the response.
    pub fn finish(&mut self) -> Vec<ReasoningDelta> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        if self.state == State::Start {
            self.state = self.unopened_state();
        }
        match self.state {
            State::Reasoning => self.emit_reasoning(&rest, &mut out),
            _ => push_nonempty(&mut out, ReasoningDelta::Content(self.content.push(&rest))),
        }
        out
    }

    fn unopened_state(&self) -> State {
        if self.starts_in_reasoning {
            State::Reasoning
        } else {
            State::Content
        }
    }

    fn emit_reasoning(&mut self, text: &str, out: &mut Vec<ReasoningDelta>) {
        push_nonempty(out, ReasoningDelta::Reasoning(self.reasoning.push(text)));
    }
}

fn push_nonempty(out: &mut Vec<ReasoningDelta>, delta: ReasoningDelta) {
    let (ReasoningDelta::Reasoning(s) | ReasoningDelta::Content(s)) = &delta;
    if !s.is_empty() {
        out.push(delta);
    }
}
