//! Output parsers: split generated text into reasoning, content and tool
//! calls, one-shot or as a stream of deltas.
//!
//! Two families, each chosen once at startup by name
//! (`--reasoning-parser`, `--tool-call-parser`) through
//! [`ReasoningParserKind`] and [`ToolParserKind`]:
//!
//! - [`reasoning`]: `<think>`…`</think>` → `reasoning_content` + `content`.
//! - [`tool`]: hermes / qwen25 / qwen3_coder / llama3 tool-call markup →
//!   [`ToolCall`]s + the remaining `content`.
//!
//! Streaming parsers never emit a partial tag: a suffix that could begin a
//! tag is held back until the next delta decides it, and `finish()` flushes.
//! Both families trim surrounding whitespace of `content` and
//! `reasoning_content`, so a streamed result concatenates to exactly the
//! one-shot result.
//!
//! ```
//! use mllm_engine::parsers::{ReasoningParserKind, ToolParserKind};
//!
//! let reasoning: ReasoningParserKind = "qwen3".parse().unwrap();
//! let (thought, rest) = reasoning.parser(false).parse("<think>hm</think>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>");
//! assert_eq!(thought.as_deref(), Some("hm"));
//!
//! let tools: ToolParserKind = "hermes".parse().unwrap();
//! let parsed = tools.parse(&rest, &mut Default::default());
//! assert_eq!(parsed.calls[0].name, "f");
//! assert_eq!(parsed.content, "");
//! ```

pub mod reasoning;
mod text;
pub mod tool;

#[cfg(test)]
mod tests;

pub use reasoning::{ReasoningDelta, ReasoningParser, ReasoningParserKind, ReasoningStream};
pub use tool::{CallIdGenerator, ParsedToolCalls, ToolCall, ToolCallStream, ToolDelta, ToolParserKind};

/// An unknown parser name given on the command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParserKindError {
    /// The name is not one of the supported parsers of its family.
    #[error("unknown {family} parser {given:?}; supported: {}", supported.join(", "))]
    Unknown {
        /// `"reasoning"` or `"tool-call"`.
        family: &'static str,
        /// The name given.
        given: String,
        /// Every name that family accepts.
        supported: &'static [&'static str],
    },
}
