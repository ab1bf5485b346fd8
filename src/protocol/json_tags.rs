//! kombu's JSON dialect: `{"__type__": T, "__value__": V}` objects carry
//! Python types JSON lacks (datetime, date, time, Decimal, UUID, bytes).
//!
//! Task code receives these objects as they are (a `serde_json::Value`);
//! [`Tagged::from_value`] decodes them and [`Tagged::to_value`] writes them so
//! Python gets a real `datetime`/`Decimal`/`UUID`/`bytes` back.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};
use serde_json::{Map, Value, json};

/// A decoded kombu tagged value.
#[derive(Debug, Clone, PartialEq)]
pub enum Tagged {
    DateTime(DateTime<FixedOffset>),
    /// A naive datetime (no offset); Celery takes these as UTC.
    NaiveDateTime(NaiveDateTime),
    Date(NaiveDate),
    Time(NaiveTime),
    /// Kept as its decimal text so no precision is lost.
    Decimal(String),
    /// 32 lowercase hex digits.
    Uuid(String),
    Bytes(Vec<u8>),
}

/// Is this object a tagged value (exactly the keys `__type__` and `__value__`)?
pub fn is_tagged(map: &Map<String, Value>) -> bool {
    map.len() == 2 && map.contains_key("__type__") && map.contains_key("__value__")
}

impl Tagged {
    /// Decodes a tagged object; `None` if `value` is not one, `Err` for an
    /// unknown type or a malformed value (kombu raises `ValueError` there).
    pub fn from_value(value: &Value) -> Option<Result<Tagged, String>> {
        let map = value.as_object()?;
        if !is_tagged(map) {
            return None;
        }
        let ty = map["__type__"].as_str().unwrap_or_default();
        let v = &map["__value__"];
        let s = v.as_str();
        let bad = || format!("malformed {ty} value: {v}");
        Some(match ty {
            "datetime" => s
                .ok_or_else(bad)
                .and_then(|s| parse_datetime(s).ok_or_else(bad)),
            "date" => s
                .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
                .map(Tagged::Date)
                .ok_or_else(bad),
            "time" => s
                .and_then(|s| NaiveTime::parse_from_str(s, "%H:%M:%S%.f").ok())
                .map(Tagged::Time)
                .ok_or_else(bad),
            "decimal" => s.map(|s| Tagged::Decimal(s.to_string())).ok_or_else(bad),
            "uuid" => v
                .get("hex")
                .and_then(Value::as_str)
                .filter(|h| h.len() == 32 && h.chars().all(|c| c.is_ascii_hexdigit()))
                .map(|h| Tagged::Uuid(h.to_ascii_lowercase()))
                .ok_or_else(bad),
            "bytes" => s
                .map(|s| Tagged::Bytes(s.as_bytes().to_vec()))
                .ok_or_else(bad),
            "base64" => s
                .and_then(|s| STANDARD.decode(s).ok())
                .map(Tagged::Bytes)
                .ok_or_else(bad),
            _ => Err("Unsupported type".to_string()),
        })
    }

    /// Encodes as kombu does (bytes: `bytes` when UTF-8, else `base64`).
    pub fn to_value(&self) -> Value {
        let (ty, val) = match self {
            Tagged::DateTime(dt) => (
                "datetime",
                json!(dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)),
            ),
            Tagged::NaiveDateTime(dt) => (
                "datetime",
                json!(dt.format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
            ),
            Tagged::Date(d) => ("date", json!(d.format("%Y-%m-%d").to_string())),
            Tagged::Time(t) => ("time", json!(t.format("%H:%M:%S%.f").to_string())),
            Tagged::Decimal(d) => ("decimal", json!(d)),
            Tagged::Uuid(h) => ("uuid", json!({ "hex": h })),
            Tagged::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => ("bytes", json!(s)),
                Err(_) => ("base64", json!(STANDARD.encode(b))),
            },
        };
        json!({"__type__": ty, "__value__": val})
    }
}

/// Parses Python's `datetime.isoformat()` output (aware or naive).
pub fn parse_datetime(s: &str) -> Option<Tagged> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(Tagged::DateTime(dt));
    }
    if let Ok(dt) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%:z") {
        return Some(Tagged::DateTime(dt));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .map(Tagged::NaiveDateTime)
}

/// Parses an `eta`/`expires` header into UTC, taking naive values as UTC
/// (`maybe_make_aware` in Celery).
pub fn parse_header_time(s: &str) -> Option<DateTime<chrono::Utc>> {
    match parse_datetime(s)? {
        Tagged::DateTime(dt) => Some(dt.with_timezone(&chrono::Utc)),
        Tagged::NaiveDateTime(n) => Some(n.and_utc()),
        _ => None,
    }
}

/// Checks every tagged object in `value`, as kombu's `loads` would, so a
/// message with an unknown tag is refused before it reaches a task.
pub fn validate(value: &Value) -> Result<(), String> {
    match value {
        Value::Array(items) => items.iter().try_for_each(validate),
        Value::Object(map) => {
            if let Some(r) = Tagged::from_value(value) {
                return r.map(|_| ());
            }
            map.values().try_for_each(validate)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_kombu_tags() {
        let v = json!({"__type__": "datetime", "__value__": "2024-05-06T07:08:09+00:00"});
        let t = Tagged::from_value(&v).unwrap().unwrap();
        assert!(matches!(t, Tagged::DateTime(_)));
        assert_eq!(
            t.to_value(),
            json!({"__type__": "datetime", "__value__": "2024-05-06T07:08:09+00:00"})
        );
        let u =
            json!({"__type__": "uuid", "__value__": {"hex": "0123456789abcdef0123456789abcdef"}});
        assert_eq!(Tagged::from_value(&u).unwrap().unwrap().to_value(), u);
        let b = Tagged::Bytes(vec![0xff, 0x00]);
        assert_eq!(b.to_value()["__type__"], "base64");
        assert_eq!(Tagged::from_value(&b.to_value()).unwrap().unwrap(), b);
        assert!(
            Tagged::from_value(&json!({"__type__": "set", "__value__": []}))
                .unwrap()
                .is_err()
        );
        assert!(Tagged::from_value(&json!({"a": 1})).is_none());
    }

    #[test]
    fn validates_nested_tags() {
        assert!(
            validate(&json!([1, {"x": [{"__type__": "decimal", "__value__": "1.5"}]}])).is_ok()
        );
        assert!(validate(&json!([{"__type__": "nope", "__value__": 1}])).is_err());
    }

    #[test]
    fn header_times_are_utc() {
        let t = parse_header_time("2026-11-21T06:05:31.651442+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-21T05:05:31.651442+00:00");
        let n = parse_header_time("2026-11-21T05:05:31").unwrap();
        assert_eq!(n.to_rfc3339(), "2026-11-21T05:05:31+00:00");
    }
}
