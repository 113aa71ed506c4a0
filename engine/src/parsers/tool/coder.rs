//! qwen3_coder bodies:
//! `<function=NAME><parameter=K>VALUE</parameter>…</function>`.

use super::json::{quote, OrderedJson};

const FUNCTION: &str = "<function=";
const FUNCTION_END: &str = "</function>";
const PARAMETER: &str = "<parameter=";
const PARAMETER_END: &str = "</parameter>";

/// `(name, arguments JSON text)` of one body; `None` if it is malformed.
/// Each trimmed value is taken as JSON when it parses, else as a string;
/// arguments keep the parameters' order.
pub(super) fn parse_coder_body(body: &str) -> Option<(String, String)> {
    let rest = body.trim().strip_prefix(FUNCTION)?;
    let (name, mut rest) = split_header(rest)?;
    let mut fields = Vec::new();
    loop {
        let trimmed = rest.trim_start();
        if let Some(after) = trimmed.strip_prefix(PARAMETER) {
            let (key, after) = split_header(after)?;
            let end = after.find(PARAMETER_END)?;
            fields.push(format!("{}:{}", quote(key), value_json(after[..end].trim())));
            rest = &after[end + PARAMETER_END.len()..];
        } else {
            let after = trimmed.strip_prefix(FUNCTION_END)?;
            if !after.trim().is_empty() {
                return None;
            }
            break;
        }
    }
    Some((name.to_string(), format!("{{{}}}", fields.join(","))))
}

/// Splits `NAME>rest` into a non-empty trimmed name and the rest.
fn split_header(text: &str) -> Option<(&str, &str)> {
    let gt = text.find('>')?;
    let name = text[..gt].trim();
    if name.is_empty() || name.contains('<') || name.contains('\n') {
        return None;
    }
    Some((name, &text[gt + 1..]))
}

fn value_json(value: &str) -> String {
    match serde_json::from_str::<OrderedJson>(value) {
        Ok(json) => json.to_json(),
        Err(_) => quote(value),
    }
}
