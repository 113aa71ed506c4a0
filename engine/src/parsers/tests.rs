//! Parser tests: one-shot results, and streams split at every char
//! boundary (and char by char) concatenating to the one-shot result with
//! no tag text in any delta.

use super::*;

const TAGS: &[&str] = &[
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<|python_tag|>",
    "<function=",
    "</function>",
    "<parameter=",
    "</parameter>",
];

/// Every way to feed `text` tested here: whole, split in two at each char
/// boundary, and one char at a time.
fn splits(text: &str) -> Vec<Vec<&str>> {
    let mut all = vec![vec![text]];
    for (i, _) in text.char_indices().skip(1) {
        all.push(vec![&text[..i], &text[i..]]);
    }
    let mut chars = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        chars.push(&rest[..c.len_utf8()]);
        rest = &rest[c.len_utf8()..];
    }
    all.push(chars);
    all
}

fn assert_no_tag(piece: &str, context: &str) {
    for tag in TAGS {
        assert!(!piece.contains(tag), "delta {piece:?} has {tag} ({context})");
    }
}

fn check_reasoning(kind: ReasoningParserKind, started: bool, text: &str, expected: (Option<&str>, &str)) {
    let parser = kind.parser(started);
    let one_shot = parser.parse(text);
    assert_eq!(
        (one_shot.0.as_deref(), one_shot.1.as_str()),
        expected,
        "{kind:?} one-shot of {text:?}"
    );
    // Tag text may reach a delta only where the expected output holds it.
    let expected_tags = TAGS
        .iter()
        .any(|t| expected.1.contains(t) || expected.0.is_some_and(|r| r.contains(t)));
    for pieces in splits(text) {
        let mut stream = parser.stream();
        let mut deltas: Vec<_> = pieces.iter().flat_map(|p| stream.push(p)).collect();
        deltas.extend(stream.finish());
        let (mut reasoning, mut content) = (String::new(), String::new());
        for delta in deltas {
            match delta {
                ReasoningDelta::Reasoning(s) => {
                    if !expected_tags {
                        assert_no_tag(&s, text);
                    }
                    reasoning.push_str(&s)
                }
                ReasoningDelta::Content(s) => {
                    if !expected_tags {
                        assert_no_tag(&s, text);
                    }
                    content.push_str(&s)
                }
            }
        }
        let reasoning = (!reasoning.is_empty()).then_some(reasoning);
        assert_eq!((reasoning, content), one_shot, "{kind:?} pieces {pieces:?}");
    }
}

#[test]
fn parsers_reasoning_qwen3() {
    use ReasoningParserKind::Qwen3;
    let text = "<think>\nLet me add: 2+2.\n</think>\n\nIt is 4.";
    check_reasoning(Qwen3, false, text, (Some("Let me add: 2+2."), "It is 4."));
    check_reasoning(Qwen3, false, "  <think>a</think>b", (Some("a"), "b"));
    check_reasoning(Qwen3, false, "Just an answer.", (None, "Just an answer."));
    check_reasoning(
        Qwen3,
        false,
        "<think>\n\n</think>\n\nNo thought.",
        (None, "No thought."),
    );
    check_reasoning(Qwen3, false, "<think>cut off mid tho", (Some("cut off mid tho"), ""));
    check_reasoning(Qwen3, false, "a < b and <thin", (None, "a < b and <thin"));
    check_reasoning(Qwen3, false, "<thin", (None, "<thin"));
    check_reasoning(Qwen3, false, "", (None, ""));
    // Without the flag a bare `</think>` is content; with it, reasoning ends there.
    check_reasoning(Qwen3, false, "x</think>y", (None, "x</think>y"));
    check_reasoning(Qwen3, true, "x</think>y", (Some("x"), "y"));
}

#[test]
fn parsers_reasoning_forced_kinds() {
    for kind in [ReasoningParserKind::DeepSeekR1, ReasoningParserKind::Qwen3Thinking] {
        check_reasoning(kind, false, "Hmm.\n</think>\n\nDone.", (Some("Hmm."), "Done."));
        check_reasoning(kind, false, "<think>Hmm.</think>Done.", (Some("Hmm."), "Done."));
        check_reasoning(kind, false, "all reasoning <", (Some("all reasoning <"), ""));
        check_reasoning(kind, false, "</think>only content", (None, "only content"));
        check_reasoning(kind, false, "a </thin b</think>c", (Some("a </thin b"), "c"));
    }
}

#[test]
fn parsers_reasoning_unicode() {
    let text = "<think>日本語で考える 🤔\n</think>\n答えは «4» です。";
    check_reasoning(
        ReasoningParserKind::Qwen3,
        false,
        text,
        (Some("日本語で考える 🤔"), "答えは «4» です。"),
    );
    check_reasoning(ReasoningParserKind::DeepSeekR1, false, "é</think>ü", (Some("é"), "ü"));
}

