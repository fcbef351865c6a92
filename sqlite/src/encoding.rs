//! How hub values are stored in a peer file, chosen to lose nothing:
//!
//! | PostgreSQL | SQLite |
//! |---|---|
//! | smallint, integer, bigint, oid | INTEGER |
//! | real, double precision | REAL (NaN and infinities as TEXT) |
//! | boolean | INTEGER 0/1 |
//! | numeric | TEXT, every digit kept (`'12.50'`) |
//! | bytea | BLOB |
//! | timestamptz | TEXT ISO 8601 in UTC (`2024-01-02T03:04:05.25+00:00`) |
//! | timestamp | TEXT ISO 8601 (`2024-01-02T03:04:05`) |
//! | json, jsonb | TEXT (JSON) |
//! | arrays | TEXT (a JSON array) |
//! | uuid, text, date, time, interval, anything else | TEXT as PostgreSQL prints it |
//!
//! Values arrive as the text PostgreSQL prints (the hub session pins
//! `DateStyle`, `TimeZone` and `extra_float_digits`). The capture
//! triggers write each value back as JSON that `sync_apply` reads into the
//! hub's type ([`json_expr`]).

use crate::ColumnDef;
use rusqlite::types::Value as V;
use tributary_core::pgtype::{element_of, oid};
use tributary_core::quote;
use tributary_core::{jsontext, pgjson};

/// The declared SQLite type of a hub column type.
pub fn sqlite_type(type_oid: u32) -> &'static str {
    match type_oid {
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::BOOL => "INTEGER",
        oid::FLOAT4 | oid::FLOAT8 => "REAL",
        oid::BYTEA => "BLOB",
        _ => "TEXT",
    }
}

/// A hub value (its text, or None for NULL) as the SQLite value stored for it.
pub fn sqlite_value(type_oid: u32, text: Option<&[u8]>) -> V {
    let Some(b) = text else {
        return V::Null;
    };
    let s = String::from_utf8_lossy(b);
    match type_oid {
        // The output function (the stream) prints t/f; the initial copy's
        // cast to text, true/false.
        oid::BOOL => V::Integer(i64::from(matches!(&*s, "t" | "true"))),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => {
            s.parse().map(V::Integer).unwrap_or(V::Text(s.into_owned()))
        }
        oid::FLOAT4 | oid::FLOAT8 => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => V::Real(f),
            _ => V::Text(s.into_owned()),
        },
        oid::BYTEA => match s.strip_prefix("\\x").and_then(unhex) {
            Some(bytes) => V::Blob(bytes),
            None => V::Text(s.into_owned()),
        },
        oid::TIMESTAMP | oid::TIMESTAMPTZ => V::Text(pgjson::iso_timestamp(&s)),
        t if element_of(t).is_some() => {
            let mut out = String::new();
            pgjson::push_json(&mut out, t, b);
            V::Text(out)
        }
        _ => V::Text(s.into_owned()),
    }
}

fn unhex(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A hub value as the gateway's JSON gives it (`row_json`: the raw JSON
/// text of one column) as the SQLite value stored for it: the same value
/// [`sqlite_value`] stores for the text PostgreSQL prints, so a file filled
/// over HTTP holds what a worker-attached one holds. JSON and arrays are
/// kept as their JSON text; `null` is NULL.
pub fn sqlite_value_json(type_oid: u32, raw: &str) -> V {
    let raw = raw.trim();
    if raw == "null" {
        return V::Null;
    }
    if matches!(type_oid, oid::JSON | oid::JSONB) || raw.starts_with('[') || raw.starts_with('{') {
        return V::Text(raw.to_string());
    }
    let text = match raw {
        "true" => "t".to_string(),
        "false" => "f".to_string(),
        s if s.starts_with('"') => jsontext::unquote(s).unwrap_or_else(|| s.to_string()),
        s => s.to_string(),
    };
    sqlite_value(type_oid, Some(text.as_bytes()))
}

/// A row's key as the file's triggers write it: `json_object` over the
/// stored SQLite values, so that `_tributary_versions` and
/// `_tributary_outbox` agree on it. None for a key of no columns.
pub fn key_json<'a>(
    keys: impl IntoIterator<Item = (&'a ColumnDef, Option<&'a [u8]>)>,
) -> Option<String> {
    key_json_of(
        keys.into_iter()
            .map(|(c, v)| (c, sqlite_value(c.type_oid, v))),
    )
}

/// [`key_json`] over values already stored as SQLite's.
pub fn key_json_of<'a>(keys: impl IntoIterator<Item = (&'a ColumnDef, V)>) -> Option<String> {
    let mut s = String::from("{");
    let mut any = false;
    for (col, v) in keys {
        if any {
            s.push(',');
        }
        any = true;
        pgjson::push_str(&mut s, &col.name);
        s.push(':');
        match v {
            V::Null => s.push_str("null"),
            V::Integer(i) => s.push_str(&i.to_string()),
            V::Real(f) => s.push_str(&format!("{f:?}")),
            V::Text(t) => pgjson::push_str(&mut s, &t),
            V::Blob(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
                pgjson::push_str(&mut s, &format!("\\x{hex}"))
            }
        }
    }
    s.push('}');
    any.then_some(s)
}

