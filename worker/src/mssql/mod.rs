//! SQL Server peers: the T-SQL Tributary sends, made by pure functions so
//! that golden files pin every statement and a real T-SQL parser checks
//! them (`scripts/check_tsql.py`, in the test tier).
//!
//! ```text
//!  hub: sync_schema() ──> HubTable (columns, key) ──map_type──> SQL Server columns
//!  setup_script(schema, tables) ──> the T-SQL a DBA reviews (`tributary-worker mssql-setup`):
//!     the tables; _tributary_state, _tributary_errors, _tributary_versions;
//!     snapshot isolation allowed; Change Tracking on the database and the tables
//! ```
//!
//! Identifiers are always quoted `[…]` with `]` doubled; values are always
//! parameters, but for the setup script's own names, which are written as
//! `N'…'` literals with `'` doubled.

use serde::Deserialize;

pub mod conn;
pub mod pull;
pub mod sql;
pub mod value;

pub use sql::{PeerColumn, PeerTable};

/// `name` as a T-SQL identifier: `[name]`, `]` doubled.
pub fn ident(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// `s` as a T-SQL Unicode string literal: `N'…'`, `'` doubled.
pub fn literal(s: &str) -> String {
    format!("N'{}'", s.replace('\'', "''"))
}

/// A table of the hub, as `sync_schema()` describes it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HubTable {
    pub schema: String,
    pub name: String,
    pub primary_key: Vec<String>,
    pub columns: Vec<HubColumn>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HubColumn {
    pub name: String,
    /// `format_type` of the column (with its modifier: `numeric(10,2)`).
    #[serde(rename = "type")]
    pub type_name: String,
    pub type_oid: u32,
    pub nullable: bool,
    #[serde(default)]
    pub generated: bool,
}

impl HubTable {
    /// The table as the peer `schema` holds it.
    pub fn peer_table(&self, schema: &str) -> PeerTable {
        PeerTable {
            schema: schema.to_string(),
            name: self.peer_name(),
            hub: tributary_core::quote::qualified(&self.schema, &self.name),
            columns: self
                .columns
                .iter()
                .filter(|c| !c.generated && !tributary_core::tracking::is_tracking_column(&c.name))
                .map(|c| {
                    let key = self.primary_key.contains(&c.name);
                    PeerColumn {
                        name: c.name.clone(),
                        oid: c.type_oid,
                        sql: map_type(c.type_oid, &c.type_name, key).sql,
                        key,
                        nullable: c.nullable && !key,
                    }
                })
                .collect(),
        }
    }

    /// The SQL Server table's name, in the destination's one schema: a
    /// table of `public` keeps its name, others are `<hub schema>.<table>`
    /// (a dot inside the brackets: `[dbo].[sales.orders]`). Two hub tables
    /// that would share a name are refused by [`setup_script`].
    pub fn peer_name(&self) -> String {
        if self.schema == "public" {
            self.name.clone()
        } else {
            format!("{}.{}", self.schema, self.name)
        }
    }
}

/// A stream table (its relation) as the peer `schema` holds it: the same
/// mapping as the setup script's, from the relation's type modifiers.
pub fn peer_table_of(t: &crate::transaction::Table, schema: &str) -> PeerTable {
    let hub = HubTable {
        schema: t.schema.clone(),
        name: t.name.clone(),
        primary_key: vec![],
        columns: vec![],
    };
    PeerTable {
        schema: schema.to_string(),
        name: hub.peer_name(),
        hub: tributary_core::quote::qualified(&t.schema, &t.name),
        columns: t
            .relation
            .columns
            .iter()
            .filter(|c| !tributary_core::tracking::is_tracking_column(&c.name))
            .map(|c| PeerColumn {
                name: c.name.clone(),
                oid: c.type_oid,
                sql: map_type(
                    c.type_oid,
                    &modifier_text(c.type_oid, c.type_modifier),
                    c.key,
                )
                .sql,
                key: c.key,
                nullable: !c.key,
            })
            .collect(),
    }
}

/// A type modifier as `format_type` writes it, for [`map_type`]:
/// `(20)` for varchar(20), `(10,2)` for numeric(10,2), empty for none.
fn modifier_text(oid: u32, typmod: i32) -> String {
    if typmod < 4 {
        return String::new();
    }
    let m = typmod - 4;
    match oid {
        1043 | 1042 => format!("({m})"),
        1700 => format!("({},{})", (m >> 16) & 0xffff, m & 0xffff),
        _ => String::new(),
    }
}

/// How a hub type is stored in SQL Server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The column type, as written in CREATE TABLE.
    pub sql: String,
    /// The value crosses as text SQL Server converts (a number, a date) or
    /// keeps as it is (JSON, arrays): documented per type.
    pub note: &'static str,
}