#[test]
fn parsers_reasoning_kind_names() {
    for name in ReasoningParserKind::NAMES {
        let kind: ReasoningParserKind = name.parse().unwrap();
        assert_eq!(kind.name(), *name);
    }
    let err = "deepseek".parse::<ReasoningParserKind>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown reasoning parser \"deepseek\"; supported: qwen3, qwen3-thinking, deepseek-r1"
    );
}

fn call(name: &str, arguments: &str) -> (String, String) {
    (name.to_string(), arguments.to_string())
}

/// Checks one-shot against `expected` and every stream against one-shot;
/// `markup_free` says the deltas must carry no tag text (false only for
/// malformed input kept as raw content).
fn check_tools(kind: ToolParserKind, text: &str, content: &str, calls: &[(String, String)], markup_free: bool) {
    let one_shot = kind.parse(text, &mut CallIdGenerator::with_seed(9));
    assert_eq!(one_shot.content, content, "{kind:?} content of {text:?}");
    let got: Vec<_> = one_shot
        .calls
        .iter()
        .map(|c| (c.name.clone(), c.arguments.clone()))
        .collect();
    assert_eq!(got, calls, "{kind:?} calls of {text:?}");
    for (c, id) in one_shot.calls.iter().zip(ids(9)) {
        assert_eq!(c.id, id);
    }
    for pieces in splits(text) {
        let mut stream = kind.stream(CallIdGenerator::with_seed(9));
        let mut deltas: Vec<_> = pieces.iter().flat_map(|p| stream.push(p)).collect();
        deltas.extend(stream.finish());
        if markup_free {
            for delta in &deltas {
                if let ToolDelta::Content(s) | ToolDelta::CallArguments { arguments: s, .. } = delta {
                    assert_no_tag(s, text);
                }
            }
        }
        let streamed = ParsedToolCalls::from_deltas(deltas);
        assert_eq!(streamed, one_shot, "{kind:?} pieces {pieces:?}");
    }
}

fn ids(seed: u64) -> impl Iterator<Item = String> {
    let mut ids = CallIdGenerator::with_seed(seed);
    std::iter::repeat_with(move || ids.next_id())
}

fn hermes_call(name: &str, args: &str) -> String {
    format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {args}}}\n</tool_call>")
}

