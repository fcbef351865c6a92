//! A peer file opened for syncing: the writes a sync makes, each inside
//! one SQLite transaction with the position it reaches.
//!
//! ```text
//!  begin()                 BEGIN IMMEDIATE; applying = 1      (the capture triggers ignore us)
//!  ensure_table(def)       CREATE TABLE / ADD COLUMN from the hub's columns, triggers, _tributary_tables
//!  upsert / delete / truncate, with _tributary_versions (the hub revision of each row)
//!  commit(slot, position)  _tributary_state(slot) = position; applying = 0; COMMIT
//! ```

use crate::encoding::{key_json_of, sqlite_type, sqlite_value};
use crate::{schema, ColumnDef, Result, TableDef};
use rusqlite::types::Value as V;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tributary_core::quote::{ident, literal};

/// How long a statement waits for the app's lock before it fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A file table as a sync writes it.
#[derive(Clone, Debug)]
pub struct Mapped {
    /// Quoted SQLite name.
    pub name: String,
    /// Plain SQLite name, as `_tributary_versions` and the outbox key it.
    pub plain: String,
}

pub struct PeerFile {
    pub(crate) conn: Connection,
}

/// A stored position: where the file is in a hub's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub lsn: String,
    /// The hub whose WAL the position is in (`system identifier/database
    /// OID`); None for a position stored before hubs were recorded.
    pub hub: Option<String>,
}