/// The largest `nvarchar(n)` a key column may be (SQL Server keys are at
/// most 900 bytes; `nvarchar` is two bytes a character).
const KEY_CHARS: u32 = 450;

/// The SQL Server type of a hub column (`type_oid`, `format_type` text).
/// `key`: the column is part of the primary key (SQL Server cannot index
/// `(max)` types, so text keys are `nvarchar(450)`).
pub fn map_type(type_oid: u32, type_name: &str, key: bool) -> Mapped {
    let m = |sql: &str, note: &'static str| Mapped {
        sql: sql.to_string(),
        note,
    };
    let text = |n: Option<u32>| {
        let sql = match n {
            Some(n) if n <= 4000 && (!key || n <= KEY_CHARS) => format!("nvarchar({n})"),
            _ if key => format!("nvarchar({KEY_CHARS})"),
            _ => "nvarchar(max)".to_string(),
        };
        Mapped { sql, note: "text" }
    };
    // The modifier in format_type's text: varchar(20) -> [20], numeric(10,2) -> [10, 2].
    let modifier: Vec<u32> = type_name
        .split_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(inner, _)| {
            inner
                .split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match type_oid {
        16 => m("bit", "true/false as 1/0"),
        21 => m("smallint", "exact"),
        23 => m("int", "exact"),
        20 => m("bigint", "exact"),
        700 => m("real", "exact"),
        701 => m("float", "exact"),
        1700 => match modifier.as_slice() {
            [p, s] if *p <= 38 => Mapped {
                sql: format!("decimal({p},{s})"),
                note: "exact",
            },
            [p] if *p <= 38 => Mapped {
                sql: format!("decimal({p},0)"),
                note: "exact",
            },
            // Unconstrained (or wider than SQL Server's 38 digits): kept
            // exact as its text.
            _ => Mapped {
                sql: if key {
                    "nvarchar(450)"
                } else {
                    "nvarchar(100)"
                }
                .into(),
                note: "numeric without a precision SQL Server can hold: its exact text",
            },
        },
        25 => text(None),
        1043 => text(modifier.first().copied()),
        1042 => Mapped {
            sql: format!(
                "nchar({})",
                modifier.first().copied().unwrap_or(1).min(4000)
            ),
            note: "text",
        },
        2950 => m("uniqueidentifier", "exact"),
        1082 => m("date", "exact"),
        1083 => m("time(6)", "exact"),
        1114 => m("datetime2(6)", "exact"),
        1184 => m(
            "datetimeoffset(6)",
            "exact, with its offset (UTC from the hub)",
        ),
        17 => m(
            if key {
                "varbinary(900)"
            } else {
                "varbinary(max)"
            },
            "exact",
        ),
        114 | 3802 => m("nvarchar(max)", "JSON text"),
        _ => Mapped {
            sql: if key {
                format!("nvarchar({KEY_CHARS})")
            } else {
                "nvarchar(max)".into()
            },
            note: "its text as PostgreSQL prints it (arrays and other types as JSON)",
        },
    }
}

