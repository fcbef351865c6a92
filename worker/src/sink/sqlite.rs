//! The SQLite peer destination, push side: the hub's changes into a
//! SQLite file, per source transaction, exactly once.
//!
//! ```text
//!  BEGIN IMMEDIATE
//!    UPDATE _tributary_ctl SET applying = 1          -- the file's outbox triggers ignore these writes
//!    INSERT ... ON CONFLICT (pk) DO UPDATE ...       -- per change; DELETE; DELETE (truncate)
//!    _tributary_versions(tbl, pk) = sync_version     -- the hub revision the peer holds
//!    _tributary_state(slot) = end LSN                -- progress, same transaction
//!    UPDATE _tributary_ctl SET applying = 0
//!  COMMIT                                            -- durable (synchronous = FULL): publish it
//! ```
//!
//! Delivery contract (see [`crate::sink`]): at-least-once delivery, exactly
//! once effect: a transaction whose commit LSN is below the stored end LSN
//! is skipped before anything is written; small source transactions may
//! share one SQLite transaction, a source transaction is never split.
//!
//! **Tables** are created from the hub's columns on first sight (and gain
//! columns the hub added later). `public.t` becomes `t`; a table of another
//! schema `s.t` becomes the single identifier `"s.t"`. Type mapping, chosen
//! to lose nothing:
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
//! A locked file waits `busy_timeout`, then is retried with backoff; a file
//! that cannot be opened likewise. Meanwhile this destination holds the slot
//! (and, through the bounded channel, the other destinations) back.

use super::{AtClose, AtCommit, Batch, Done, ToSink};
use crate::error::Error;
use crate::lsn::Lsn;
use crate::metrics::DestinationMetrics;
use crate::pgoutput::{Column, Value};
use crate::transaction::{text, Change, Op, Table};
use crate::value::{self, oid};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The bookkeeping tables every peer file holds.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _tributary_state (
    slot TEXT PRIMARY KEY,
    lsn TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS _tributary_versions (
    tbl TEXT NOT NULL,
    pk TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (tbl, pk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _tributary_ctl (applying INTEGER NOT NULL);
INSERT INTO _tributary_ctl (applying) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM _tributary_ctl);
CREATE TABLE IF NOT EXISTS _tributary_tables (
    tbl TEXT PRIMARY KEY,
    hub TEXT NOT NULL,
    epoch INTEGER
);
CREATE TABLE IF NOT EXISTS _tributary_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    pk TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('I', 'U', 'D')),
    data TEXT,
    changed TEXT,
    base INTEGER,
    gen INTEGER NOT NULL DEFAULT 0,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (tbl, pk)
);
CREATE TABLE IF NOT EXISTS _tributary_errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    pk TEXT NOT NULL,
    op TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT,
    local_data TEXT,
    hub_row TEXT,
    conflict_id INTEGER,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
";

/// Quotes an SQLite identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The SQLite table name of a hub table.
pub fn table_name(schema: &str, name: &str) -> String {
    if schema == "public" {
        name.to_string()
    } else {
        format!("{schema}.{name}")
    }
}

/// The declared SQLite type of a hub column type.
pub fn sqlite_type(type_oid: u32) -> &'static str {
    match type_oid {
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::BOOL => "INTEGER",
        oid::FLOAT4 | oid::FLOAT8 => "REAL",
        17 => "BLOB",
        _ => "TEXT",
    }
}

