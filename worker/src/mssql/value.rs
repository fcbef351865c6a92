//! Values between the hub and a SQL Server peer, both ways, as text.
//!
//! ```text
//!  push: PostgreSQL's text output ──to_peer──> a JSON string the staging OPENJSON converts to the column's type
//!  pull: CONVERT(nvarchar(max), col, style) ──to_hub──> the JSON value sync_apply takes
//! ```
//!
//! A hub value SQL Server cannot hold (an infinite timestamp, a year
//! outside 1..9999, a NaN, a time of 24:00) is refused here, before
//! anything is sent: the change is set aside as a dead letter instead of
//! failing the whole batch at the server.

use serde_json::Value as Json;

/// The hub's text of a value of type `oid`, as the JSON the staging
/// statement reads into a column of SQL Server type `sql` (see
/// [`super::map_type`]). Err: SQL Server cannot hold it, with why.
pub fn to_peer(oid: u32, sql: &str, text: Option<&str>) -> Result<Json, String> {
    let Some(t) = text else {
        return Ok(Json::Null);
    };
    let s = |x: &str| Ok(Json::String(x.to_string()));
    match oid {
        16 => match t {
            "t" => s("1"),
            "f" => s("0"),
            other => Err(format!("{other:?} is not a boolean")),
        },
        // bytea in hex output: \x0a0b -> 0x0a0b, converted with style 1.
        17 => match t.strip_prefix("\\x") {
            Some(hex) if hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Json::String(format!("0x{hex}")))
            }
            _ => Err(
                "bytea not in hex output (set bytea_output = 'hex' for the worker's role)".into(),
            ),
        },
        700 | 701 if matches!(t, "NaN" | "Infinity" | "-Infinity") => Err(format!(
            "{t} has no SQL Server float (it holds finite numbers only)"
        )),
        1700 if sql.starts_with("decimal") && matches!(t, "NaN" | "Infinity" | "-Infinity") => {
            Err(format!("{t} has no SQL Server {sql}"))
        }
        1082 | 1114 | 1184 => {
            if t.contains("infinity") {
                return Err(format!("{t} has no SQL Server date or time"));
            }
            if t.ends_with(" BC") {
                return Err(format!(
                    "{t} is before year 1, which SQL Server cannot hold"
                ));
            }
            if t.split('-').next().is_some_and(|y| y.len() > 4) {
                return Err(format!(
                    "{t} is after year 9999, which SQL Server cannot hold"
                ));
            }
            if oid == 1184 {
                return offset_form(t).map(Json::String);
            }
            s(t)
        }
        1083 if t.starts_with("24:") => Err(format!(
            "{t} has no SQL Server time (it ends at 23:59:59.9999999)"
        )),
        _ => s(t),
    }
}

/// A timestamptz's text with its offset as SQL Server reads it: `+05`
/// becomes `+05:00`. An offset with seconds (historic local times) has
/// no SQL Server form.
fn offset_form(t: &str) -> Result<String, String> {
    let at = t
        .rfind(['+', '-'])
        .filter(|&i| i > 10)
        .ok_or_else(|| format!("{t:?} has no offset"))?;
    let (stamp, off) = t.split_at(at);
    match off.len() {
        3 => Ok(format!("{stamp}{off}:00")),
        6 => Ok(t.to_string()),
        _ => Err(format!(
            "{t}: an offset with seconds has no SQL Server datetimeoffset"
        )),
    }
}

/// The style that `CONVERT(nvarchar(max), col, style)` renders a column
/// of SQL Server type `sql` with, so that [`to_hub`] can read it back
/// exactly: ISO 8601 for dates and times, `0x…` for binary, 17 digits for
/// floats. None: the default rendering is exact.
pub fn pull_style(sql: &str) -> Option<u8> {
    let base = sql.split('(').next().unwrap_or(sql);
    match base {
        "date" | "time" | "datetime2" | "datetimeoffset" => Some(126),
        "varbinary" => Some(1),
        "float" | "real" => Some(3),
        _ => None,
    }
}

