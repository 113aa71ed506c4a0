//! JSON tool-call bodies (hermes, qwen25, llama3), keeping the model's key
//! order when re-serialising arguments.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects keep their key order (serde_json's `Value`
/// sorts keys without the `preserve_order` feature).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum OrderedJson {
    Null,
    Bool(bool),
    /// The number as serde_json prints it.
    Number(String),
    Str(String),
    Array(Vec<OrderedJson>),
    Object(Vec<(String, OrderedJson)>),
}

impl OrderedJson {
    /// Compact JSON text, non-ASCII kept as is.
    pub(super) fn to_json(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Number(n) => out.push_str(n),
            Self::Str(s) => out.push_str(&quote(s)),
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Self::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&quote(key));
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }

    fn field(&self, key: &str) -> Option<&OrderedJson> {
        match self {
            Self::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A JSON string literal for `s`.
pub(super) fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("serialising a str cannot fail")
}

/// `(name, arguments JSON text)` of a call object
/// `{"name": …, "arguments" | "parameters": {…}}`; `None` if it is not one.
/// String arguments are taken as already-serialised JSON text.
pub(super) fn call_from_value(value: &OrderedJson) -> Option<(String, String)> {
    let OrderedJson::Str(name) = value.field("name")? else {
        return None;
    };
    if name.is_empty() {
        return None;
    }
    let args = value.field("arguments").or_else(|| value.field("parameters"));
    let arguments = match args {
        None | Some(OrderedJson::Null) => "{}".to_string(),
        Some(OrderedJson::Str(text)) => text.clone(),
        Some(obj @ OrderedJson::Object(_)) => obj.to_json(),
        Some(_) => return None,
    };
    Some((name.clone(), arguments))
}

/// A hermes / qwen25 body: exactly one call object, whitespace around it.
pub(super) fn parse_json_body(body: &str) -> Option<(String, String)> {
    let value: OrderedJson = serde_json::from_str(body.trim()).ok()?;
    call_from_value(&value)
}

/// One step of reading llama3 calls `{…}; {…}` from `rest`.
#[derive(Debug, PartialEq)]
pub(super) enum Llama3Step {
    /// A call whose text ends `end` bytes into `rest`.
    Call {
        name: String,
        arguments: String,
        end: usize,
    },
    /// Only whitespace (and a separator) left.
    Empty,
    /// A JSON value has begun but not ended.
    Incomplete,
    /// Not a call: the rest is content.
    Malformed,
}

/// Reads the next llama3 call from `rest`; after the first call a `;`
/// separator may precede it.
pub(super) fn llama3_step(rest: &str, first: bool) -> Llama3Step {
    let mut s = rest.trim_start();
    if !first && let Some(after) = s.strip_prefix(';') {
        s = after.trim_start();
    }
    if s.is_empty() {
        return Llama3Step::Empty;
    }
    if !s.starts_with('{') {
        return Llama3Step::Malformed;
    }
    let skipped = rest.len() - s.len();
    let mut values = serde_json::Deserializer::from_str(s).into_iter::<OrderedJson>();
    match values.next() {
        Some(Ok(value)) => match call_from_value(&value) {
            Some((name, arguments)) => Llama3Step::Call {
                name,
                arguments,
                end: skipped + values.byte_offset(),
            },
            None => Llama3Step::Malformed,
        },
        Some(Err(e)) if e.is_eof() => Llama3Step::Incomplete,
        _ => Llama3Step::Malformed,
    }
}

impl<'de> Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = OrderedJson;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Number(v.to_string()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Number(v.to_string()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<OrderedJson, E> {
        let number = serde_json::Number::from_f64(v).map_or("null".to_string(), |n| n.to_string());
        Ok(OrderedJson::Number(number))
    }

    fn visit_str<E>(self, v: &str) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Str(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedJson, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(OrderedJson::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedJson, A::Error> {
        let mut fields = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, OrderedJson>()? {
            fields.push((key, value));
        }
        Ok(OrderedJson::Object(fields))
    }
}
