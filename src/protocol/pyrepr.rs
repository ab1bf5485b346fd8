//! Python `repr()` of JSON values.
//!
//! Celery's log lines, events and exception reprs show Python reprs
//! (`{'a': 1}`, `'text'`, `True`, `None`, `3.0`). Users grep their logs for
//! these shapes, so we reproduce them instead of printing JSON.

use serde_json::Value;
use std::fmt::Write;

/// Python `repr()` of a JSON value (kombu type tags shown as their Python reprs).
pub fn repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

/// Python `repr()` of a string: single quotes unless the text holds a single
/// quote and no double quote, as CPython chooses.
pub fn repr_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(&mut out, s);
    out
}

/// Python `repr()` of a float: `3.0`, `0.1`, `1e+16`, `inf`, `nan`.
pub fn repr_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Python switches to exponent notation outside [1e-4, 1e16).
        let s = format!("{f:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

fn write_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn write_repr(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => {
            if n.is_f64() {
                out.push_str(&repr_float(n.as_f64().unwrap_or(f64::NAN)));
            } else {
                let _ = write!(out, "{n}");
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            if let Some(tagged) = tagged_repr(map) {
                out.push_str(&tagged);
                return;
            }
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_repr(out, v);
            }
            out.push('}');
        }
    }
}

/// Reprs for kombu's tagged objects (`{"__type__": ..., "__value__": ...}`).
fn tagged_repr(map: &serde_json::Map<String, Value>) -> Option<String> {
    if map.len() != 2 {
        return None;
    }
    let ty = map.get("__type__")?.as_str()?;
    let val = map.get("__value__")?;
    Some(match (ty, val) {
        ("datetime", Value::String(s)) => format!("datetime({})", repr_str(s)),
        ("date", Value::String(s)) => format!("date({})", repr_str(s)),
        ("time", Value::String(s)) => format!("time({})", repr_str(s)),
        ("decimal", Value::String(s)) => format!("Decimal({})", repr_str(s)),
        ("uuid", Value::Object(m)) => {
            format!("UUID({})", repr(m.get("hex").unwrap_or(&Value::Null)))
        }
        ("bytes", Value::String(s)) => format!("b{}", repr_str(s)),
        ("base64", Value::String(s)) => format!("base64({})", repr_str(s)),
        _ => return None,
    })
}

/// Python `repr()` of an args tuple: `(1,)`, `(1, 2)`, `()`.
pub fn repr_args(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(&mut out, a);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    out
}

/// Python `repr()` of a BaseException: `ValueError('boom')`, `KeyError()`,
/// `OSError(2, 'No such file')` — the class name and its args.
pub fn repr_exception(class: &str, args: &[Value]) -> String {
    let mut out = String::from(class);
    out.push('(');
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(&mut out, a);
    }
    out.push(')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_match_python() {
        assert_eq!(repr(&json!(null)), "None");
        assert_eq!(repr(&json!(true)), "True");
        assert_eq!(repr(&json!(9)), "9");
        assert_eq!(repr(&json!(3.0)), "3.0");
        assert_eq!(repr(&json!(0.1)), "0.1");
        assert_eq!(repr(&json!(1e16)), "1e+16");
        assert_eq!(repr(&json!(1.5e-5)), "1.5e-05");
        assert_eq!(repr(&json!("it's")), "\"it's\"");
        assert_eq!(repr(&json!("a\nb")), "'a\\nb'");
    }

    #[test]
    fn containers_match_python() {
        assert_eq!(
            repr(&json!({"overwrite": true, "tags": ["daily", "eu"]})),
            "{'overwrite': True, 'tags': ['daily', 'eu']}"
        );
        assert_eq!(repr_args(&[json!(42), json!("s3://x")]), "(42, 's3://x')");
        assert_eq!(repr_args(&[json!(1)]), "(1,)");
        assert_eq!(
            repr_exception("ValueError", &[json!("boom")]),
            "ValueError('boom')"
        );
    }
}
