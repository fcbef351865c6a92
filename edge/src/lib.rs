//! The edge client: a SQLite peer file on a device, kept in step with the
//! hub over the HTTP gateway, with the peer's own token and its own slice
//! of the data. The file has the layout of a worker-attached peer (the
//! shared module `tributary_sqlite`: its tables, type mapping and capture
//! triggers), so a file can move between the two.
//!
//! ```text
//!  Edge::init(file, hub, token)   GET /v1/schema ──> the tables, created as the worker creates
//!                                 them, with their capture triggers; the hub's URL and one
//!                                 _tributary_pulls row per table (never pulled), in one transaction
//!  Edge::open(file, hub?, token)  a file init made (else: not a Tributary peer, exit code 5)
//!  push() / pull(tables) / sync() see `sync`
//!  purge(tables, force)           empties tables (their next pull is Full); unsent edits
//!                                 refused, or with force discarded into _tributary_errors
//!  status()                       per table: unsent edits, version, last sync; open errors
//!  conflicts() / resolve(id, c)   see `conflicts`
//!  run(interval, …)               see `daemon`: syncs on the interval, pushes edits as they
//!                                 come, long-polls the gateway between syncs, backs off offline
//! ```

pub mod conflicts;
pub mod daemon;
pub mod error;
pub mod hub;
pub mod sync;

pub use conflicts::{Choice, Conflict};
pub use daemon::{parse_interval, Event};
pub use error::{Error, HubError, Result};
use hub::Hub;
use rusqlite::OptionalExtension;
use std::path::{Path, PathBuf};
pub use sync::{Progress, Pulled, Pushed};
use tributary_sqlite::{schema, PeerFile};

/// The gateway a file records, if it is an edge client's file.
fn recorded_hub(path: &Path) -> Option<String> {
    if !path.exists() {
        return None;
    }
    let conn = tributary_sqlite::file::connect(path, false).ok()?;
    conn.query_row(
        "SELECT value FROM _tributary_remote WHERE name = 'hub'",
        [],
        |r| r.get(0),
    )
    .ok()
}

/// A peer file that syncs over the gateway.
pub struct Edge {
    path: PathBuf,
    file: PeerFile,
    hub: Hub,
    /// Rows asked per page of a pull.
    page_size: u32,
}

/// One table's state, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableStatus {
    /// The table in the file.
    pub table: String,
    /// The hub table it is (quoted).
    pub hub_table: String,
    /// Edits the app made that the hub does not have yet.
    pub unsent: i64,
    /// The hub version the table is complete up to (None: never pulled).
    pub version: Option<i64>,
    /// When its last pull ended (UTC, ISO 8601).
    pub synced_at: Option<String>,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub hub: String,
    pub tables: Vec<TableStatus>,
    /// Rows of `_tributary_errors`: outcomes the app has to look at.
    pub errors: i64,
}

impl Edge {
    /// Rows asked per page of a pull ([`sync::PAGE`] unless set): each page
    /// is one SQLite transaction. The gateway caps it (`max_page_size`).
    pub fn set_page_size(&mut self, rows: u32) -> &mut Edge {
        self.page_size = rows.max(1);
        self
    }

