//! One element of a payload's `Data`, as JSON text: the row (or, for a
//! delete, its key) with `"$operation"` in front.
//!
//! ```text
//!  op "U", row_json  {"id": 7, "name": "Ada"}
//!        ──> {"$operation": "U", "id": 7, "name": "Ada"}      spliced after the opening brace
//! ```
//!
//! Spliced, not rebuilt: a 1M-row download through the gateway reads every
//! row once, and a jsonb round trip would parse and print each again.
//! Pure logic, tested with `#[test]`; `tributary.payload_item` is in
//! `crate::api::payload`.

use tributary_core::jsontext;

/// The key that carries the operation (`I`, `U` or `D`).
pub const OPERATION_KEY: &[u8] = b"$operation";

/// `body` (a JSON object's text) with `"$operation": op` as its first
/// member; None when `body` is not an object.
pub fn item(op: &str, body: &[u8]) -> Option<Vec<u8>> {
    let open = body.iter().position(|c| !c.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    let members = &body[open + 1..];
    let empty = members.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(body.len() + OPERATION_KEY.len() + op.len() + 10);
    out.push(b'{');
    jsontext::push_string(&mut out, OPERATION_KEY);
    out.extend_from_slice(b": ");
    jsontext::push_string(&mut out, op.as_bytes());
    if empty {
        out.push(b'}');
    } else {
        out.extend_from_slice(b", ");
        out.extend_from_slice(members);
    }
    Some(out)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn text(op: &str, body: &str) -> Option<String> {
        item(op, body.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn the_operation_comes_first_and_the_row_text_is_kept_as_it_is() {
        assert_eq!(
            text("U", r#"{"id": 7, "n": "{x}"}"#).as_deref(),
            Some(r#"{"$operation": "U", "id": 7, "n": "{x}"}"#)
        );
        assert_eq!(
            text("D", r#" {"id": 7}"#).as_deref(),
            Some(r#"{"$operation": "D", "id": 7}"#)
        );
        assert_eq!(text("I", "{ }").as_deref(), Some(r#"{"$operation": "I"}"#));
    }

    #[test]
    fn anything_but_an_object_is_refused() {
        assert_eq!(text("U", "[1]"), None);
        assert_eq!(text("U", ""), None);
        assert_eq!(text("U", "null"), None);
    }
}