/// The T-SQL that prepares a SQL Server database as the peer of `tables`,
/// in `schema`: batches separated by `GO` lines, each safe to run again.
pub fn setup_script(
    destination: &str,
    schema: &str,
    tables: &[HubTable],
) -> Result<String, String> {
    let mut seen = std::collections::HashSet::new();
    for t in tables {
        if !seen.insert(t.peer_name()) {
            return Err(format!(
                "two hub tables would both be [{schema}].[{}] at the peer: list only one of them in the destination's tables",
                t.peer_name()
            ));
        }
        if t.primary_key.is_empty() {
            return Err(format!(
                "the hub's {}.{} has no primary key: a SQL Server peer needs one to merge rows",
                t.schema, t.name
            ));
        }
    }
    let s = ident(schema);
    let mut out = format!(
        "-- Tributary: prepares this database as the SQL Server peer {}.\n\
         -- Review it, then run it as a user who may create tables and alter the database\n\
         -- (or let tributary-worker run apply it, when its login may). Safe to run again.\n\
         SET XACT_ABORT ON;\nGO\n\
         IF SCHEMA_ID({}) IS NULL EXEC(N'CREATE SCHEMA {}');\nGO\n",
        sanitize_comment(destination),
        literal(schema),
        s.replace('\'', "''")
    );
    for t in tables {
        out.push_str(&create_table(&s, t));
    }
    out.push_str(&tributary_tables(&s));
    out.push_str(&change_tracking(&s, tables));
    Ok(out)
}

/// `CREATE TABLE` for a hub table (if missing), in the schema `s` (quoted).
fn create_table(s: &str, t: &HubTable) -> String {
    let mut p = t.peer_table("");
    for c in &mut p.columns {
        c.nullable = !c.key && t.columns.iter().any(|h| h.name == c.name && h.nullable);
    }
    format!(
        "-- the hub's {}.{}\n{}",
        sanitize_comment(&t.schema),
        sanitize_comment(&t.name),
        create_peer_table(s, &p)
    )
}

/// `CREATE TABLE` for a peer table (if missing), in the schema `s`
/// (quoted): one batch, `GO` after it.
pub fn create_peer_table(s: &str, t: &PeerTable) -> String {
    let name = format!("{s}.{}", ident(&t.name));
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let null = if c.nullable { "NULL" } else { "NOT NULL" };
            format!("    {} {} {null}", ident(&c.name), c.sql)
        })
        .collect();
    let pk: Vec<String> = t
        .columns
        .iter()
        .filter(|c| c.key)
        .map(|c| ident(&c.name))
        .collect();
    format!(
        "IF OBJECT_ID({}, N'U') IS NULL\nCREATE TABLE {name} (\n{},\n    PRIMARY KEY ({})\n);\nGO\n",
        literal(&name),
        cols.join(",\n"),
        pk.join(", ")
    )
}

/// Tributary's own tables at the peer, in the schema `s` (quoted).
fn tributary_tables(s: &str) -> String {
    let made = |what: &str, name: &str, columns: &str| {
        let q = format!("{s}.{}", ident(name));
        format!(
            "-- {what}\nIF OBJECT_ID({}, N'U') IS NULL\nCREATE TABLE {q} (\n{columns}\n);\nGO\n",
            literal(&q)
        )
    };
    [
        made(
            "the position of each slot that feeds this peer, written with the data",
            "_tributary_state",
            "    [slot] nvarchar(128) NOT NULL PRIMARY KEY,\n    [lsn] nvarchar(32) NOT NULL,\n    \
             [hub] nvarchar(128) NULL,\n    [pulled_version] bigint NULL,\n    \
             [updated_at] datetime2(6) NOT NULL DEFAULT SYSUTCDATETIME()",
        ),
        made(
            "what the app must see: MANUAL, DEFERRED and refused changes, with the hub's row",
            "_tributary_errors",
            "    [id] bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,\n    [tbl] nvarchar(256) NOT NULL,\n    \
             [pk] nvarchar(900) NOT NULL,\n    [op] nchar(1) NOT NULL,\n    [outcome] nvarchar(32) NOT NULL,\n    \
             [detail] nvarchar(max) NULL,\n    [local_data] nvarchar(max) NULL,\n    [hub_row] nvarchar(max) NULL,\n    \
             [conflict_id] bigint NULL,\n    [at] datetime2(6) NOT NULL DEFAULT SYSUTCDATETIME()",
        ),
        made(
            "the hub tables copied here, with the tracking epoch of each copy",
            "_tributary_tables",
            "    [hub] nvarchar(300) NOT NULL PRIMARY KEY,\n    [epoch] bigint NULL",
        ),
        made(
            "the hub revision of each row, the base of the peer's own edits",
            "_tributary_versions",
            "    [tbl] nvarchar(256) NOT NULL,\n    [pk_hash] binary(32) NOT NULL,\n    \
             [pk] nvarchar(max) NOT NULL,\n    [version] bigint NOT NULL,\n    PRIMARY KEY ([tbl], [pk_hash])",
        ),
    ]
    .concat()
}