/// A hub value (text format) as the SQLite value stored for it.
pub fn sqlite_value(type_oid: u32, v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    let Some(b) = text(v) else {
        return V::Null;
    };
    let s = String::from_utf8_lossy(b);
    match type_oid {
        oid::BOOL => V::Integer(i64::from(s == "t")),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => {
            s.parse().map(V::Integer).unwrap_or(V::Text(s.into_owned()))
        }
        oid::FLOAT4 | oid::FLOAT8 => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => V::Real(f),
            _ => V::Text(s.into_owned()),
        },
        17 => match s.strip_prefix("\\x").and_then(unhex) {
            Some(bytes) => V::Blob(bytes),
            None => V::Text(s.into_owned()),
        },
        oid::TIMESTAMP | oid::TIMESTAMPTZ => V::Text(value::iso_timestamp(&s)),
        t if value::element_of(t).is_some() => {
            let mut out = String::new();
            value::push_json(&mut out, t, b);
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

/// The key of a change as the file's triggers write it: `json_object` over
/// the stored SQLite values, so that `_tributary_versions` and
/// `_tributary_outbox` agree on it.
pub fn lite_pk(c: &Change) -> Option<String> {
    use rusqlite::types::Value as V;
    let mut s = String::from("{");
    let mut any = false;
    for (col, v) in c.key_columns() {
        if any {
            s.push(',');
        }
        any = true;
        value::push_str(&mut s, &col.name);
        s.push(':');
        match sqlite_value(col.type_oid, v) {
            V::Null => s.push_str("null"),
            V::Integer(i) => s.push_str(&i.to_string()),
            V::Real(f) => s.push_str(&format!("{f:?}")),
            V::Text(t) => value::push_str(&mut s, &t),
            V::Blob(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
                value::push_str(&mut s, &format!("\\x{hex}"))
            }
        }
    }
    s.push('}');
    any.then_some(s)
}

/// The JSON a trigger writes for column `c` of row `r` (NEW or OLD):
/// the value as `sync_apply` reads it back into the hub's type.
fn json_expr(r: &str, c: &Column) -> String {
    let col = format!("{r}.{}", ident(&c.name));
    if c.type_oid == 17 {
        format!("CASE WHEN {col} IS NULL THEN NULL ELSE '\\x' || hex({col}) END")
    } else if matches!(c.type_oid, oid::JSON | oid::JSONB)
        || value::element_of(c.type_oid).is_some()
    {
        format!("CASE WHEN json_valid({col}) THEN json({col}) ELSE {col} END")
    } else {
        col
    }
}

fn json_object_expr(r: &str, cols: &[&Column]) -> String {
    let parts: Vec<String> = cols
        .iter()
        .map(|c| format!("{}, {}", quote_lit(&c.name), json_expr(r, c)))
        .collect();
    format!("json_object({})", parts.join(", "))
}

/// The capture triggers of a peer table: each local insert, update and
/// delete lands in `_tributary_outbox`, one row per key (collapsed), with
/// the row image and the hub revision it was made on. Writes the worker
/// makes itself (`_tributary_ctl.applying = 1`) are not captured.
pub fn outbox_triggers(plain: &str, cols: &[&Column]) -> String {
    let keys: Vec<&Column> = cols.iter().copied().filter(|c| c.key).collect();
    if keys.is_empty() {
        return String::new();
    }
    let t = quote_lit(plain);
    let tq = ident(plain);
    let name = |k: &str| ident(&format!("_tributary_{k}_{plain}"));
    let pk = |r: &str| json_object_expr(r, &keys);
    let data = |r: &str| json_object_expr(r, cols);
    let base = |r: &str| {
        format!(
            "(SELECT version FROM _tributary_versions WHERE tbl = {t} AND pk = {})",
            pk(r)
        )
    };
    let same_key: Vec<String> = keys
        .iter()
        .map(|k| format!("OLD.{0} IS NEW.{0}", ident(&k.name)))
        .collect();
    let same_key = same_key.join(" AND ");
    let changed: Vec<String> = cols
        .iter()
        .filter(|c| !c.key)
        .map(|c| {
            format!(
                "SELECT {} AS c WHERE OLD.{1} IS NOT NEW.{1}",
                quote_lit(&c.name),
                ident(&c.name)
            )
        })
        .collect();
    let changed = if changed.is_empty() {
        "json_array()".to_string()
    } else {
        format!(
            "(SELECT json_group_array(c) FROM ({}))",
            changed.join(" UNION ALL ")
        )
    };
    let when = "(SELECT applying FROM _tributary_ctl) = 0";
    let upsert_i = |r: &str| {
        format!(
            "INSERT INTO _tributary_outbox (tbl, pk, op, data, changed, base) VALUES ({t}, {}, 'I', {}, NULL, {})
               ON CONFLICT (tbl, pk) DO UPDATE SET op = CASE WHEN _tributary_outbox.op = 'D' THEN 'U' ELSE 'I' END,
                 data = excluded.data, changed = NULL, gen = _tributary_outbox.gen + 1, at = excluded.at;",
            pk(r), data(r), base(r)
        )
    };
    let upsert_d = |r: &str| {
        format!(
            "INSERT INTO _tributary_outbox (tbl, pk, op, data, changed, base) VALUES ({t}, {}, 'D', NULL, NULL, {})
               ON CONFLICT (tbl, pk) DO UPDATE SET op = 'D', data = NULL, changed = NULL,
                 gen = _tributary_outbox.gen + 1, at = excluded.at;",
            pk(r), base(r)
        )
    };
    format!(
        "DROP TRIGGER IF EXISTS {i}; DROP TRIGGER IF EXISTS {u}; DROP TRIGGER IF EXISTS {k}; DROP TRIGGER IF EXISTS {d};
CREATE TRIGGER {i} AFTER INSERT ON {tq} WHEN {when} BEGIN {ins} END;
CREATE TRIGGER {u} AFTER UPDATE ON {tq} WHEN {when} AND {same_key} BEGIN
  INSERT INTO _tributary_outbox (tbl, pk, op, data, changed, base) VALUES ({t}, {pk_new}, 'U', {data_new}, {changed}, {base_new})
    ON CONFLICT (tbl, pk) DO UPDATE SET
      op = CASE WHEN _tributary_outbox.op = 'I' THEN 'I' ELSE 'U' END,
      data = excluded.data,
      changed = CASE WHEN _tributary_outbox.op = 'U' THEN
        (SELECT json_group_array(value) FROM (SELECT value FROM json_each(_tributary_outbox.changed)
                                              UNION SELECT value FROM json_each(excluded.changed)))
        ELSE NULL END,
      gen = _tributary_outbox.gen + 1, at = excluded.at;
END;
CREATE TRIGGER {k} AFTER UPDATE ON {tq} WHEN {when} AND NOT ({same_key}) BEGIN {del_old} {ins} END;
CREATE TRIGGER {d} AFTER DELETE ON {tq} WHEN {when} BEGIN {del_old} END;",
        i = name("i"),
        u = name("u"),
        k = name("k"),
        d = name("d"),
        ins = upsert_i("NEW"),
        del_old = upsert_d("OLD"),
        pk_new = pk("NEW"),
        data_new = data("NEW"),
        base_new = base("NEW"),
    )
}

/// A hub table as it is mapped into the file.
struct Mapped {
    table: Arc<Table>,
    /// Quoted SQLite name.
    name: String,
    /// Plain SQLite name, for `_tributary_versions`.
    plain: String,
}

pub struct SqliteSink {
    conn: Connection,
    path: PathBuf,
    slot: String,
    name: String,
    progress: Lsn,
    metrics: Arc<DestinationMetrics>,
    tables: HashMap<u32, Mapped>,
}

fn sql_err(what: &str, e: rusqlite::Error) -> Error {
    Error::Peer {
        message: format!("{what}: {e}"),
        transient: matches!(
            e.sqlite_error_code(),
            Some(
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DiskFull
            )
        ) || e.sqlite_error_code().is_none(),
    }
}

impl SqliteSink {
    /// Opens (creating it if needed) the peer file and reads its progress.
    /// A file that cannot be opened or is locked is a transient error.
    pub fn open(
        path: &Path,
        slot: &str,
        name: &str,
        metrics: Arc<DestinationMetrics>,
    ) -> Result<SqliteSink, Error> {
        let what = format!("destination {name}: {}", path.display());
        let conn = Connection::open(path).map_err(|e| sql_err(&what, e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| sql_err(&what, e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| sql_err(&what, e))?;
        // Committed means durable: the slot is confirmed on it.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| sql_err(&what, e))?;
        conn.execute_batch(SCHEMA).map_err(|e| sql_err(&what, e))?;
        let progress: Option<String> = conn
            .query_row(
                "SELECT lsn FROM _tributary_state WHERE slot = ?1",
                [slot],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| sql_err(&what, e))?;
        let progress: Lsn = match progress {
            Some(s) => s.parse().map_err(|e| Error::Peer {
                message: format!("destination {name}: _tributary_state holds {e}"),
                transient: false,
            })?,
            None => Lsn(0),
        };
        metrics.durable_lsn.store(progress.0, Relaxed);
        Ok(SqliteSink {
            conn,
            path: path.to_path_buf(),
            slot: slot.to_string(),
            name: name.to_string(),
            progress,
            metrics,
            tables: HashMap::new(),
        })
    }

    pub fn progress(&self) -> Lsn {
        self.progress
    }

    /// The hub tables the file holds a copy of, with the tracking epoch of
    /// that copy (None: the table came by the stream alone).
    pub fn copied_tables(&self) -> Result<HashMap<String, Option<i64>>, Error> {
        let mut st = self
            .conn
            .prepare("SELECT hub, epoch FROM _tributary_tables")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Forgets the file's position: the next session copies it anew.
    pub fn forget_position(&mut self) -> Result<(), Error> {
        self.conn
            .execute("DELETE FROM _tributary_state WHERE slot = ?1", [&self.slot])
            .map_err(|e| self.err(e))?;
        self.progress = Lsn(0);
        self.metrics.durable_lsn.store(0, Relaxed);
        Ok(())
    }

    /// Whether the file takes a write lock now (for a detached peer).
    pub fn check_writable(&self) -> Result<(), Error> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        sql_err(
            &format!("destination {}: {}", self.name, self.path.display()),
            e,
        )
    }

    /// The mapping of `t`, creating or widening its SQLite table.
    fn mapped(&mut self, t: &Arc<Table>) -> Result<&Mapped, Error> {
        let fresh = match self.tables.get(&t.id) {
            Some(m) => !Arc::ptr_eq(&m.table, t),
            None => true,
        };
        if fresh {
            let plain = table_name(&t.schema, &t.name);
            let name = ident(&plain);
            let cols: Vec<&Column> = t
                .relation
                .columns
                .iter()
                .filter(|c| !is_meta(&c.name))
                .collect();
            let keys: Vec<String> = cols
                .iter()
                .filter(|c| c.key)
                .map(|c| ident(&c.name))
                .collect();
            let mut ddl = format!("CREATE TABLE IF NOT EXISTS {name} (");
            for (i, c) in cols.iter().enumerate() {
                if i > 0 {
                    ddl.push_str(", ");
                }
                ddl.push_str(&format!("{} {}", ident(&c.name), sqlite_type(c.type_oid)));
            }
            if !keys.is_empty() {
                ddl.push_str(&format!(", PRIMARY KEY ({})", keys.join(", ")));
            }
            ddl.push(')');
            self.conn.execute_batch(&ddl).map_err(|e| self.err(e))?;
            // Columns the hub added since the table was created.
            let have: Vec<String> = {
                let mut st = self
                    .conn
                    .prepare(&format!(
                        "SELECT name FROM pragma_table_info({})",
                        quote_lit(&plain)
                    ))
                    .map_err(|e| self.err(e))?;
                let rows = st
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(|e| self.err(e))?;
                rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
            };
            for c in &cols {
                if !have.contains(&c.name) {
                    self.conn
                        .execute_batch(&format!(
                            "ALTER TABLE {name} ADD COLUMN {} {}",
                            ident(&c.name),
                            sqlite_type(c.type_oid)
                        ))
                        .map_err(|e| self.err(e))?;
                }
            }
            self.conn
                .execute(
                    "INSERT INTO _tributary_tables (tbl, hub) VALUES (?1, ?2)
                     ON CONFLICT (tbl) DO UPDATE SET hub = excluded.hub",
                    params![plain, format!("{}.{}", ident(&t.schema), ident(&t.name))],
                )
                .map_err(|e| self.err(e))?;
            self.conn
                .execute_batch(&outbox_triggers(&plain, &cols))
                .map_err(|e| self.err(e))?;
            self.tables.insert(
                t.id,
                Mapped {
                    table: t.clone(),
                    name,
                    plain,
                },
            );
        }
        Ok(&self.tables[&t.id])
    }

    /// Applies one change inside the open SQLite transaction. Returns
    /// whether it changed the file.
    fn apply(&mut self, c: &Change) -> Result<bool, Error> {
        let m = self.mapped(&c.table)?;
        let (name, plain) = (m.name.clone(), m.plain.clone());
        let conn = &self.conn;
        let err = |e| {
            sql_err(
                &format!("destination {}: {}", self.name, self.path.display()),
                e,
            )
        };
        match c.op {
            Op::Insert | Op::Update => {
                let cols: Vec<(&Column, &Value)> = c.data_columns().collect();
                let names: Vec<String> = cols.iter().map(|(c, _)| ident(&c.name)).collect();
                let keys: Vec<String> = c.key_columns().map(|(c, _)| ident(&c.name)).collect();
                let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
                let sets: Vec<&String> = names.iter().filter(|n| !keys.contains(n)).collect();
                let mut sql = format!(
                    "INSERT INTO {name} ({}) VALUES ({})",
                    names.join(", "),
                    marks.join(", ")
                );
                if !keys.is_empty() {
                    if sets.is_empty() {
                        sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", ")));
                    } else {
                        sql.push_str(&format!(
                            " ON CONFLICT ({}) DO UPDATE SET {} WHERE {}",
                            keys.join(", "),
                            sets.iter()
                                .map(|n| format!("{n} = excluded.{n}"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            sets.iter()
                                .map(|n| format!("{name}.{n} IS NOT excluded.{n}"))
                                .collect::<Vec<_>>()
                                .join(" OR ")
                        ));
                    }
                }
                let values: Vec<rusqlite::types::Value> = cols
                    .iter()
                    .map(|(col, v)| sqlite_value(col.type_oid, v))
                    .collect();
                let n = conn
                    .prepare_cached(&sql)
                    .and_then(|mut st| st.execute(rusqlite::params_from_iter(values)))
                    .map_err(err)?;
                if let (Some(v), Some(pk)) = (c.version, lite_pk(c)) {
                    conn.prepare_cached(
                        "INSERT INTO _tributary_versions (tbl, pk, version) VALUES (?1, ?2, ?3)
                         ON CONFLICT (tbl, pk) DO UPDATE SET version = excluded.version",
                    )
                    .and_then(|mut st| st.execute(params![plain, pk, v]))
                    .map_err(err)?;
                }
                Ok(n > 0)
            }
            Op::Delete => {
                let keys: Vec<(&Column, &Value)> = c.key_columns().collect();
                let cond: Vec<String> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, (c, _))| format!("{} IS ?{}", ident(&c.name), i + 1))
                    .collect();
                let values: Vec<rusqlite::types::Value> = keys
                    .iter()
                    .map(|(col, v)| sqlite_value(col.type_oid, v))
                    .collect();
                let n = conn
                    .prepare_cached(&format!("DELETE FROM {name} WHERE {}", cond.join(" AND ")))
                    .and_then(|mut st| st.execute(rusqlite::params_from_iter(values)))
                    .map_err(err)?;
                if let Some(pk) = lite_pk(c) {
                    conn.prepare_cached(
                        "DELETE FROM _tributary_versions WHERE tbl = ?1 AND pk = ?2",
                    )
                    .and_then(|mut st| st.execute(params![plain, pk]))
                    .map_err(err)?;
                }
                Ok(n > 0)
            }
            Op::Truncate => {
                conn.execute_batch(&format!("DELETE FROM {name}"))
                    .map_err(err)?;
                conn.execute("DELETE FROM _tributary_versions WHERE tbl = ?1", [&plain])
                    .map_err(err)?;
                Ok(true)
            }
        }
    }

    fn begin(&self) -> Result<(), Error> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE; UPDATE _tributary_ctl SET applying = 1;")
            .map_err(|e| self.err(e))
    }

    fn commit(&mut self, d: Done) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT INTO _tributary_state (slot, lsn) VALUES (?1, ?2)
                 ON CONFLICT (slot) DO UPDATE SET lsn = excluded.lsn,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                params![self.slot, d.end.to_string()],
            )
            .map_err(|e| self.err(e))?;
        self.conn
            .execute_batch("UPDATE _tributary_ctl SET applying = 0; COMMIT;")
            .map_err(|e| self.err(e))?;
        crate::failpoint::hit("sqlite.after_commit");
        self.progress = d.end;
        self.metrics.durable_lsn.store(d.end.0, Relaxed);
        self.metrics.applied_commit_time.store(d.time, Relaxed);
        self.metrics.transactions.fetch_add(d.txns, Relaxed);
        self.metrics.rows.fetch_add(d.rows as u64, Relaxed);
        Ok(())
    }

    /// Before a full copy of `table`: create it if needed, record the
    /// tracking epoch of the copy, and empty it (a resync replaces what the
    /// file held).
    fn prepare(&mut self, table: &Arc<Table>, epoch: Option<i64>) -> Result<(), Error> {
        let m = self.mapped(table)?;
        let (name, plain) = (m.name.clone(), m.plain.clone());
        self.conn
            .execute(
                "UPDATE _tributary_tables SET epoch = ?2 WHERE tbl = ?1",
                params![plain, epoch],
            )
            .and_then(|_| self.conn.execute_batch(&format!("DELETE FROM {name}")))
            .and_then(|_| {
                self.conn
                    .execute("DELETE FROM _tributary_versions WHERE tbl = ?1", [&plain])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Runs on a blocking thread until the channel closes. A channel closed
    /// in the middle of a source transaction rolls the open SQLite
    /// transaction back; so does an error.
    pub fn run(mut self, mut rx: mpsc::Receiver<ToSink>) -> Result<(), Error> {
        let mut batch = Batch::new(self.progress);
        let result = (|| -> Result<(), Error> {
            loop {
                let Some(msg) = rx.blocking_recv() else {
                    return match batch.close() {
                        AtClose::Commit(d) => self.commit(d),
                        AtClose::Rollback | AtClose::Nothing => Ok(()),
                    };
                };
                match msg {
                    ToSink::Begin {
                        commit_lsn,
                        commit_time,
                    } => batch.begin(commit_lsn, commit_time),
                    ToSink::Prepare { table, epoch } => {
                        if batch.skipping() {
                            continue;
                        }
                        if batch.opens() {
                            self.begin()?;
                        }
                        self.prepare(&table, epoch)?;
                    }
                    ToSink::Changes(changes) => {
                        if batch.skipping() {
                            continue;
                        }
                        if batch.opens() {
                            self.begin()?;
                        }
                        for c in &changes {
                            if self.apply(c)? {
                                self.metrics.applied.fetch_add(1, Relaxed);
                            }
                        }
                        batch.added(changes.len());
                    }
                    ToSink::Commit { end_lsn } => match batch.commit(end_lsn, !rx.is_empty()) {
                        AtCommit::Commit(d) => {
                            self.commit(d)?;
                            batch.committed(&d);
                        }
                        AtCommit::Moved { end, time } => {
                            self.progress = end;
                            self.metrics.durable_lsn.store(end.0, Relaxed);
                            self.metrics.applied_commit_time.store(time, Relaxed);
                        }
                        AtCommit::Keep | AtCommit::Nothing => {}
                    },
                }
            }
        })();
        if batch.is_open() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        result
    }
}

fn is_meta(name: &str) -> bool {
    matches!(
        name,
        "sync_version" | "sync_xid" | "sync_created_xid" | "sync_origin" | "sync_colmeta"
    )
}

fn quote_lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::Value as V;

    fn sv(t: u32, s: &str) -> V {
        sqlite_value(t, &Value::Text(s.as_bytes().to_vec()))
    }

    #[test]
    fn values_map_without_loss() {
        assert_eq!(sv(16, "t"), V::Integer(1));
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
        assert_eq!(sqlite_value(25, &Value::Null), V::Null);
    }

    #[test]
    fn names_and_types() {
        assert_eq!(table_name("public", "tab'le"), "tab'le");
        assert_eq!(table_name("sales", "orders"), "sales.orders");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(sqlite_type(23), "INTEGER");
        assert_eq!(sqlite_type(1700), "TEXT");
        assert_eq!(sqlite_type(17), "BLOB");
    }
}
