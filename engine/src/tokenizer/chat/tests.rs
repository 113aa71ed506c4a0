//! Chat-template tests with small but realistic HF templates.

use serde_json::json;

use super::*;

const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A trimmed Qwen3 template: tools block with `tojson`, `<think>` stripping via
/// Python string methods, `enable_thinking`.
const QWEN3: &str = r##"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"##;

/// A trimmed Llama 3.1 template: `bos_token`, `messages[1:]`, `trim`,
/// `strftime_now`, `raise_exception`.
const LLAMA3: &str = r#"{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Today Date: " + strftime_now("%d %b %Y") + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}"#;

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

#[test]
fn smollm2_template() {
    let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
    let out = t
        .render(
            &[msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "Bye")],
            true,
            None,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n\
         <|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = t
        .render(&[msg("system", "Be brief."), msg("user", "Hi")], false, None)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn qwen3_template_thinking_and_tools() {
    let t = ChatTemplate::new(QWEN3, "", "<|im_end|>").unwrap();
    let msgs = [
        msg("system", "You are helpful."),
        msg("user", "Hi"),
        msg("assistant", "<think>\nhmm\n</think>\n\nHello!"),
        msg("user", "Bye"),
    ];
    let out = t.render(&msgs, true, Some(&json!({"enable_thinking": false}))).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n\
         <|im_start|>assistant\n<think>\n\n</think>\n\n"
    );
    let tools = json!({"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Wetter für <Ort> & co"}}]});
    let out = t.render(&[msg("user", "Hi")], true, Some(&tools)).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\n# Tools\n\n<tools>\n\
         {\"function\": {\"description\": \"Wetter für <Ort> & co\", \"name\": \"get_weather\"}, \"type\": \"function\"}\n\
         </tools><|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn llama3_template_date_slicing_and_raise_exception() {
    let t = ChatTemplate::new(LLAMA3, "<|begin_of_text|>", "<|eot_id|>").unwrap();
    let today = super::time::strftime_now("%d %b %Y".into()).unwrap();
    let out = t
        .render(&[msg("system", " Be nice. "), msg("user", " Hi ")], true, None)
        .unwrap();
    assert_eq!(
        out,
        format!(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nToday Date: {today}\n\nBe nice.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    );
    let e = t.render(&[msg("user", "a"), msg("user", "b")], true, None).unwrap_err();
    match e {
        ChatTemplateError::Raised { message } => assert!(message.contains("must alternate"), "{message}"),
        other => panic!("expected Raised, got {other}"),
    }
}

#[test]
fn trim_and_lstrip_blocks_like_transformers() {
    let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\nU: {{ m.content }}\n  {% endif %}\n{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    assert_eq!(
        t.render(
            &[msg("user", "a"), msg("assistant", "x"), msg("user", "b")],
            false,
            None
        )
        .unwrap(),
        "U: a\nU: b\n"
    );
}

#[test]
fn loop_controls_and_python_methods() {
    let src = "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}\
               {{ m.content.upper() }}{% if m.content.startswith('b') %}{% break %}{% endif %}{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let msgs = [msg("system", "s"), msg("user", "a"), msg("user", "b"), msg("user", "c")];
    assert_eq!(t.render(&msgs, false, None).unwrap(), "AB");
}

#[test]
fn tojson_matches_python_json_dumps() {
    let t = ChatTemplate::new(
        "{{ x | tojson }}|{{ x | tojson(indent=2, ensure_ascii=False) }}|{{ [] | tojson }}",
        "",
        "",
    )
    .unwrap();
    let out = t
        .render(&[], false, Some(&json!({"x": {"b": [1, 2.5, "é<>&\"\n"], "a": null}})))
        .unwrap();
    assert_eq!(
        out,
        "{\"a\": null, \"b\": [1, 2.5, \"é<>&\\\"\\n\"]}|{\n  \"a\": null,\n  \"b\": [\n    1,\n    2.5,\n    \"é<>&\\\"\\n\"\n  ]\n}|[]"
    );
    let t = ChatTemplate::new("{{ 1 | tojson(bogus=1) }}", "", "").unwrap();
    assert!(matches!(t.render(&[], false, None), Err(ChatTemplateError::Render(_))));
}

#[test]
fn errors() {
    assert!(matches!(
        ChatTemplate::new("{% if %}", "", ""),
        Err(ChatTemplateError::Syntax(_))
    ));
    let t = ChatTemplate::new("x", "", "").unwrap();
    assert!(matches!(
        t.render(&[], false, Some(&json!([1]))),
        Err(ChatTemplateError::ExtraNotObject(_))
    ));
    let t = ChatTemplate::new("{{ strftime_now('%Q') }}", "", "").unwrap();
    assert!(matches!(t.render(&[], false, None), Err(ChatTemplateError::Render(_))));
}

/// The content-rendering part of Qwen3-VL-Instruct's published template: a `namespace` image
/// counter, a macro, `content is iterable and content is not mapping`, `'image' in item`.
pub(crate) const QWEN3_VL: &str = r#"{%- set image_count = namespace(value=0) %}
{%- macro render_content(content, do_vision_count) %}
    {%- if content is string %}
        {{- content }}
    {%- elif content is iterable and content is not mapping %}
        {%- for item in content %}
            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}
                {%- if do_vision_count %}
                    {%- set image_count.value = image_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}
                    {{- 'Picture ' ~ image_count.value ~ ': ' }}
                {%- endif %}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}
            {%- elif 'text' in item %}
                {{- item.text }}
            {%- else %}
                {{- raise_exception('Unexpected item type in content.') }}
            {%- endif %}
        {%- endfor %}
    {%- elif content is none or content is undefined %}
        {{- '' }}
    {%- else %}
        {{- raise_exception('Unexpected content type.') }}
    {%- endif %}
{%- endmacro %}
{%- for message in messages %}
    {%- set content = render_content(message.content, true) %}
    {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}"#;

#[test]
fn image_parts_reach_the_template_as_hf_passes_them() {
    let t = ChatTemplate::new(QWEN3_VL, "", "<|im_end|>").unwrap();
    let user = ChatMessage::with_parts(
        "user",
        vec![
            ContentPart::Text {
                text: "Compare ".into(),
            },
            ContentPart::Image,
            ContentPart::Text { text: " and ".into() },
            ContentPart::Image,
        ],
    );
    let msgs = [
        msg("system", "Be brief."),
        user,
        msg("assistant", "Same."),
        msg("user", "Sure?"),
    ];
    let out = t.render(&msgs, true, None).unwrap();
    let pad = "<|vision_start|><|image_pad|><|vision_end|>";
    assert_eq!(
        out,
        format!(
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCompare {pad} and {pad}<|im_end|>\n\
             <|im_start|>assistant\nSame.<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n"
        )
    );
    // `add_vision_id` numbers the pictures through the namespace counter.
    let out = t
        .render(&msgs[1..2], false, Some(&json!({"add_vision_id": true})))
        .unwrap();
    assert!(
        out.contains(&format!("Compare Picture 1: {pad} and Picture 2: {pad}")),
        "{out}"
    );
    // What the template iterates over is exactly HF's part dicts.
    let t = ChatTemplate::new("{{ messages[0].content | tojson }}", "", "").unwrap();
    assert_eq!(
        t.render(&msgs[1..2], false, None).unwrap(),
        r#"[{"text": "Compare ", "type": "text"}, {"type": "image"}, {"text": " and ", "type": "text"}, {"type": "image"}]"#
    );
}