/// Snapshot isolation and Change Tracking, on the database and on each
/// table, in the schema `s` (quoted).
fn change_tracking(s: &str, tables: &[HubTable]) -> String {
    let mut out = String::from(
        "-- snapshot isolation, for reading CHANGETABLE consistently\n\
         ALTER DATABASE CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON;\nGO\n\
         -- Change Tracking on the database (kept 7 days: a peer offline longer re-reads its tables whole)\n\
         IF NOT EXISTS (SELECT 1 FROM sys.change_tracking_databases WHERE database_id = DB_ID())\n    \
         ALTER DATABASE CURRENT SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 7 DAYS, AUTO_CLEANUP = ON);\nGO\n",
    );
    for t in tables {
        out.push_str(&track_table(s, &t.peer_name()));
    }
    out
}

/// Change Tracking on the peer table `name`, in the schema `s` (quoted).
pub fn track_table(s: &str, name: &str) -> String {
    let name = format!("{s}.{}", ident(name));
    format!(
        "IF NOT EXISTS (SELECT 1 FROM sys.change_tracking_tables WHERE object_id = OBJECT_ID({}))\n    \
         ALTER TABLE {name} ENABLE CHANGE_TRACKING WITH (TRACK_COLUMNS_UPDATED = ON);\nGO\n",
        literal(&name)
    )
}

/// One statement that answers 1 when the peer is set up for `tables` in
/// `schema`: Tributary's tables there, Change Tracking on every table and
/// on the database, snapshot isolation allowed. `run` applies the setup
/// script only when it is not.
pub fn setup_done(schema: &str, tables: &[String]) -> String {
    let s = ident(schema);
    let own: Vec<String> = [
        "_tributary_state",
        "_tributary_errors",
        "_tributary_versions",
    ]
    .iter()
    .map(|t| {
        format!(
            "OBJECT_ID({}, N'U') IS NOT NULL",
            literal(&format!("{s}.{}", ident(t)))
        )
    })
    .collect();
    let tracked: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "EXISTS (SELECT 1 FROM sys.change_tracking_tables WHERE object_id = OBJECT_ID({}))",
                literal(&format!("{s}.{}", ident(t)))
            )
        })
        .collect();
    format!(
        "SELECT CASE WHEN {}\n    AND {}\n    AND EXISTS (SELECT 1 FROM sys.change_tracking_databases WHERE database_id = DB_ID())\n    \
         AND EXISTS (SELECT 1 FROM sys.databases WHERE database_id = DB_ID() AND snapshot_isolation_state = 1)\n    \
         THEN 1 ELSE 0 END;",
        own.join("\n    AND "),
        if tracked.is_empty() { "1 = 1".to_string() } else { tracked.join("\n    AND ") }
    )
}

/// `tributary-worker mssql-setup`: the setup script of destination `name`
/// (kind mssql), from the hub's tables it takes (`sync_schema()`, read as
/// the worker's role).
pub async fn setup_from_hub(
    config: &crate::config::Config,
    name: &str,
) -> Result<String, crate::error::Error> {
    use crate::error::Error;
    let d = config
        .destinations
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| Error::Config(format!("no destination named {name:?}")))?;
    if d.kind != crate::config::Kind::Mssql {
        return Err(Error::Config(format!(
            "destination {name:?} is of kind {}, not mssql",
            d.kind.name()
        )));
    }
    let opts = crate::source::ConnectOptions::from_url(
        &config.source.url,
        config.source.password.clone(),
    )?;
    let client = crate::hub::connect(&opts, "tributary-worker mssql-setup").await?;
    crate::hub::check_extension(&client).await?;
    let tables = hub_tables(&client, d).await?;
    setup_of(d, &tables)
}

