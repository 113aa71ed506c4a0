//! The streaming tool-call parser.

use super::json::{llama3_step, Llama3Step};
use super::{
    llama3_calls_start, CallIdGenerator, Format, ParsedToolCalls, ToolCall, PYTHON_TAG, TOOL_CALL_END, TOOL_CALL_START,
};
use crate::parsers::text::{partial_tag_len, Trimmer};

/// One piece of streamed output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolDelta {
    /// Text for `content`; never markup of a well-formed call.
    Content(String),
    /// A call begins: its ordinal among this response's calls, id and name.
    CallStart {
        /// 0 for the first call of the response, then 1, 2, …
        index: usize,
        /// The call id.
        id: String,
        /// The function name.
        name: String,
    },
    /// More argument text of call `index`, to append.
    CallArguments {
        /// The call's ordinal.
        index: usize,
        /// JSON text to append to the call's arguments.
        arguments: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Tagged formats: outside a call, looking for `<tool_call>`.
    Text,
    /// Tagged formats: inside a call, looking for `</tool_call>`.
    InCall,
    /// llama3: not yet known whether the output is a call.
    Llama3Start,
    /// llama3: reading calls from byte `pos` of the buffer.
    Llama3Calls { pos: usize },
    /// Everything else is content.
    Plain,
}

/// The streaming form of [`ToolParserKind::parse`](super::ToolParserKind::parse):
/// feed deltas, get [`ToolDelta`]s. A call is emitted whole (start, then
/// its full arguments) once its closing markup arrives, so a call that turns
/// out malformed can still go out as content; a suffix that could begin a
/// tag is held back. The deltas of a whole response, gathered with
/// [`ParsedToolCalls::from_deltas`], equal the one-shot result given ids
/// from an equal [`CallIdGenerator`].
///
/// ```
/// use mllm_engine::parsers::{CallIdGenerator, ToolDelta, ToolParserKind};
///
/// let mut s = ToolParserKind::Hermes.stream(CallIdGenerator::with_seed(3));
/// let mut out = s.push("Sure.\n<tool_");
/// assert_eq!(out, [ToolDelta::Content("Sure.".into())]);
/// out.extend(s.push("call>\n{\"name\": \"f\", \"arguments\": {\"q\": \"é\"}}\n</tool_call>"));
/// out.extend(s.finish());
/// let id = CallIdGenerator::with_seed(3).next_id();
/// assert_eq!(out[1..], [
///     ToolDelta::CallStart { index: 0, id, name: "f".into() },
///     ToolDelta::CallArguments { index: 0, arguments: r#"{"q":"é"}"#.into() },
/// ]);
/// ```
#[derive(Debug)]
pub struct ToolCallStream {
    format: Format,
    ids: CallIdGenerator,
    state: State,
    buf: String,
    content: Trimmer,
    calls: usize,
}

impl ToolCallStream {
    pub(super) fn new(format: Format, ids: CallIdGenerator) -> Self {
        let state = match format {
            Format::Tagged(_) => State::Text,
            Format::Llama3 => State::Llama3Start,
        };
        Self {
            format,
            ids,
            state,
            buf: String::new(),
            content: Trimmer::default(),
            calls: 0,
        }
    }