/// The SQL expression a trigger writes for column `c` of row `r` (NEW or
/// OLD): the value as `sync_apply` reads it back into the hub's type.
pub fn json_expr(r: &str, c: &ColumnDef) -> String {
    let col = format!("{r}.{}", quote::ident(&c.name));
    if c.type_oid == oid::BYTEA {
        format!("CASE WHEN {col} IS NULL THEN NULL ELSE '\\x' || hex({col}) END")
    } else if matches!(c.type_oid, oid::JSON | oid::JSONB) || element_of(c.type_oid).is_some() {
        format!("CASE WHEN json_valid({col}) THEN json({col}) ELSE {col} END")
    } else {
        col
    }
}

/// `json_object(...)` over the columns `cols` of row `r`.
pub fn json_object_expr(r: &str, cols: &[&ColumnDef]) -> String {
    let parts: Vec<String> = cols
        .iter()
        .map(|c| format!("{}, {}", quote::literal(&c.name), json_expr(r, c)))
        .collect();
    format!("json_object({})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sv(t: u32, s: &str) -> V {
        sqlite_value(t, Some(s.as_bytes()))
    }

    #[test]
    fn values_map_without_loss() {
        assert_eq!(sv(16, "t"), V::Integer(1));
        assert_eq!(
            sv(16, "true"),
            V::Integer(1),
            "bool::text, as the copy reads it"
        );
        assert_eq!(sv(16, "false"), V::Integer(0));
        assert_eq!(sv(20, "-9223372036854775808"), V::Integer(i64::MIN));
        assert_eq!(
            sv(1700, "12345678901234567890.50"),
            V::Text("12345678901234567890.50".into())
        );
        assert_eq!(sv(701, "1.5"), V::Real(1.5));
        assert_eq!(sv(701, "NaN"), V::Text("NaN".into()));
        assert_eq!(sv(17, "\\x00ff"), V::Blob(vec![0, 255]));
        assert_eq!(
            sv(1184, "2024-01-02 03:04:05+00"),
            V::Text("2024-01-02T03:04:05+00:00".into())
        );
        assert_eq!(sv(1007, "{1,NULL}"), V::Text("[1,null]".into()));
        assert_eq!(
            sv(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            V::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
        );
        assert_eq!(sqlite_value(25, None), V::Null);
    }

    #[test]
    fn a_value_from_the_gateways_json_is_stored_as_its_printed_text_is() {
        // (type, what PostgreSQL prints): the JSON the gateway sends for
        // it (pgjson, as row_json prints it) stores the same SQLite value.
        let cases: &[(u32, &str)] = &[
            (16, "t"),
            (16, "f"),
            (21, "-7"),
            (20, "-9223372036854775808"),
            (1700, "12345678901234567890.50"),
            (1700, "NaN"),
            (701, "1.5"),
            (701, "-Infinity"),
            (700, "1e-45"),
            (17, "\\x00ff"),
            (1184, "2024-01-02 03:04:05.25+00"),
            (1114, "2024-01-02 03:04:05"),
            (1082, "2024-01-02"),
            (1007, "{1,NULL,3}"),
            (1009, "{\"a b\",\"c,d\",NULL}"),
            (3802, "{\"a\": [1, 2], \"b\": null}"),
            (3802, "\"just a string\""),
            (114, "[1, 2]"),
            (25, "tab'le \" ] \\ \u{e9}\u{1F600}"),
            (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            (1186, "1 day 02:03:04"),
        ];
        for (t, text) in cases {
            let mut raw = String::new();
            pgjson::push_json(&mut raw, *t, text.as_bytes());
            assert_eq!(
                sqlite_value_json(*t, &raw),
                sv(*t, text),
                "type {t}: {text} as {raw}"
            );
        }
        assert_eq!(sqlite_value_json(25, "null"), V::Null);
        assert_eq!(sqlite_value_json(3802, " null "), V::Null);
    }

    #[test]
    fn types_and_keys() {
        assert_eq!(sqlite_type(23), "INTEGER");
        assert_eq!(sqlite_type(1700), "TEXT");
        assert_eq!(sqlite_type(17), "BLOB");
        let id = ColumnDef {
            name: "i\"d".into(),
            type_oid: 23,
            key: true,
        };
        let at = ColumnDef {
            name: "at".into(),
            type_oid: 25,
            key: true,
        };
        assert_eq!(
            key_json([(&id, Some(&b"7"[..])), (&at, Some(&b"x'y"[..]))]),
            Some("{\"i\\\"d\":7,\"at\":\"x'y\"}".into())
        );
        assert_eq!(key_json([]), None);
    }
}