    /// Opens a file `init` made. `hub`: the gateway's URL, when it is not
    /// the one the file recorded (a moved gateway); `token`: the peer's.
    pub fn open(path: &Path, hub: Option<&str>, token: &str) -> Result<Edge> {
        let not_a_peer = |why: String| Error::NotAPeer {
            path: path.display().to_string(),
            why,
        };
        if !path.exists() {
            return Err(not_a_peer(
                "there is no such file; run tributary-edge init first".into(),
            ));
        }
        let recorded = {
            let conn = tributary_sqlite::file::connect(path, false)
                .map_err(|e| not_a_peer(e.to_string()))?;
            let v = schema::version(&conn).map_err(|e| not_a_peer(e.to_string()))?;
            if v < 3 {
                return Err(not_a_peer(
                    "it holds no edge client state; run tributary-edge init".into(),
                ));
            }
            conn.query_row(
                "SELECT value FROM _tributary_remote WHERE name = 'hub'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        };
        let Some(url) = hub.map(str::to_string).or(recorded) else {
            return Err(not_a_peer(
                "it is not set up to sync over HTTP (a worker-attached peer?); run tributary-edge init"
                    .into(),
            ));
        };
        let file = PeerFile::open(path)?;
        Ok(Edge {
            path: path.to_path_buf(),
            file,
            hub: Hub::new(&url, token)?,
            page_size: sync::PAGE,
        })
    }

    /// Makes (or brings up to date) the file at `path` as a peer of the
    /// gateway at `hub`: its tables come from the hub's schema. Run again,
    /// it adds what the hub added. A file made for another hub is refused.
    pub fn init(path: &Path, hub: &str, token: &str) -> Result<Edge> {
        let hub = Hub::new(hub, token)?;
        if let Some(other) = recorded_hub(path).filter(|r| r != hub.url()) {
            return Err(Error::Usage(format!(
                "{} syncs with {other}, not {}: pass --hub {other}, or init a new file",
                path.display(),
                hub.url()
            )));
        }
        let tables = hub.schema()?;
        let file = PeerFile::open(path).map_err(|e| match e.code() {
            Some(rusqlite::ErrorCode::NotADatabase) => Error::NotAPeer {
                path: path.display().to_string(),
                why: "it is not a SQLite database".into(),
            },
            _ => Error::File(e),
        })?;
        let mut edge = Edge {
            path: path.to_path_buf(),
            file,
            hub,
            page_size: sync::PAGE,
        };
        edge.create(&tables)?;
        Ok(edge)
    }

    fn create(&mut self, tables: &[hub::RemoteTable]) -> Result<()> {
        let url = self.hub.url().to_string();
        let path = self.path.display().to_string();
        let conn = self.file.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let recorded: Option<String> = tx
            .query_row(
                "SELECT value FROM _tributary_remote WHERE name = 'hub'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = recorded.filter(|r| *r != url) {
            return Err(Error::Usage(format!(
                "{path} syncs with {other}, not {url}: pass --hub {other}, or init a new file"
            )));
        }
        tx.execute(
            "INSERT INTO _tributary_remote (name, value) VALUES ('hub', ?1)
             ON CONFLICT (name) DO NOTHING",
            [&url],
        )?;
        tx.commit()?;
        // The tables, as a worker-attached peer's are made, in one
        // transaction with their pull rows.
        self.file.begin()?;
        let r = (|| -> Result<()> {
            for t in tables {
                let m = self.file.ensure_table(&t.def)?;
                self.file.conn().execute(
                    "INSERT INTO _tributary_pulls (tbl) VALUES (?1) ON CONFLICT (tbl) DO NOTHING",
                    [&m.plain],
                )?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.file.end()?;
                Ok(())
            }
            Err(e) => {
                self.file.rollback();
                Err(e)
            }
        }
    }

    /// Empties `tables` (file or hub names; every table when empty) so that
    /// their next pull is a full download. Refused while a table has unsent
    /// edits, unless `force`: then they are discarded, each recorded in
    /// `_tributary_errors` as `PURGED` with its row. One transaction.
    /// Returns the rows removed per table.
    pub fn purge(&mut self, tables: &[String], force: bool) -> Result<Vec<(String, i64)>> {
        let all: Vec<(String, String)> = {
            let mut st = self
                .file
                .conn()
                .prepare("SELECT tbl, hub FROM _tributary_tables ORDER BY tbl")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let chosen: Vec<&(String, String)> = if tables.is_empty() {
            all.iter().collect()
        } else {
            let mut out = Vec::new();
            for t in tables {
                match all.iter().find(|(f, h)| f == t || h == t) {
                    Some(x) => out.push(x),
                    None => return Err(Error::Usage(format!("no table {t:?} in this file"))),
                }
            }
            out
        };
        self.file.begin()?;
        let r = (|| -> Result<Vec<(String, i64)>> {
            let conn = self.file.conn();
            let mut out = Vec::new();
            for (tbl, _) in &chosen {
                let unsent: i64 = conn.query_row(
                    "SELECT count(*) FROM _tributary_outbox WHERE tbl = ?1",
                    [tbl],
                    |r| r.get(0),
                )?;
                if unsent > 0 && !force {
                    return Err(Error::Usage(format!(
                        "table {tbl} has {unsent} unsent edits: sync first, or purge --force to discard them (they are recorded in _tributary_errors)"
                    )));
                }
                conn.execute(
                    "INSERT INTO _tributary_errors (tbl, pk, op, outcome, detail, local_data)
                     SELECT tbl, pk, op, 'PURGED', 'discarded by purge --force before it reached the hub', data
                       FROM _tributary_outbox WHERE tbl = ?1 ORDER BY seq",
                    [tbl],
                )?;
                conn.execute("DELETE FROM _tributary_outbox WHERE tbl = ?1", [tbl])?;
                let n = conn.execute(
                    &format!("DELETE FROM {}", tributary_core::quote::ident(tbl)),
                    [],
                )? as i64;
                conn.execute("DELETE FROM _tributary_versions WHERE tbl = ?1", [tbl])?;
                conn.execute(
                    "UPDATE _tributary_pulls SET version = NULL, since = NULL, until = NULL,
                            next = NULL, rows_done = 0 WHERE tbl = ?1",
                    [tbl],
                )?;
                out.push((tbl.clone(), n));
            }
            Ok(out)
        })();
        match r {
            Ok(out) => {
                self.file.end()?;
                Ok(out)
            }
            Err(e) => {
                self.file.rollback();
                Err(e)
            }
        }
    }

    /// Per table: unsent edits, version and last sync; and how many
    /// outcomes wait in `_tributary_errors`.
    pub fn status(&mut self) -> Result<Status> {
        let hub = self.hub.url().to_string();
        let conn = self.file.conn();
        let mut st = conn.prepare(
            "SELECT t.tbl, t.hub,
                    (SELECT count(*) FROM _tributary_outbox o WHERE o.tbl = t.tbl),
                    p.version, p.synced_at
               FROM _tributary_tables t LEFT JOIN _tributary_pulls p ON p.tbl = t.tbl
              ORDER BY t.tbl",
        )?;
        let tables = st
            .query_map([], |r| {
                Ok(TableStatus {
                    table: r.get(0)?,
                    hub_table: r.get(1)?,
                    unsent: r.get(2)?,
                    version: r.get(3)?,
                    synced_at: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let errors = conn.query_row("SELECT count(*) FROM _tributary_errors", [], |r| r.get(0))?;
        Ok(Status {
            hub,
            tables,
            errors,
        })
    }
}
