//! What `/v1/chat/completions` makes of generated text: `reasoning_content` (with
//! `--reasoning-parser`), `tool_calls` (with `--tool-call-parser` and `tools` in the request)
//! and `content`, whole or as streamed deltas that never carry tag text.

use serde_json::{json, Value};

use crate::parsers::{
    CallIdGenerator, ReasoningDelta, ReasoningParser, ReasoningStream, ToolCall, ToolCallStream, ToolDelta,
    ToolParserKind,
};

/// The parsers one chat choice goes through (none: the text is all `content`).
///
/// ```
/// use mllm_engine::parsers::{CallIdGenerator, ReasoningParserKind, ToolParserKind};
/// use mllm_engine::server::chat_output::ChatParsers;
///
/// let p = ChatParsers {
///     reasoning: Some(ReasoningParserKind::Qwen3.parser(false)),
///     tools: Some(ToolParserKind::Hermes),
/// };
/// let text = "<think>need weather</think>\n<tool_call>\n{\"name\": \"w\", \"arguments\": {}}\n</tool_call>";
/// let msg = p.parse(text, CallIdGenerator::with_seed(0));
/// assert_eq!(msg.reasoning.as_deref(), Some("need weather"));
/// assert_eq!(msg.tool_calls[0].name, "w");
/// assert_eq!(msg.to_json()["content"], serde_json::Value::Null);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatParsers {
    /// Splits `<think>` reasoning off first.
    pub reasoning: Option<ReasoningParser>,
    /// Then reads tool calls out of the remaining content.
    pub tools: Option<ToolParserKind>,
}

/// A parsed assistant message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedMessage {
    /// `content`.
    pub content: String,
    /// `reasoning_content`, when there was reasoning.
    pub reasoning: Option<String>,
    /// `tool_calls`.
    pub tool_calls: Vec<ToolCall>,
}

impl ParsedMessage {
    /// The OpenAI `message` object; `content` is null when only tool calls were made.
    pub fn to_json(&self) -> Value {
        let mut m = json!({"role": "assistant", "content": self.content});
        if self.content.is_empty() && !self.tool_calls.is_empty() {
            m["content"] = Value::Null;
        }
        if let Some(r) = &self.reasoning {
            m["reasoning_content"] = json!(r);
        }
        if !self.tool_calls.is_empty() {
            m["tool_calls"] = self.tool_calls.iter().map(call_json).collect();
        }
        m
    }
}

fn call_json(c: &ToolCall) -> Value {
    json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
}

impl ChatParsers {
    /// Parses a whole output.
    pub fn parse(&self, text: &str, mut ids: CallIdGenerator) -> ParsedMessage {
        let (reasoning, rest) = match &self.reasoning {
            Some(p) => p.parse(text),
            None => (None, text.to_string()),
        };
        match self.tools {
            Some(kind) => {
                let parsed = kind.parse(&rest, &mut ids);
                ParsedMessage {
                    content: parsed.content,
                    reasoning,
                    tool_calls: parsed.calls,
                }
            }
            None => ParsedMessage {
                content: rest,
                reasoning,
                tool_calls: Vec::new(),
            },
        }
    }

    /// A stream for one choice.
    pub fn stream(&self, ids: CallIdGenerator) -> ChoiceStream {
        ChoiceStream {
            reasoning: self.reasoning.map(|p| p.stream()),
            tools: self.tools.map(|k| k.stream(ids)),
            calls: 0,
        }
    }
}

/// The streaming form of [`ChatParsers::parse`]: text deltas in, `delta` objects out.
#[derive(Debug)]
pub struct ChoiceStream {
    reasoning: Option<ReasoningStream>,
    tools: Option<ToolCallStream>,
    calls: usize,
}

impl ChoiceStream {
    /// The `delta` objects for a piece of generated text (possibly none yet).
    pub fn push(&mut self, text: &str) -> Vec<Value> {
        let pieces = match &mut self.reasoning {
            Some(r) => r.push(text),
            None => vec![ReasoningDelta::Content(text.to_string())],
        };
        self.route(pieces, false)
    }

    /// The `delta` objects for whatever the parsers held back, at the end.
    pub fn finish(&mut self) -> Vec<Value> {
        let pieces = self.reasoning.as_mut().map(|r| r.finish()).unwrap_or_default();
        self.route(pieces, true)
    }

    /// How many tool calls were streamed.
    pub fn calls(&self) -> usize {
        self.calls
    }

