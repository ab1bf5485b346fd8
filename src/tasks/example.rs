//! `app.workers.tasks.example_task(x, y)`: `return x + y`, with Python's `+`.

use crate::registry::Registry;
use crate::task::TaskError;
use serde_json::{Number, Value};

pub const NAME: &str = "app.workers.tasks.example_task";

pub fn register(registry: &mut Registry) {
    // Pure computation: async, so it runs inline without a thread hop.
    registry.asynchronous(NAME, &["x", "y"], |_ctx, args| {
        let r = py_add(args.value(0), args.value(1));
        async move { r }
    });
}

/// Python's name for a JSON value's type, as TypeError messages show it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// A number as Python sees it (bools are ints): integer or float.
enum Num {
    Int(i128),
    Float(f64),
}

fn as_num(v: &Value) -> Option<Num> {
    match v {
        Value::Bool(b) => Some(Num::Int(*b as i128)),
        Value::Number(n) => n
            .as_i64()
            .map(|i| Num::Int(i as i128))
            .or_else(|| n.as_u64().map(|u| Num::Int(u as i128)))
            .or_else(|| n.as_f64().map(Num::Float)),
        _ => None,
    }
}

/// `x + y` with Python semantics for JSON values: numbers add (int stays
/// int), strings and lists concatenate, anything else is Python's TypeError.
pub fn py_add(x: &Value, y: &Value) -> Result<Value, TaskError> {
    if let (Some(a), Some(b)) = (as_num(x), as_num(y)) {
        return match (a, b) {
            (Num::Int(a), Num::Int(b)) => {
                let sum = a + b;
                i64::try_from(sum)
                    .map(Value::from)
                    .or_else(|_| u64::try_from(sum).map(Value::from))
                    .map_err(|_| TaskError::builtin("OverflowError", "int too large for JSON"))
            }
            (a, b) => {
                let f = |n: Num| match n {
                    Num::Int(i) => i as f64,
                    Num::Float(f) => f,
                };
                let sum = f(a) + f(b);
                Number::from_f64(sum).map(Value::Number).ok_or_else(|| {
                    TaskError::builtin("OverflowError", "float result is not finite")
                })
            }
        };
    }
    match (x, y) {
        (Value::String(a), Value::String(b)) => Ok(Value::String(format!("{a}{b}"))),
        (Value::Array(a), Value::Array(b)) => {
            Ok(Value::Array(a.iter().chain(b).cloned().collect()))
        }
        (Value::String(_), other) => Err(TaskError::type_error(format!(
            "can only concatenate str (not \"{}\") to str",
            type_name(other)
        ))),
        (Value::Array(_), other) => Err(TaskError::type_error(format!(
            "can only concatenate list (not \"{}\") to list",
            type_name(other)
        ))),
        (a, b) => Err(TaskError::type_error(format!(
            "unsupported operand type(s) for +: '{}' and '{}'",
            type_name(a),
            type_name(b)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::py_add;
    use serde_json::json;

    #[test]
    fn adds_like_python() {
        assert_eq!(py_add(&json!(4), &json!(5)).unwrap(), json!(9));
        assert_eq!(py_add(&json!(1.5), &json!(3)).unwrap(), json!(4.5));
        assert_eq!(py_add(&json!(true), &json!(1)).unwrap(), json!(2));
        assert_eq!(py_add(&json!("a"), &json!("b")).unwrap(), json!("ab"));
        assert_eq!(py_add(&json!([1]), &json!([2])).unwrap(), json!([1, 2]));
        assert_eq!(
            py_add(&json!(i64::MAX), &json!(1)).unwrap(),
            json!(9223372036854775808u64)
        );
    }

    #[test]
    fn type_errors_match_python() {
        let e = py_add(&json!("a"), &json!(1)).unwrap_err();
        assert_eq!(
            e.exc_message,
            vec![json!("can only concatenate str (not \"int\") to str")]
        );
        let e = py_add(&json!(1), &json!(null)).unwrap_err();
        assert_eq!(
            e.exc_message,
            vec![json!(
                "unsupported operand type(s) for +: 'int' and 'NoneType'"
            )]
        );
    }
}