/// The setup script of destination `d` for the hub's `tables`; tables
/// that cannot be set up are a configuration error.
pub fn setup_of(
    d: &crate::config::Destination,
    tables: &[HubTable],
) -> Result<String, crate::error::Error> {
    let schema = d.schema.as_deref().unwrap_or("dbo");
    setup_script(&d.name, schema, tables).map_err(|m| crate::error::Error::Definite {
        message: format!("destination {:?}: {m}", d.name),
        hint: "Fix the destination's tables.".into(),
        cause: crate::error::Cause::Config,
    })
}

/// The hub's tables that destination `d` takes (`sync_schema()`, read as
/// the worker's role). None is an error: the peer would get nothing.
pub async fn hub_tables(
    client: &tokio_postgres::Client,
    d: &crate::config::Destination,
) -> Result<Vec<HubTable>, crate::error::Error> {
    use crate::error::{Cause, Context, Error};
    let schema: String = client
        .query_one("SELECT sync_schema()::text", &[])
        .await
        .context("reading the hub's tables (sync_schema)")?
        .get(0);
    #[derive(Deserialize)]
    struct Schema {
        tables: Vec<HubTable>,
    }
    let all: Schema = serde_json::from_str(&schema)
        .map_err(|e| Error::bug(format!("sync_schema() gave what cannot be read: {e}")))?;
    let tables: Vec<HubTable> = all
        .tables
        .into_iter()
        .filter(|t| {
            let full = format!("{}.{}", t.schema, t.name);
            d.tables.iter().any(|g| crate::router::glob_match(g, &full))
        })
        .collect();
    if tables.is_empty() {
        return Err(Error::Definite {
            message: format!(
                "destination {:?}: no tracked table the worker's role may read matches {:?}",
                d.name, d.tables
            ),
            hint: "Track the tables (SELECT sync_track('t')) and grant the worker's role (SELECT sync_worker_grant('<role>')), or fix tables.".into(),
            cause: Cause::Config,
        });
    }
    Ok(tables)
}