    fn route(&mut self, pieces: Vec<ReasoningDelta>, last: bool) -> Vec<Value> {
        let mut out = Vec::new();
        for piece in pieces {
            match piece {
                ReasoningDelta::Reasoning(r) => out.push(json!({ "reasoning_content": r })),
                ReasoningDelta::Content(c) => match &mut self.tools {
                    Some(t) => {
                        let deltas = t.push(&c);
                        self.tool_deltas(deltas, &mut out);
                    }
                    None => out.push(json!({ "content": c })),
                },
            }
        }
        if last && let Some(t) = &mut self.tools {
            let deltas = t.finish();
            self.tool_deltas(deltas, &mut out);
        }
        out.retain(|d| d.as_object().is_some_and(|o| o.values().all(|v| v != "")));
        out
    }

    fn tool_deltas(&mut self, deltas: Vec<ToolDelta>, out: &mut Vec<Value>) {
        for d in deltas {
            out.push(match d {
                ToolDelta::Content(c) => json!({ "content": c }),
                ToolDelta::CallStart { index, id, name } => {
                    self.calls = self.calls.max(index + 1);
                    json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                           "function": {"name": name, "arguments": ""}}]})
                }
                ToolDelta::CallArguments { index, arguments } => {
                    json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parsers::ReasoningParserKind;

    fn parsers() -> ChatParsers {
        ChatParsers {
            reasoning: Some(ReasoningParserKind::Qwen3.parser(false)),
            tools: Some(ToolParserKind::Hermes),
        }
    }

    /// Rebuilds a message from streamed deltas, as an OpenAI client does.
    fn gather(deltas: &[Value]) -> ParsedMessage {
        let mut m = ParsedMessage::default();
        let mut reasoning = String::new();
        for d in deltas {
            if let Some(r) = d["reasoning_content"].as_str() {
                reasoning.push_str(r);
            }
            if let Some(c) = d["content"].as_str() {
                m.content.push_str(c);
            }
            for call in d["tool_calls"].as_array().into_iter().flatten() {
                let i = call["index"].as_u64().unwrap() as usize;
                if let Some(id) = call["id"].as_str() {
                    assert_eq!(i, m.tool_calls.len());
                    m.tool_calls.push(ToolCall {
                        id: id.into(),
                        name: call["function"]["name"].as_str().unwrap().into(),
                        arguments: String::new(),
                    });
                }
                m.tool_calls[i]
                    .arguments
                    .push_str(call["function"]["arguments"].as_str().unwrap());
            }
        }
        m.reasoning = (!reasoning.is_empty()).then_some(reasoning);
        m
    }

    #[test]
    fn streamed_deltas_rebuild_the_one_shot_message_and_leak_no_markup() {
        let text = "<think>\nThe user wants weather.\n</think>\n\nLet me check.\n<tool_call>\n\
                    {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let whole = parsers().parse(text, CallIdGenerator::with_seed(5));
        assert_eq!(whole.reasoning.as_deref(), Some("The user wants weather."));
        assert_eq!(whole.content, "Let me check.");
        assert_eq!(whole.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        // Every split point, down to one byte per delta.
        for step in [1, 2, 3, 7, 16] {
            let mut s = parsers().stream(CallIdGenerator::with_seed(5));
            let mut deltas = Vec::new();
            let chars: Vec<char> = text.chars().collect();
            for chunk in chars.chunks(step) {
                deltas.extend(s.push(&chunk.iter().collect::<String>()));
            }
            deltas.extend(s.finish());
            for d in &deltas {
                let t = d.to_string();
                assert!(
                    !t.contains("<tool_call>") && !t.contains("think>"),
                    "markup leaked: {t}"
                );
            }
            assert_eq!(gather(&deltas), whole, "step {step}");
            assert_eq!(s.calls(), 1);
        }
    }

    #[test]
    fn without_parsers_text_is_content_verbatim() {
        let p = ChatParsers::default();
        let text = "  <think>x</think> <tool_call>{}</tool_call> ";
        let msg = p.parse(text, CallIdGenerator::with_seed(0));
        assert_eq!(
            (msg.content.as_str(), msg.reasoning.clone(), msg.tool_calls.len()),
            (text, None, 0)
        );
        let mut s = p.stream(CallIdGenerator::with_seed(0));
        assert_eq!(s.push(text), [json!({ "content": text })]);
        assert!(s.finish().is_empty());
        assert_eq!(msg.to_json()["content"], text);
    }
}