    /// Feeds one delta of generated text.
    pub fn push(&mut self, delta: &str) -> Vec<ToolDelta> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        out
    }

    /// Flushes what was held back at the end of the response; an open
    /// `<tool_call>` is parsed up to the end.
    pub fn finish(&mut self) -> Vec<ToolDelta> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::InCall => self.close_call(&rest, false, &mut out),
            State::Llama3Calls { pos } => match llama3_step(&rest[pos..], self.calls == 0) {
                Llama3Step::Empty => {}
                _ => self.emit_llama3_rest(&rest, pos, &mut out),
            },
            State::Text | State::Llama3Start | State::Plain => self.emit_content(&rest, &mut out),
        }
        self.state = State::Plain;
        out
    }

    /// Advances one state; `false` when more input is needed.
    fn step(&mut self, out: &mut Vec<ToolDelta>) -> bool {
        match self.state {
            State::Text => {
                if let Some(start) = self.buf.find(TOOL_CALL_START) {
                    let rest = self.buf.split_off(start);
                    let text = std::mem::replace(&mut self.buf, rest[TOOL_CALL_START.len()..].into());
                    self.emit_content(&text, out);
                    self.state = State::InCall;
                    return true;
                }
                let keep = partial_tag_len(&self.buf, TOOL_CALL_START);
                let held = self.buf.split_off(self.buf.len() - keep);
                let text = std::mem::replace(&mut self.buf, held);
                self.emit_content(&text, out);
                false
            }
            State::InCall => {
                let Some(end) = self.buf.find(TOOL_CALL_END) else {
                    return false;
                };
                let rest = self.buf[end + TOOL_CALL_END.len()..].to_string();
                self.buf.truncate(end);
                let inner = std::mem::replace(&mut self.buf, rest);
                self.close_call(&inner, true, out);
                self.state = State::Text;
                true
            }
            State::Llama3Start => {
                if let Some(pos) = llama3_calls_start(&self.buf) {
                    self.state = State::Llama3Calls { pos };
                } else if PYTHON_TAG.starts_with(self.buf.trim_start()) {
                    return false;
                } else {
                    self.state = State::Plain;
                }
                true
            }
            State::Llama3Calls { pos } => match llama3_step(&self.buf[pos..], self.calls == 0) {
                Llama3Step::Call { name, arguments, end } => {
                    self.emit_call(name, arguments, out);
                    self.buf.drain(..pos + end);
                    self.state = State::Llama3Calls { pos: 0 };
                    true
                }
                Llama3Step::Empty | Llama3Step::Incomplete => false,
                Llama3Step::Malformed => {
                    let buf = std::mem::take(&mut self.buf);
                    self.emit_llama3_rest(&buf, pos, out);
                    self.state = State::Plain;
                    false
                }
            },
            State::Plain => {
                let text = std::mem::take(&mut self.buf);
                self.emit_content(&text, out);
                false
            }
        }
    }

    /// Emits a finished `<tool_call>` body as a call, or as raw content if
    /// it does not parse.
    fn close_call(&mut self, inner: &str, closed: bool, out: &mut Vec<ToolDelta>) {
        let Format::Tagged(parse_body) = self.format else {
            unreachable!("only tagged formats enter InCall");
        };
        match parse_body(inner) {
            Some((name, arguments)) => self.emit_call(name, arguments, out),
            None => {
                let end = if closed { TOOL_CALL_END } else { "" };
                self.emit_content(&format!("{TOOL_CALL_START}{inner}{end}"), out);
            }
        }
    }

    /// llama3 text that is not a call: all of it if no call came before,
    /// else what follows the last call.
    fn emit_llama3_rest(&mut self, buf: &str, pos: usize, out: &mut Vec<ToolDelta>) {
        let text = if self.calls == 0 { buf } else { &buf[pos..] };
        self.emit_content(text, out);
    }

    fn emit_call(&mut self, name: String, arguments: String, out: &mut Vec<ToolDelta>) {
        let index = self.calls;
        self.calls += 1;
        let id = self.ids.next_id();
        out.push(ToolDelta::CallStart { index, id, name });
        out.push(ToolDelta::CallArguments { index, arguments });
    }

    fn emit_content(&mut self, text: &str, out: &mut Vec<ToolDelta>) {
        let text = self.content.push(text);
        if !text.is_empty() {
            out.push(ToolDelta::Content(text));
        }
    }
}

impl ParsedToolCalls {
    /// Gathers a response's deltas: content concatenated, calls by index
    /// with their argument pieces appended.
    ///
    /// ```
    /// use mllm_engine::parsers::{ParsedToolCalls, ToolDelta};
    ///
    /// let parsed = ParsedToolCalls::from_deltas([
    ///     ToolDelta::Content("a".into()),
    ///     ToolDelta::CallStart { index: 0, id: "call_0".into(), name: "f".into() },
    ///     ToolDelta::CallArguments { index: 0, arguments: "{}".into() },
    /// ]);
    /// assert_eq!(parsed.content, "a");
    /// assert_eq!(parsed.calls[0].arguments, "{}");
    /// ```
    pub fn from_deltas(deltas: impl IntoIterator<Item = ToolDelta>) -> Self {
        let mut parsed = Self::default();
        for delta in deltas {
            match delta {
                ToolDelta::Content(text) => parsed.content.push_str(&text),
                ToolDelta::CallStart { index, id, name } => {
                    if parsed.calls.len() <= index {
                        parsed.calls.resize_with(index + 1, || ToolCall {
                            id: String::new(),
                            name: String::new(),
                            arguments: String::new(),
                        });
                    }
                    parsed.calls[index].id = id;
                    parsed.calls[index].name = name;
                }
                ToolDelta::CallArguments { index, arguments } => {
                    if let Some(call) = parsed.calls.get_mut(index) {
                        call.arguments.push_str(&arguments);
                    }
                }
            }
        }
        parsed
    }
}
