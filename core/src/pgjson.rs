//! pgoutput values (text format) to JSON text, by column type.
//!
//! ```text
//!  (type oid, b"12.50")        ──> 12.50          numbers stay exact (no f64 round trip)
//!  (bool, b"t")                ──> true
//!  (json/jsonb, b"{\"a\":1}")  ──> {"a":1}        embedded as is
//!  (timestamptz, b"2024-01-02 03:04:05+00") ──> "2024-01-02T03:04:05+00:00"
//!  (int4[], b"{1,NULL,3}")     ──> [1,null,3]     arrays, nested too
//!  anything else               ──> a JSON string of the text
//! ```
//!
//! The shapes follow PostgreSQL's own `to_jsonb`, so a queue consumer sees
//! the same JSON as a `sync_changes_since` reader. The replication
//! connection pins `DateStyle`, `TimeZone` and `extra_float_digits`, which
//! these conversions rely on.

use crate::pgtype::{element_of, oid};

/// Appends `s` as a JSON string literal.
pub fn push_str(out: &mut String, s: &str) {
    crate::jsontext::push_str(out, s)
}

/// Appends the JSON for one non-NULL value of type `type_oid`, printed by
/// PostgreSQL as `text`.
pub fn push_json(out: &mut String, type_oid: u32, text: &[u8]) {
    let s = String::from_utf8_lossy(text);
    push_json_str(out, type_oid, &s);
}

fn push_json_str(out: &mut String, type_oid: u32, s: &str) {
    match type_oid {
        // The output function prints t/f; a cast to text, true/false.
        oid::BOOL => out.push_str(if matches!(s, "t" | "true") {
            "true"
        } else {
            "false"
        }),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => out.push_str(s),
        oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC => {
            // NaN and the infinities have no JSON number.
            if is_json_number(s) {
                out.push_str(s)
            } else {
                push_str(out, s)
            }
        }
        oid::JSON | oid::JSONB => out.push_str(s),
        oid::TIMESTAMP | oid::TIMESTAMPTZ => push_str(out, &iso_timestamp(s)),
        t => match element_of(t) {
            Some(elem) => push_array(out, elem, s),
            None => push_str(out, s),
        },
    }
}

fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = b.first().map(|c| *c == b'-').map_or(0, usize::from);
    b.len() > digits
        && b[digits].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_digit() || b"-+.eE".contains(c))
}

/// `2024-01-02 03:04:05.5+01` → `2024-01-02T03:04:05.5+01:00`, the shape
/// `to_jsonb` gives. `infinity` and other shapes pass through.
pub fn iso_timestamp(s: &str) -> String {
    let Some((date, time)) = s.split_once(' ') else {
        return s.to_string();
    };
    let mut t = format!("{date}T{time}");
    // A zone offset of whole hours, `+01`, becomes `+01:00`.
    let b = t.as_bytes();
    if b.len() >= 3 && matches!(b[b.len() - 3], b'+' | b'-') && !time.ends_with(" BC") {
        t.push_str(":00");
    }
    t
}

/// PostgreSQL's array text format (`{a,"b c",NULL,{1,2}}`, optionally with
/// explicit bounds `[0:1]={..}`) → a JSON array of `elem` values.
fn push_array(out: &mut String, elem: u32, s: &str) {
    let body = match s.find("={") {
        Some(i) if s.starts_with('[') => &s[i + 1..],
        _ => s,
    };
    let start = out.len();
    let mut chars = body.chars().peekable();
    if !parse_level(out, elem, &mut chars) || chars.next().is_some() {
        // Not an array literal after all: keep the text.
        out.truncate(start);
        push_str(out, s);
    }
}

fn parse_level(
    out: &mut String,
    elem: u32,
    it: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> bool {
    if it.next() != Some('{') {
        return false;
    }
    out.push('[');
    let mut first = true;
    loop {
        match it.peek() {
            Some('}') => {
                it.next();
                out.push(']');
                return true;
            }
            None => return false,
            _ => {}
        }
        if !first {
            out.push(',');
        }
        first = false;
        match it.peek() {
            Some('{') => {
                if !parse_level(out, elem, it) {
                    return false;
                }
            }
            Some('"') => {
                it.next();
                let mut v = String::new();
                loop {
                    match it.next() {
                        Some('\\') => match it.next() {
                            Some(c) => v.push(c),
                            None => return false,
                        },
                        Some('"') => break,
                        Some(c) => v.push(c),
                        None => return false,
                    }
                }
                push_json_str(out, elem, &v);
            }
            _ => {
                let mut v = String::new();
                while let Some(&c) = it.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    v.push(c);
                    it.next();
                }
                let v = v.trim();
                if v == "NULL" {
                    out.push_str("null")
                } else {
                    push_json_str(out, elem, v)
                }
            }
        }
        match it.peek() {
            Some(',') => {
                it.next();
            }
            Some('}') => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(t: u32, s: &str) -> String {
        let mut out = String::new();
        push_json(&mut out, t, s.as_bytes());
        out
    }

    #[test]
    fn scalars_take_their_json_shapes() {
        assert_eq!(j(16, "t"), "true");
        assert_eq!(j(16, "true"), "true", "bool::text prints true");
        assert_eq!(j(16, "false"), "false");
        assert_eq!(j(16, "f"), "false");
        assert_eq!(j(20, "-9223372036854775808"), "-9223372036854775808");
        assert_eq!(
            j(1700, "123456789012345678901234.50"),
            "123456789012345678901234.50"
        );
        assert_eq!(j(1700, "NaN"), "\"NaN\"");
        assert_eq!(j(701, "-Infinity"), "\"-Infinity\"");
        assert_eq!(j(701, "1.5e-07"), "1.5e-07");
        assert_eq!(j(3802, r#"{"a": [1, 2]}"#), r#"{"a": [1, 2]}"#);
        assert_eq!(
            j(25, "tab'le \"q\" ]\n\u{1}"),
            r#""tab'le \"q\" ]\n\u0001""#
        );
        assert_eq!(
            j(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
        );
        assert_eq!(j(17, "\\x00ff"), r#""\\x00ff""#);
    }

    #[test]
    fn timestamps_print_like_to_jsonb() {
        assert_eq!(
            j(1184, "2024-01-02 03:04:05.25+00"),
            "\"2024-01-02T03:04:05.25+00:00\""
        );
        assert_eq!(
            j(1184, "2024-01-02 03:04:05+05:30"),
            "\"2024-01-02T03:04:05+05:30\""
        );
        assert_eq!(j(1114, "2024-01-02 03:04:05"), "\"2024-01-02T03:04:05\"");
        assert_eq!(j(1184, "infinity"), "\"infinity\"");
    }

    #[test]
    fn arrays_become_json_arrays() {
        assert_eq!(j(1007, "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(
            j(1009, r#"{a,"b c","NULL","q\"x\\y",NULL}"#),
            r#"["a","b c","NULL","q\"x\\y",null]"#
        );
        assert_eq!(j(1007, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(j(1007, "[0:1]={5,6}"), "[5,6]");
        assert_eq!(j(1000, "{t,f}"), "[true,false]");
        assert_eq!(j(1007, "{}"), "[]");
        assert_eq!(j(3807, r#"{"{\"a\": 1}",NULL}"#), r#"[{"a": 1},null]"#);
        // Not an array literal: kept as text, never lost.
        assert_eq!(j(1007, "{1,2"), "\"{1,2\"");
    }
}
