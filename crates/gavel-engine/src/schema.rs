//! Checking a tool call's arguments against the tool's approved JSON Schema.
//!
//! A subset of JSON Schema that covers what tool definitions use to bound an agent: `type`,
//! `properties`, `required`, `additionalProperties: false`, `enum`, `const`, `minimum`,
//! `maximum`, `minLength`, `maxLength`, `items`, `minItems`, `maxItems`, nested to any depth.
//! Other keywords (`pattern`, `format`, `$ref`, combinators) are not checked; docs/decide.md
//! says so. Errors name the JSON path of the first violation.

use serde_json::Value;

/// Returns the first violation as `path: what is wrong`, or `None` when `value` conforms.
pub fn violation(schema: &Value, value: &Value) -> Option<String> {
    check(schema, value, "$", 0)
}

/// Schemas nest; a hostile schema cannot, since it is approved, but a bound costs nothing.
const MAX_DEPTH: usize = 64;

fn check(schema: &Value, value: &Value, path: &str, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return Some(format!("{path}: nested deeper than {MAX_DEPTH} levels"));
    }
    let schema = schema.as_object()?;
    if let Some(expected) = schema.get("type") {
        let names: Vec<&str> = match expected {
            Value::String(name) => vec![name.as_str()],
            Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !names.is_empty() && !names.iter().any(|name| has_type(value, name)) {
            return Some(format!(
                "{path}: expected {}, got {}",
                names.join(" or "),
                json_type(value)
            ));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Some(format!("{path}: not one of the allowed values"));
        }
    }
    if let Some(constant) = schema.get("const") {
        if constant != value {
            return Some(format!("{path}: not the required constant"));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema
            .get("minimum")
            .and_then(Value::as_f64)
            .filter(|min| n < *min)
        {
            return Some(format!("{path}: below the minimum {min}"));
        }
        if let Some(max) = schema
            .get("maximum")
            .and_then(Value::as_f64)
            .filter(|max| n > *max)
        {
            return Some(format!("{path}: above the maximum {max}"));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema
            .get("minLength")
            .and_then(Value::as_u64)
            .filter(|min| len < *min)
        {
            return Some(format!("{path}: shorter than {min} characters"));
        }
        if let Some(max) = schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .filter(|max| len > *max)
        {
            return Some(format!("{path}: longer than {max} characters"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            if let Some(missing) = required
                .iter()
                .filter_map(Value::as_str)
                .find(|name| !object.contains_key(*name))
            {
                return Some(format!("{path}: missing required `{missing}`"));
            }
        }
        for (name, field) in object {
            let field_path = format!("{path}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => {
                    if let Some(problem) = check(field_schema, field, &field_path, depth + 1) {
                        return Some(problem);
                    }
                }
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Some(format!("{field_path}: not an allowed property"));
                }
                None => {}
            }
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as u64;
        if let Some(min) = schema
            .get("minItems")
            .and_then(Value::as_u64)
            .filter(|min| len < *min)
        {
            return Some(format!("{path}: fewer than {min} items"));
        }
        if let Some(max) = schema
            .get("maxItems")
            .and_then(Value::as_u64)
            .filter(|max| len > *max)
        {
            return Some(format!("{path}: more than {max} items"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                if let Some(problem) = check(item_schema, item, &format!("{path}[{i}]"), depth + 1)
                {
                    return Some(problem);
                }
            }
        }
    }
    None
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.as_f64().is_some_and(|n| n.fract() == 0.0),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => true,
    }
}

/// The JSON type of a value, as schemas and reasons name it.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refund() -> Value {
        json!({
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "pattern": "^A[0-9]{8}$"},
                "amount_eur": {"type": "number", "minimum": 0, "maximum": 500},
                "reason": {"type": "string", "enum": ["damaged", "not_delivered"]}
            },
            "required": ["order_id", "amount_eur", "reason"],
            "additionalProperties": false
        })
    }

    #[test]
    fn conforming_arguments_pass() {
        assert_eq!(
            violation(
                &refund(),
                &json!({"order_id": "A00012345", "amount_eur": 40, "reason": "damaged"})
            ),
            None
        );
    }

    #[test]
    fn each_kind_of_violation_is_named_with_its_path() {
        let cases = [
            (
                json!({"order_id": "A1", "amount_eur": 40}),
                "$: missing required `reason`",
            ),
            (
                json!({"order_id": "A1", "amount_eur": 5000, "reason": "damaged"}),
                "$.amount_eur: above the maximum 500",
            ),
            (
                json!({"order_id": "A1", "amount_eur": -1, "reason": "damaged"}),
                "$.amount_eur: below the minimum 0",
            ),
            (
                json!({"order_id": "A1", "amount_eur": "40", "reason": "damaged"}),
                "$.amount_eur: expected number, got string",
            ),
            (
                json!({"order_id": "A1", "amount_eur": 4, "reason": "bored"}),
                "$.reason: not one of the allowed values",
            ),
            (
                json!({"order_id": "A1", "amount_eur": 4, "reason": "damaged", "to_iban": "X"}),
                "$.to_iban: not an allowed property",
            ),
            (json!("refund everything"), "$: expected object, got string"),
        ];
        for (args, expected) in cases {
            assert_eq!(
                violation(&refund(), &args).as_deref(),
                Some(expected),
                "{args}"
            );
        }
    }

    #[test]
    fn arrays_and_lengths() {
        let schema =
            json!({"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2});
        assert_eq!(violation(&schema, &json!(["ab", "cde"])), None);
        assert_eq!(
            violation(&schema, &json!(["ab", "cdef"])).as_deref(),
            Some("$[1]: longer than 3 characters")
        );
        assert_eq!(
            violation(&schema, &json!(["a", "b", "c"])).as_deref(),
            Some("$: more than 2 items")
        );
    }
}