/// A name in a `--` comment: no line breaks.
fn sanitize_comment(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn col(name: &str, type_name: &str, type_oid: u32, nullable: bool) -> HubColumn {
        HubColumn {
            name: name.into(),
            type_name: type_name.into(),
            type_oid,
            nullable,
            generated: false,
        }
    }

    /// Every mapped type, and hostile names.
    pub(super) fn tables() -> Vec<HubTable> {
        vec![
            HubTable {
                schema: "public".into(),
                name: "customers".into(),
                primary_key: vec!["id".into()],
                columns: vec![
                    col("id", "integer", 23, false),
                    col("name", "text", 25, true),
                    col("code", "character varying(20)", 1043, true),
                    col("flag", "boolean", 16, true),
                    col("small", "smallint", 21, true),
                    col("big", "bigint", 20, true),
                    col("r", "real", 700, true),
                    col("f", "double precision", 701, true),
                    col("price", "numeric(10,2)", 1700, true),
                    col("amount", "numeric", 1700, true),
                    col("ch", "character(3)", 1042, true),
                    col("uid", "uuid", 2950, true),
                    col("born", "date", 1082, true),
                    col("at_time", "time without time zone", 1083, true),
                    col("local_at", "timestamp without time zone", 1114, true),
                    col("at", "timestamp with time zone", 1184, true),
                    col("raw", "bytea", 17, true),
                    col("doc", "jsonb", 3802, true),
                    col("tags", "integer[]", 1007, true),
                    HubColumn {
                        generated: true,
                        ..col("twice", "integer", 23, true)
                    },
                ],
            },
            HubTable {
                schema: "sa.les".into(),
                name: "tab'le]".into(),
                primary_key: vec!["k\"ey".into(), "]".into()],
                columns: vec![
                    col("k\"ey", "text", 25, false),
                    col("]", "uuid", 2950, false),
                    col("va'l", "character varying", 1043, true),
                ],
            },
        ]
    }

    pub(super) fn golden(name: &str, got: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/mssql")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{} is missing: run with UPDATE_GOLDEN=1 and review it",
                path.display()
            )
        });
        assert_eq!(
            got,
            want,
            "{} differs: review, then UPDATE_GOLDEN=1",
            path.display()
        );
    }

    #[test]
    fn the_setup_script_is_the_golden_one() {
        golden("setup.sql", &setup_script("erp", "dbo", &tables()).unwrap());
        golden(
            "setup_hostile_schema.sql",
            &setup_script("e'r\np", "my]sch'ema", &tables()[1..]).unwrap(),
        );
    }

    #[test]
    fn tables_that_would_share_a_name_or_have_no_key_are_refused() {
        let mut a = tables()[1].clone();
        a.schema = "public".into();
        a.name = "sa.les.tab'le]".into();
        let e = setup_script("erp", "dbo", &[tables()[1].clone(), a]).unwrap_err();
        assert!(e.contains("would both be"), "{e}");
        let mut k = tables()[0].clone();
        k.primary_key.clear();
        assert!(setup_script("erp", "dbo", &[k])
            .unwrap_err()
            .contains("no primary key"));
    }

    #[test]
    fn identifiers_and_literals_are_quoted_with_their_delimiters_doubled() {
        assert_eq!(ident("a"), "[a]");
        assert_eq!(ident("a]b"), "[a]]b]");
        assert_eq!(ident("]]"), "[]]]]]");
        assert_eq!(ident("tab'le\""), "[tab'le\"]");
        assert_eq!(literal("it's"), "N'it''s'");
        assert_eq!(literal("[a]]b]"), "N'[a]]b]'");
    }

    #[test]
    fn every_type_maps_and_keys_fit_an_index() {
        let t = |oid, name: &str, key| map_type(oid, name, key).sql;
        assert_eq!(t(16, "boolean", false), "bit");
        assert_eq!(t(21, "smallint", false), "smallint");
        assert_eq!(t(23, "integer", false), "int");
        assert_eq!(t(20, "bigint", false), "bigint");
        assert_eq!(t(700, "real", false), "real");
        assert_eq!(t(701, "double precision", false), "float");
        assert_eq!(t(1700, "numeric(10,2)", false), "decimal(10,2)");
        assert_eq!(t(1700, "numeric(12)", false), "decimal(12,0)");
        assert_eq!(t(1700, "numeric", false), "nvarchar(100)");
        assert_eq!(t(1700, "numeric(60,2)", false), "nvarchar(100)");
        assert_eq!(t(25, "text", false), "nvarchar(max)");
        assert_eq!(t(25, "text", true), "nvarchar(450)");
        assert_eq!(t(1043, "character varying(20)", false), "nvarchar(20)");
        assert_eq!(t(1043, "character varying(5000)", false), "nvarchar(max)");
        assert_eq!(t(1043, "character varying(1000)", true), "nvarchar(450)");
        assert_eq!(t(1043, "character varying", false), "nvarchar(max)");
        assert_eq!(t(1042, "character(3)", false), "nchar(3)");
        assert_eq!(t(2950, "uuid", true), "uniqueidentifier");
        assert_eq!(t(1082, "date", false), "date");
        assert_eq!(t(1083, "time without time zone", false), "time(6)");
        assert_eq!(
            t(1114, "timestamp without time zone", false),
            "datetime2(6)"
        );
        assert_eq!(
            t(1184, "timestamp with time zone", false),
            "datetimeoffset(6)"
        );
        assert_eq!(t(17, "bytea", false), "varbinary(max)");
        assert_eq!(t(17, "bytea", true), "varbinary(900)");
        assert_eq!(t(3802, "jsonb", false), "nvarchar(max)");
        assert_eq!(t(114, "json", false), "nvarchar(max)");
        assert_eq!(t(1007, "integer[]", false), "nvarchar(max)");
        assert_eq!(t(1007, "integer[]", true), "nvarchar(450)");
    }
}
