//! The claims of the token a request was verified with, as SQL reads them.
//!
//! ```text
//!  gateway: verified JWT ──> sync_act_for_peer(sub, claims)
//!                              └─> tributary.claims = '{"sub": "d1", "tenant": 7}'  (until COMMIT/ROLLBACK)
//!  row filter / RLS policy:  sync_claim('tenant') ──> '7'
//!                              (the setting's text is split once, then looked up)
//! ```
//!
//! Pure logic, tested with `#[test]`; the setting and `sync_claim` are in
//! `crate::api::guc` and `crate::api::claims`.

use tributary_core::jsontext;

/// Why a value cannot be `tributary.claims`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadClaims {
    /// Not JSON at all: the parser's complaint.
    NotJson(String),
    /// JSON, but not an object: what it is instead.
    NotObject(&'static str),
}

impl std::fmt::Display for BadClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadClaims::NotJson(e) => write!(f, "it is not JSON ({e})"),
            BadClaims::NotObject(kind) => write!(f, "it is a JSON {kind}, not an object"),
        }
    }
}

/// Empty (no claims) or the text of a JSON object.
pub fn check(text: &str) -> Result<(), BadClaims> {
    if text.is_empty() {
        return Ok(());
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(e) => Err(BadClaims::NotJson(e.to_string())),
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(other) => Err(BadClaims::NotObject(match other {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "boolean",
            serde_json::Value::Number(_) => "number",
            serde_json::Value::String(_) => "string",
            _ => "array",
        })),
    }
}

/// One value of the setting, split into its claims.
pub struct Claims {
    text: String,
    /// (name, value as `sync_claim` gives it); a later duplicate name wins,
    /// as in jsonb.
    values: Vec<(String, Option<String>)>,
}

impl Claims {
    /// Splits checked text (see [`check`]); anything else has no claims.
    pub fn parse(text: &str) -> Claims {
        let values = jsontext::split_object(text)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, raw)| (name.into_owned(), value_text(raw)))
            .collect();
        Claims {
            text: text.to_owned(),
            values,
        }
    }

    /// Whether these are the claims of `text`.
    pub fn is_of(&self, text: &str) -> bool {
        self.text == text
    }

    /// A string claim's value; the JSON text of a number, boolean, object
    /// or array; None when absent or null.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

fn value_text(raw: &str) -> Option<String> {
    match raw {
        "null" => None,
        s if s.starts_with('"') => jsontext::unquote(s),
        s => Some(s.to_owned()),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn only_empty_or_an_object_is_accepted() {
        assert_eq!(check(""), Ok(()));
        assert_eq!(check(r#"{"tenant": "t1"}"#), Ok(()));
        assert_eq!(check(" {} "), Ok(()));
        assert_eq!(check("[1]"), Err(BadClaims::NotObject("array")));
        assert_eq!(check("\"x\""), Err(BadClaims::NotObject("string")));
        assert_eq!(check("null"), Err(BadClaims::NotObject("null")));
        assert!(matches!(check("{\"a\": "), Err(BadClaims::NotJson(_))));
        assert!(matches!(check("{} {}"), Err(BadClaims::NotJson(_))));
    }

    #[test]
    fn a_string_gives_its_value_and_anything_else_its_json_text() {
        let c = Claims::parse(
            r#"{"sub": "d\"1", "tenant": 7, "exact": 12.50, "ok": true, "none": null,
                "roles": ["a", "b"], "org": {"id": 1, "n": "x"}}"#,
        );
        assert_eq!(c.get("sub"), Some("d\"1"));
        assert_eq!(c.get("tenant"), Some("7"));
        assert_eq!(c.get("exact"), Some("12.50"), "numbers stay exact");
        assert_eq!(c.get("ok"), Some("true"));
        assert_eq!(c.get("none"), None);
        assert_eq!(c.get("roles"), Some(r#"["a", "b"]"#));
        assert_eq!(c.get("org"), Some(r#"{"id": 1, "n": "x"}"#));
        assert_eq!(c.get("absent"), None);
    }

    #[test]
    fn the_last_of_duplicate_names_wins_and_no_claims_give_nothing() {
        let c = Claims::parse(r#"{"a": 1, "a": 2}"#);
        assert_eq!(c.get("a"), Some("2"));
        assert!(c.is_of(r#"{"a": 1, "a": 2}"#));
        assert_eq!(Claims::parse("").get("a"), None);
    }
}