#[test]
fn parsers_tools_hermes_and_qwen25() {
    let weather = hermes_call("get_weather", r#"{"city": "Paris", "unit": "c"}"#);
    let time = hermes_call("get_time", r#"{"tz": "Europe/Paris", "b": [1, 2.5, null, true]}"#);
    let two = format!("Let me check.\n\n{weather}\n{time}\nDone.");
    for kind in [ToolParserKind::Hermes, ToolParserKind::Qwen25] {
        check_tools(
            kind,
            &weather,
            "",
            &[call("get_weather", r#"{"city":"Paris","unit":"c"}"#)],
            true,
        );
        check_tools(
            kind,
            &two,
            "Let me check.\n\n\n\nDone.",
            &[
                call("get_weather", r#"{"city":"Paris","unit":"c"}"#),
                call("get_time", r#"{"tz":"Europe/Paris","b":[1,2.5,null,true]}"#),
            ],
            true,
        );
        check_tools(kind, "No tools < here <tool", "No tools < here <tool", &[], true);
        check_tools(kind, "", "", &[], true);
    }
    // `parameters`, string arguments, missing arguments, key order kept.
    let text = "<tool_call>{\"name\": \"a\", \"parameters\": {\"z\": 1, \"a\": 2}}</tool_call>\
                <tool_call>{\"name\": \"b\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>\
                <tool_call>{\"name\": \"c\"}</tool_call>";
    check_tools(
        ToolParserKind::Hermes,
        text,
        "",
        &[call("a", r#"{"z":1,"a":2}"#), call("b", r#"{"x": 1}"#), call("c", "{}")],
        true,
    );
}

#[test]
fn parsers_tools_unicode() {
    let text = format!(
        "天気を調べます 🌦\n{}\nどうぞ。",
        hermes_call("天気", r#"{"都市": "東京", "note": "naïve \"q\" \\ 😀"}"#)
    );
    check_tools(
        ToolParserKind::Hermes,
        &text,
        "天気を調べます 🌦\n\nどうぞ。",
        &[call("天気", r#"{"都市":"東京","note":"naïve \"q\" \\ 😀"}"#)],
        true,
    );
}

#[test]
fn parsers_tools_hermes_malformed_kept_as_content() {
    let kind = ToolParserKind::Hermes;
    let bad = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": }\n</tool_call>";
    check_tools(kind, bad, bad, &[], false);
    let not_a_call = "<tool_call>[1, 2]</tool_call>";
    check_tools(kind, not_a_call, not_a_call, &[], false);
    // A bad call between good ones: only it stays as text.
    let text = format!("{}\n{bad}\n{}", hermes_call("a", "{}"), hermes_call("b", "{}"));
    check_tools(kind, &text, bad, &[call("a", "{}"), call("b", "{}")], false);
    // Unclosed at the end: parsed if whole, else raw.
    check_tools(
        kind,
        "x <tool_call>{\"name\": \"f\", \"arguments\": {}}",
        "x",
        &[call("f", "{}")],
        true,
    );
    let cut = "x <tool_call>{\"name\": \"f\", \"argu";
    check_tools(kind, cut, cut, &[], false);
    check_tools(kind, "</tool_call> stray", "</tool_call> stray", &[], false);
}

#[test]
fn parsers_tools_qwen3_coder() {
    let kind = ToolParserKind::Qwen3Coder;
    let one = "<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco, CA\n</parameter>\n\
               <parameter=days>\n3\n</parameter>\n<parameter=opts>\n{\"metric\": true}\n</parameter>\n\
               </function>\n</tool_call>";
    let args = r#"{"city":"San Francisco, CA","days":3,"opts":{"metric":true}}"#;
    check_tools(kind, one, "", &[call("get_weather", args)], true);
    let two = format!("Calling two.\n{one}\n<tool_call>\n<function=ping>\n</function>\n</tool_call>\nthen «done»");
    check_tools(
        kind,
        &two,
        "Calling two.\n\n\nthen «done»",
        &[call("get_weather", args), call("ping", "{}")],
        true,
    );
    let code = "<tool_call><function=run><parameter=code>\nprint(\"é\")\n  x = 1\n</parameter></function></tool_call>";
    check_tools(
        kind,
        code,
        "",
        &[call("run", r#"{"code":"print(\"é\")\n  x = 1"}"#)],
        true,
    );
    // Malformed bodies stay as text.
    for bad in [
        "<tool_call>\n<function=f>\n<parameter=x>\n1\n</function>\n</tool_call>",
        "<tool_call>\n<function=>\n</function>\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
        "<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>",
    ] {
        check_tools(kind, bad, bad, &[], false);
    }
}

#[test]
fn parsers_tools_llama3() {
    let kind = ToolParserKind::Llama3;
    check_tools(
        kind,
        r#"{"name": "get_weather", "parameters": {"city": "Paris", "n": -1.5}}"#,
        "",
        &[call("get_weather", r#"{"city":"Paris","n":-1.5}"#)],
        true,
    );
    check_tools(
        kind,
        "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"arguments\": {\"ü\": \"ß\"}};",
        "",
        &[call("a", "{}"), call("b", r#"{"ü":"ß"}"#)],
        true,
    );
    check_tools(
        kind,
        "  {\"name\": \"a\", \"parameters\": {}}\nHope that helps.",
        "Hope that helps.",
        &[call("a", "{}")],
        true,
    );
    check_tools(kind, "The answer is {x}.", "The answer is {x}.", &[], true);
    check_tools(kind, "<|python", "<|python", &[], false);
    // Malformed: JSON that is not a call, broken JSON, truncation.
    for bad in [
        r#"{"answer": 42}"#,
        r#"{"name": "f", "parameters": {"x": }}"#,
        r#"<|python_tag|>{"name": "f", "parameters": {"x"#,
        r#"{"name": 3}"#,
    ] {
        check_tools(kind, bad, bad, &[], false);
    }
    check_tools(
        kind,
        r#"{"name": "a", "parameters": {}}; {"name": "b", "#,
        r#"; {"name": "b","#,
        &[call("a", "{}")],
        true,
    );
}

#[test]
fn parsers_tool_kind_names() {
    for name in ToolParserKind::NAMES {
        let kind: ToolParserKind = name.parse().unwrap();
        assert_eq!(kind.name(), *name);
    }
    let err = "qwen".parse::<ToolParserKind>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown tool-call parser \"qwen\"; supported: hermes, qwen25, qwen3_coder, llama3"
    );
}

#[test]
fn parsers_call_ids_are_distinct_hex() {
    let mut generator = CallIdGenerator::default();
    let a = generator.next_id();
    let b = generator.next_id();
    assert_ne!(a, b);
    assert_ne!(a, CallIdGenerator::default().next_id());
    for id in [a, b] {
        assert_eq!(id.len(), 29);
        assert!(id["call_".len()..].chars().all(|c| c.is_ascii_hexdigit()));
    }
}