/// Opens `path` with the busy timeout every connection to a peer file sets.
pub fn connect(path: &Path, create: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

impl PeerFile {
    /// Opens (creating it if needed) the file, in WAL mode with
    /// `synchronous = FULL` (committed means durable), and brings its
    /// layout to the current version.
    pub fn open(path: &Path) -> Result<PeerFile> {
        let conn = connect(path, true)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        schema::ensure(&conn)?;
        Ok(PeerFile { conn })
    }

    /// The connection, for what a caller reads itself (the outbox).
    pub fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The position stored for `slot`, as stored.
    pub fn position(&self, slot: &str) -> Result<Option<Position>> {
        Ok(self
            .conn
            .query_row(
                "SELECT lsn, hub FROM _tributary_state WHERE slot = ?1",
                [slot],
                |r| {
                    Ok(Position {
                        lsn: r.get(0)?,
                        hub: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Forgets the position of `slot`: the next sync copies the file anew.
    pub fn forget_position(&self, slot: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM _tributary_state WHERE slot = ?1", [slot])?;
        Ok(())
    }

    /// The hub tables the file holds a copy of (quoted hub names), with the
    /// tracking epoch of that copy (None: the table came by changes alone).
    pub fn copied_tables(&self) -> Result<HashMap<String, Option<i64>>> {
        let mut st = self
            .conn
            .prepare("SELECT hub, epoch FROM _tributary_tables")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether the file takes a write lock now.
    pub fn check_writable(&self) -> Result<()> {
        Ok(self.conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?)
    }

    /// Opens the sync's transaction; the capture triggers ignore its writes.
    pub fn begin(&self) -> Result<()> {
        Ok(self
            .conn
            .execute_batch("BEGIN IMMEDIATE; UPDATE _tributary_ctl SET applying = 1;")?)
    }

    /// Stores `position` (in the WAL of `hub`) for `slot` and commits: the
    /// writes and the position become durable together.
    pub fn commit(&self, slot: &str, position: &str, hub: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO _tributary_state (slot, lsn, hub) VALUES (?1, ?2, ?3)
             ON CONFLICT (slot) DO UPDATE SET lsn = excluded.lsn, hub = excluded.hub,
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            params![slot, position, hub],
        )?;
        Ok(self
            .conn
            .execute_batch("UPDATE _tributary_ctl SET applying = 0; COMMIT;")?)
    }

    /// Commits a sync's transaction that reaches no stream position (the
    /// edge client keeps its progress in `_tributary_pulls`).
    pub fn end(&self) -> Result<()> {
        Ok(self
            .conn
            .execute_batch("UPDATE _tributary_ctl SET applying = 0; COMMIT;")?)
    }

    pub fn rollback(&self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    /// Runs `f` in a savepoint of the open transaction: when it fails, only
    /// what it wrote is undone.
    pub fn isolated<R>(&self, f: impl FnOnce(&Self) -> Result<R>) -> Result<R> {
        self.conn.execute_batch("SAVEPOINT tributary_change")?;
        match f(self) {
            Ok(r) => {
                self.conn.execute_batch("RELEASE tributary_change")?;
                Ok(r)
            }
            Err(e) => {
                self.conn
                    .execute_batch("ROLLBACK TO tributary_change; RELEASE tributary_change")?;
                Err(e)
            }
        }
    }

    /// Records, inside the open transaction, a hub change the file refused
    /// and that is set aside (a dead letter): the app sees it in
    /// `_tributary_errors`, with the hub's row.
    pub fn record_refused(
        &self,
        table: &str,
        pk: &str,
        op: &str,
        detail: &str,
        hub_row: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO _tributary_errors (tbl, pk, op, outcome, detail, hub_row)
             VALUES (?1, ?2, ?3, 'DEAD_LETTER', ?4, ?5)",
            params![table, pk, op, detail, hub_row],
        )?;
        Ok(())
    }

    /// Creates the file table of `def` (or adds the columns the hub added
    /// since), records which hub table it is, and installs its capture
    /// triggers.
    pub fn ensure_table(&self, def: &TableDef) -> Result<Mapped> {
        let plain = def.file_name();
        let name = ident(&plain);
        let cols: Vec<&ColumnDef> = def.columns.iter().collect();
        let declared: Vec<Declared> = cols.iter().map(|c| Declared::hub(c)).collect();
        let keys: Vec<&str> = cols
            .iter()
            .filter(|c| c.key)
            .map(|c| c.name.as_str())
            .collect();
        self.conn
            .execute_batch(&create_table_sql(&plain, &declared, &keys))?;
        let have: Vec<String> = {
            let mut st = self.conn.prepare(&format!(
                "SELECT name FROM pragma_table_info({})",
                literal(&plain)
            ))?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for c in &cols {
            if !have.contains(&c.name) {
                self.conn.execute_batch(&format!(
                    "ALTER TABLE {name} ADD COLUMN {} {}",
                    ident(&c.name),
                    sqlite_type(c.type_oid)
                ))?;
            }
        }
        self.conn.execute(
            "INSERT INTO _tributary_tables (tbl, hub) VALUES (?1, ?2)
             ON CONFLICT (tbl) DO UPDATE SET hub = excluded.hub",
            params![plain, def.hub_name()],
        )?;
        self.conn
            .execute_batch(&crate::outbox::triggers(&plain, &cols))?;
        Ok(Mapped { name, plain })
    }

    /// Before a full copy of a table: records the tracking epoch of the
    /// copy, and empties the table (a copy replaces what the file held).
    pub fn prepare_copy(&self, m: &Mapped, epoch: Option<i64>) -> Result<()> {
        self.conn.execute(
            "UPDATE _tributary_tables SET epoch = ?2 WHERE tbl = ?1",
            params![m.plain, epoch],
        )?;
        self.truncate(m)
    }

    /// Inserts or updates a row (`cols`: the columns it carries, with their
    /// text or None for NULL), and records its hub revision. Only columns
    /// that differ are written. Returns whether the file changed.
    pub fn upsert(
        &self,
        m: &Mapped,
        cols: &[(&ColumnDef, Option<&[u8]>)],
        version: Option<i64>,
    ) -> Result<bool> {
        let values: Vec<(&ColumnDef, V)> = cols
            .iter()
            .map(|(c, v)| (*c, sqlite_value(c.type_oid, *v)))
            .collect();
        self.upsert_values(m, &values, version)
    }

    /// [`PeerFile::upsert`] with the values as SQLite stores them.
    pub fn upsert_values(
        &self,
        m: &Mapped,
        cols: &[(&ColumnDef, V)],
        version: Option<i64>,
    ) -> Result<bool> {
        let names: Vec<String> = cols.iter().map(|(c, _)| ident(&c.name)).collect();
        let keys: Vec<&String> = cols
            .iter()
            .zip(&names)
            .filter(|((c, _), _)| c.key)
            .map(|(_, n)| n)
            .collect();
        let sql = upsert_sql(&m.name, &names, &keys);
        let n = self
            .conn
            .prepare_cached(&sql)?
            .execute(rusqlite::params_from_iter(cols.iter().map(|(_, v)| v)))?;
        let key = key_json_of(
            cols.iter()
                .filter(|(c, _)| c.key)
                .map(|(c, v)| (*c, v.clone())),
        );
        if let (Some(v), Some(pk)) = (version, key) {
            self.conn
                .prepare_cached(
                    "INSERT INTO _tributary_versions (tbl, pk, version) VALUES (?1, ?2, ?3)
                     ON CONFLICT (tbl, pk) DO UPDATE SET version = excluded.version",
                )?
                .execute(params![m.plain, pk, v])?;
        }
        Ok(n > 0)
    }

    /// Deletes the row of `keys`, and its hub revision. Returns whether
    /// the file changed.
    pub fn delete(&self, m: &Mapped, keys: &[(&ColumnDef, Option<&[u8]>)]) -> Result<bool> {
        let values: Vec<(&ColumnDef, V)> = keys
            .iter()
            .map(|(c, v)| (*c, sqlite_value(c.type_oid, *v)))
            .collect();
        self.delete_values(m, &values)
    }

    /// [`PeerFile::delete`] with the key's values as SQLite stores them.
    pub fn delete_values(&self, m: &Mapped, keys: &[(&ColumnDef, V)]) -> Result<bool> {
        let cond: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{} IS ?{}", ident(&c.name), i + 1))
            .collect();
        let n = self
            .conn
            .prepare_cached(&format!(
                "DELETE FROM {} WHERE {}",
                m.name,
                cond.join(" AND ")
            ))?
            .execute(rusqlite::params_from_iter(keys.iter().map(|(_, v)| v)))?;
        if let Some(pk) = key_json_of(keys.iter().map(|(c, v)| (*c, v.clone()))) {
            self.conn
                .prepare_cached("DELETE FROM _tributary_versions WHERE tbl = ?1 AND pk = ?2")?
                .execute(params![m.plain, pk])?;
        }
        Ok(n > 0)
    }

    /// Empties a table and forgets its revisions.
    pub fn truncate(&self, m: &Mapped) -> Result<()> {
        self.conn
            .execute_batch(&format!("DELETE FROM {}", m.name))?;
        self.conn
            .execute("DELETE FROM _tributary_versions WHERE tbl = ?1", [&m.plain])?;
        Ok(())
    }
}

/// A column as a file table's DDL declares it.
pub(crate) struct Declared {
    pub name: String,
    /// What follows the name: the declared type, and for a column the
    /// file keeps of its own, its constraints.
    pub decl: String,
}

impl Declared {
    /// A hub column: its name and the SQLite type of its hub type.
    pub fn hub(c: &ColumnDef) -> Declared {
        Declared {
            name: c.name.clone(),
            decl: sqlite_type(c.type_oid).to_string(),
        }
    }
}

/// The DDL of the file table `plain` (created if it does not exist): its
/// columns, then the PRIMARY KEY of `keys`. Both [`PeerFile::ensure_table`]
/// and a rebuild after a change of shape at the hub write it.
pub(crate) fn create_table_sql(plain: &str, cols: &[Declared], keys: &[&str]) -> String {
    let mut ddl = format!("CREATE TABLE IF NOT EXISTS {} (", ident(plain));
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            ddl.push_str(", ");
        }
        ddl.push_str(&ident(&c.name));
        if !c.decl.is_empty() {
            ddl.push(' ');
            ddl.push_str(&c.decl);
        }
    }
    if !keys.is_empty() {
        let keys: Vec<String> = keys.iter().map(|k| ident(k)).collect();
        ddl.push_str(&format!(", PRIMARY KEY ({})", keys.join(", ")));
    }
    ddl.push(')');
    ddl
}

/// `INSERT … ON CONFLICT (keys) DO UPDATE SET … WHERE a column differs`.
fn upsert_sql(table: &str, names: &[String], keys: &[&String]) -> String {
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let sets: Vec<&String> = names.iter().filter(|n| !keys.contains(n)).collect();
    let mut sql = format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        names.join(", "),
        marks.join(", ")
    );
    let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    if keys.is_empty() {
        return sql;
    }
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
                .map(|n| format!("{table}.{n} IS NOT excluded.{n}"))
                .collect::<Vec<_>>()
                .join(" OR ")
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> TableDef {
        TableDef {
            schema: "public".into(),
            name: "tab'le".into(),
            columns: vec![
                ColumnDef {
                    name: "id".into(),
                    type_oid: 23,
                    key: true,
                },
                ColumnDef {
                    name: "na\"me".into(),
                    type_oid: 25,
                    key: false,
                },
            ],
        }
    }

    #[test]
    fn names_follow_the_hub_schema() {
        assert_eq!(def().file_name(), "tab'le");
        let mut d = def();
        d.schema = "sales".into();
        d.name = "orders".into();
        assert_eq!(d.file_name(), "sales.orders");
        assert_eq!(d.hub_name(), "\"sales\".\"orders\"");
    }

    #[test]
    fn a_sync_writes_rows_and_its_position_together_and_the_outbox_ignores_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.db");
        let f = PeerFile::open(&path).unwrap();
        let d = def();
        let m = f.ensure_table(&d).unwrap();
        f.begin().unwrap();
        let row = [
            (&d.columns[0], Some(&b"1"[..])),
            (&d.columns[1], Some(&b"a"[..])),
        ];
        assert!(f.upsert(&m, &row, Some(3)).unwrap());
        assert!(!f.upsert(&m, &row, Some(3)).unwrap(), "nothing differs");
        f.commit("slot", "0/16", "7/5").unwrap();
        assert_eq!(
            f.position("slot").unwrap(),
            Some(Position {
                lsn: "0/16".into(),
                hub: Some("7/5".into())
            })
        );
        let mut app = connect(&path, false).unwrap();
        let n: i64 = app
            .query_row("SELECT count(*) FROM _tributary_outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "the sync's own writes are not captured");
        app.execute("UPDATE \"tab'le\" SET \"na\"\"me\" = 'b' WHERE id = 1", [])
            .unwrap();
        let out = crate::outbox::read(&app, 10).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].op.as_str(), out[0].base), ("U", Some(3)));
        assert_eq!(out[0].hub, "\"public\".\"tab'le\"");
        // Edited again while the first edit was at the hub, which took it
        // at revision 4: the edit stays, made on revision 4 now.
        app.execute("UPDATE \"tab'le\" SET \"na\"\"me\" = 'c' WHERE id = 1", [])
            .unwrap();
        let sent = |e: &crate::outbox::Entry, outcome: &str| crate::outbox::Sent {
            entry: e.clone(),
            report: None,
            taken: crate::outbox::taken(outcome, Some(4)),
        };
        crate::outbox::finish(&mut app, &[sent(&out[0], "VERSION_WIN")]).unwrap();
        let again = crate::outbox::read(&app, 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].base, again[0].gen), (Some(4), out[0].gen + 1));
        assert_eq!(again[0].change()["version"], 5);
        // Not taken (the hub kept its own): the base stays as it was.
        app.execute("UPDATE \"tab'le\" SET \"na\"\"me\" = 'd' WHERE id = 1", [])
            .unwrap();
        crate::outbox::finish(&mut app, &[sent(&again[0], "STALE_SKIP")]).unwrap();
        let third = crate::outbox::read(&app, 10).unwrap();
        assert_eq!(third[0].base, Some(4));
        crate::outbox::finish(&mut app, &[sent(&third[0], "VERSION_WIN")]).unwrap();
        assert!(crate::outbox::read(&app, 10).unwrap().is_empty());
        f.begin().unwrap();
        assert!(f.delete(&m, &row[..1]).unwrap());
        f.commit("slot", "0/20", "7/5").unwrap();
    }

    #[test]
    fn a_refused_write_is_undone_alone_and_recorded_as_a_dead_letter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.db");
        let f = PeerFile::open(&path).unwrap();
        let d = def();
        let m = f.ensure_table(&d).unwrap();
        // The app's own rule in its file.
        connect(&path, false)
            .unwrap()
            .execute_batch(r#"CREATE UNIQUE INDEX "app's rule" ON "tab'le" ("na""me")"#)
            .unwrap();
        let row = |id: &'static [u8], v: &'static [u8]| {
            [(&d.columns[0], Some(id)), (&d.columns[1], Some(v))]
        };
        f.begin().unwrap();
        f.isolated(|f| f.upsert(&m, &row(b"1", b"same"), Some(1)))
            .unwrap();
        let e = f
            .isolated(|f| f.upsert(&m, &row(b"2", b"same"), Some(1)))
            .unwrap_err();
        assert!(e.is_refusal(), "{e}");
        f.record_refused(
            "tab'le",
            r#"{"id": 2}"#,
            "I",
            &e.to_string(),
            Some(r#"{"id": 2}"#),
        )
        .unwrap();
        f.isolated(|f| f.upsert(&m, &row(b"3", b"other"), Some(1)))
            .unwrap();
        f.commit("slot", "0/16", "7/5").unwrap();
        let app = connect(&path, false).unwrap();
        let ids: Vec<i64> = app
            .prepare(r#"SELECT id FROM "tab'le" ORDER BY id"#)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(ids, [1, 3]);
        let (outcome, detail): (String, String) = app
            .query_row("SELECT outcome, detail FROM _tributary_errors", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(outcome, "DEAD_LETTER");
        assert!(detail.contains("UNIQUE"), "{detail}");
        let versions: i64 = app
            .query_row("SELECT count(*) FROM _tributary_versions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(versions, 2, "the refused row left no revision behind");
    }
}
