//! The bookkeeping tables every peer file holds, and their versions.
//!
//! ```text
//!  _tributary_schema    (version)                   the layout version of the file
//!  _tributary_state     (slot, lsn, hub)            the stream position the file holds, per slot,
//!                                                   and the hub (cluster and database) it belongs to
//!  _tributary_versions  (tbl, pk, version)          the hub revision of each row the file holds
//!  _tributary_ctl       (applying)                  1 while a sync writes: the triggers ignore it
//!  _tributary_tables    (tbl, hub, epoch)           file table -> hub table, and its copy's epoch
//!  _tributary_outbox    (tbl, pk, op, data, ...)    the app's edits, one row per key
//!  _tributary_errors    (tbl, pk, outcome, ...)     what the app must see: conflicts, refusals
//!  _tributary_remote    (name, value)               over HTTP (the edge client): the gateway's URL
//!  _tributary_pulls     (tbl, version, next, ...)   over HTTP: how far each table is pulled
//! ```
//!
//! [`MIGRATIONS`] lists each layout version's DDL. [`ensure`] brings a file
//! to [`VERSION`] in one transaction, from whatever version it holds. A
//! file laid out before versions were recorded holds the tables of
//! version 1 and no `_tributary_schema`: it is taken as version 1. A file
//! of a newer version is refused, never rewritten.

use crate::{PeerError, Result};
use rusqlite::{Connection, OptionalExtension};

/// The layout version this build writes.
pub const VERSION: i64 = 3;

/// Version 1: the layout of the first release.
const V1: &str = "
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

/// Version 2: a position names the hub it belongs to (`system identifier /
/// database OID`), so that a file that meets another hub (a restored one,
/// or a file moved between hubs) is copied anew instead of trusting a
/// position in someone else's WAL. Positions stored before know no hub.
const V2: &str = "
ALTER TABLE _tributary_state ADD COLUMN hub TEXT;
";

/// Version 3: what a file that syncs over HTTP (the edge client) keeps: the
/// gateway it syncs with (`_tributary_remote`, name/value), and per table
/// how far it has pulled (`_tributary_pulls`): `version`, the hub version
/// the table is complete up to (NULL: never pulled); a pull under way's
/// window (`since`, `until`) and continuation (`next`), so that a pull cut
/// short resumes from its last committed page; rows applied in it
/// (`rows_done`); and when the last pull ended. Every file has them, so a
/// file can move between the worker and the edge client.
const V3: &str = "
CREATE TABLE IF NOT EXISTS _tributary_remote (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _tributary_pulls (
    tbl TEXT PRIMARY KEY,
    version INTEGER,
    since INTEGER,
    until INTEGER,
    next TEXT,
    rows_done INTEGER NOT NULL DEFAULT 0,
    synced_at TEXT
);
";

/// Each version's DDL, in order: `MIGRATIONS[i]` brings a file from
/// version `i` to `i + 1`. A released entry is never edited; a change of
/// layout is a new entry.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The layout version the file holds: 0 for a file without Tributary's
/// tables.
pub fn version(conn: &Connection) -> Result<i64> {
    let has = |t: &str| -> Result<bool> {
        Ok(conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [t],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    };
    if has("_tributary_schema")? {
        let v: Option<i64> = conn
            .query_row("SELECT max(version) FROM _tributary_schema", [], |r| {
                r.get(0)
            })
            .optional()?
            .flatten();
        return Ok(v.unwrap_or(0));
    }
    // Laid out before versions were recorded.
    Ok(if has("_tributary_state")? { 1 } else { 0 })
}

/// Brings the file's layout to [`VERSION`], in one transaction (under the
/// write lock, so two processes opening the file at once migrate it once).
pub fn ensure(conn: &Connection) -> Result<()> {
    if current(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = migrate(conn);
    let end = if r.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let done = conn.execute_batch(end);
    r?;
    Ok(done?)
}

/// Whether the file is at [`VERSION`] with its version recorded; a file of
/// a newer layout is refused.
fn current(conn: &Connection) -> Result<bool> {
    let found = version(conn)?;
    if found > VERSION {
        return Err(PeerError::NewerLayout {
            found,
            known: VERSION,
        });
    }
    let recorded = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE name = '_tributary_schema'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    Ok(found == VERSION && recorded)
}

/// Inside the write transaction: the steps from the version the file holds.
fn migrate(conn: &Connection) -> Result<()> {
    if current(conn)? {
        return Ok(());
    }
    let found = version(conn)?;
    for step in &MIGRATIONS[found as usize..] {
        conn.execute_batch(step)?;
    }
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS _tributary_schema (version INTEGER PRIMARY KEY,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
         INSERT OR IGNORE INTO _tributary_schema (version) VALUES ({VERSION});"
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_gets_the_current_layout_and_its_version() {
        let c = Connection::open_in_memory().unwrap();
        assert_eq!(version(&c).unwrap(), 0);
        ensure(&c).unwrap();
        assert_eq!(version(&c).unwrap(), VERSION);
        ensure(&c).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM _tributary_ctl", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "ensure is idempotent");
    }

    #[test]
    fn a_file_laid_out_before_versions_is_version_one_and_keeps_its_rows() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(V1).unwrap();
        c.execute(
            "INSERT INTO _tributary_state (slot, lsn) VALUES ('s', '0/10')",
            [],
        )
        .unwrap();
        assert_eq!(version(&c).unwrap(), 1);
        ensure(&c).unwrap();
        let lsn: String = c
            .query_row("SELECT lsn FROM _tributary_state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(lsn, "0/10");
        assert_eq!(version(&c).unwrap(), VERSION);
        let hub: Option<String> = c
            .query_row("SELECT hub FROM _tributary_state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(hub, None, "a position stored before knows no hub");
    }

    #[test]
    fn a_version_one_file_is_migrated_step_by_step() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(V1).unwrap();
        c.execute_batch(
            "CREATE TABLE _tributary_schema (version INTEGER PRIMARY KEY, applied_at TEXT);
             INSERT INTO _tributary_schema (version) VALUES (1);",
        )
        .unwrap();
        assert_eq!(version(&c).unwrap(), 1);
        ensure(&c).unwrap();
        assert_eq!(version(&c).unwrap(), VERSION);
        c.execute(
            "INSERT INTO _tributary_state (slot, lsn, hub) VALUES ('s', '0/1', 'h')",
            [],
        )
        .unwrap();
    }

    #[test]
    fn a_file_of_a_newer_layout_is_refused() {
        let c = Connection::open_in_memory().unwrap();
        ensure(&c).unwrap();
        c.execute(
            "INSERT INTO _tributary_schema (version) VALUES (?1)",
            [VERSION + 1],
        )
        .unwrap();
        assert!(matches!(
            ensure(&c),
            Err(PeerError::NewerLayout { found, .. }) if found == VERSION + 1
        ));
    }
}
