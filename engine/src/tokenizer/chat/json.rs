//! JSON ↔ template values and a `tojson` filter that writes like Python's
//! `json.dumps(x, ensure_ascii=False, indent=indent)`, as `transformers` does:
//! no HTML escaping, non-ASCII kept, `", "` / `": "` separators (`","` with
//! an indent).
//!
//! Map keys come out sorted: without minijinja's `preserve_order` feature,
//! template maps do not keep insertion order.

use std::collections::BTreeMap;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};
use serde_json::Value as Json;

/// A JSON value as a template value.
pub(crate) fn to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(items.iter().map(to_value).collect::<Vec<_>>()),
        Json::Object(map) => Value::from(
            map.iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

/// A template value as JSON (undefined → null; other non-data values → their string form).
fn to_json(v: &Value) -> Result<Json, Error> {
    Ok(match v.kind() {
        ValueKind::Undefined | ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(v.is_true()),
        ValueKind::Number if v.is_integer() => match v.as_i64() {
            Some(i) => Json::from(i),
            None => Json::from(u64::try_from(v.clone())?),
        },
        ValueKind::Number => {
            let f = f64::try_from(v.clone())?;
            serde_json::Number::from_f64(f)
                .map(Json::Number)
                .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, format!("tojson: {f} is not valid JSON")))?
        }
        ValueKind::String => Json::String(v.as_str().unwrap_or_default().to_string()),
        ValueKind::Bytes => Json::String(String::from_utf8_lossy(v.as_bytes().unwrap_or_default()).into_owned()),
        ValueKind::Seq | ValueKind::Iterable => {
            Json::Array(v.try_iter()?.map(|x| to_json(&x)).collect::<Result<_, _>>()?)
        }
        ValueKind::Map => {
            let mut map = serde_json::Map::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                let key = key.as_str().map(str::to_owned).unwrap_or_else(|| key.to_string());
                map.insert(key, to_json(&item)?);
            }
            Json::Object(map)
        }
        _ => Json::String(v.to_string()),
    })
}

/// Writes `v` like Python's `json.dumps(v, ensure_ascii=False, indent=indent)`.
pub(crate) fn dumps(v: &Json, indent: Option<usize>) -> String {
    let mut out = String::new();
    write(v, indent, 0, &mut out);
    out
}

fn newline(out: &mut String, indent: Option<usize>, level: usize) {
    if let Some(n) = indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * level));
    }
}

fn write(v: &Json, indent: Option<usize>, level: usize, out: &mut String) {
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, indent, level + 1);
                write(item, indent, level + 1, out);
            }
            newline(out, indent, level);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, indent, level + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                write(item, indent, level + 1, out);
            }
            newline(out, indent, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The `tojson` filter: `indent` is honoured; `ensure_ascii`, `separators`
/// and `sort_keys` are accepted and ignored (keys are always sorted).
pub(crate) fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    for ignored in ["ensure_ascii", "separators", "sort_keys"] {
        let _: Option<Value> = kwargs.get(ignored)?;
    }
    kwargs.assert_all_used()?;
    Ok(Value::from_safe_string(dumps(&to_json(&value)?, indent)))
}