/// A peer value, as [`pull_style`] rendered it, as the JSON value that
/// `sync_apply` takes for a hub column of type `oid`. Err: it is not a
/// value of that type (a hub `json` column holding text that is not JSON).
pub fn to_hub(oid: u32, text: Option<&str>) -> Result<Json, String> {
    let Some(t) = text else {
        return Ok(Json::Null);
    };
    match oid {
        16 => match t {
            "1" => Ok(Json::Bool(true)),
            "0" => Ok(Json::Bool(false)),
            other => Err(format!("{other:?} is not a bit")),
        },
        17 => match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => Ok(Json::String(format!("\\x{}", hex.to_ascii_lowercase()))),
            None => Err(format!("{t:?} is not binary as CONVERT style 1 writes it")),
        },
        20 | 21 | 23 => t
            .parse::<i64>()
            .map(Json::from)
            .map_err(|_| format!("{t:?} is not an integer")),
        114 | 3802 => serde_json::from_str(t).map_err(|e| format!("not JSON: {e}")),
        2950 => Ok(Json::String(t.to_ascii_lowercase())),
        _ => Ok(Json::String(t.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hub_values_become_what_sql_server_converts() {
        let p = |oid, sql, t| to_peer(oid, sql, Some(t));
        assert_eq!(p(16, "bit", "t"), Ok(json!("1")));
        assert_eq!(p(16, "bit", "f"), Ok(json!("0")));
        assert_eq!(p(17, "varbinary(max)", "\\x00ff"), Ok(json!("0x00ff")));
        assert!(p(17, "varbinary(max)", "\\000").is_err(), "escape output");
        assert_eq!(
            p(1184, "datetimeoffset(6)", "2024-05-01 10:00:00.5+00"),
            Ok(json!("2024-05-01 10:00:00.5+00:00"))
        );
        assert_eq!(
            p(1184, "datetimeoffset(6)", "2024-05-01 10:00:00-05:30"),
            Ok(json!("2024-05-01 10:00:00-05:30"))
        );
        assert!(p(1184, "datetimeoffset(6)", "1850-01-01 00:00:00+00:53:28").is_err());
        assert!(p(1114, "datetime2(6)", "infinity").is_err());
        assert!(p(1082, "date", "0044-03-15 BC").is_err());
        assert!(p(1082, "date", "12000-01-01").is_err());
        assert_eq!(p(1082, "date", "2024-02-29"), Ok(json!("2024-02-29")));
        assert!(p(701, "float", "NaN").is_err());
        assert!(p(1700, "decimal(10,2)", "NaN").is_err());
        assert_eq!(
            p(1700, "nvarchar(100)", "NaN"),
            Ok(json!("NaN")),
            "kept as text"
        );
        assert!(p(1083, "time(6)", "24:00:00").is_err());
        assert_eq!(
            p(25, "nvarchar(max)", "tab'le ]\""),
            Ok(json!("tab'le ]\""))
        );
        assert_eq!(to_peer(23, "int", None), Ok(Json::Null));
    }

    #[test]
    fn peer_values_become_what_sync_apply_takes() {
        assert_eq!(to_hub(16, Some("1")), Ok(json!(true)));
        assert_eq!(to_hub(16, Some("0")), Ok(json!(false)));
        assert_eq!(to_hub(17, Some("0x00FF")), Ok(json!("\\x00ff")));
        assert_eq!(to_hub(23, Some("-42")), Ok(json!(-42)));
        assert!(to_hub(23, Some("4.2")).is_err());
        assert_eq!(to_hub(3802, Some("{\"a\":[1]}")), Ok(json!({"a": [1]})));
        assert!(to_hub(3802, Some("{not json")).is_err());
        assert_eq!(
            to_hub(2950, Some("6F9619FF-8B86-D011-B42D-00C04FC964FF")),
            Ok(json!("6f9619ff-8b86-d011-b42d-00c04fc964ff"))
        );
        assert_eq!(
            to_hub(1184, Some("2024-05-01T10:00:00.5000000+00:00")),
            Ok(json!("2024-05-01T10:00:00.5000000+00:00"))
        );
        assert_eq!(to_hub(25, None), Ok(Json::Null));
    }

    #[test]
    fn each_mapped_type_is_read_back_with_an_exact_style() {
        assert_eq!(pull_style("datetime2(6)"), Some(126));
        assert_eq!(pull_style("datetimeoffset(6)"), Some(126));
        assert_eq!(pull_style("date"), Some(126));
        assert_eq!(pull_style("time(6)"), Some(126));
        assert_eq!(pull_style("varbinary(max)"), Some(1));
        assert_eq!(pull_style("float"), Some(3));
        assert_eq!(pull_style("real"), Some(3));
        assert_eq!(pull_style("decimal(10,2)"), None);
        assert_eq!(pull_style("nvarchar(max)"), None);
    }
}
