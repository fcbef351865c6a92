//! The SQL Server peer destination, push side: the hub's changes into a
//! SQL Server database through tiberius, per destination transaction,
//! exactly once. Every statement comes from [`crate::mssql::sql`].
//!
//! ```text
//!  begin   (the peer lock: the pull waits)  BEGIN TRANSACTION; _tributary_state still where we left it?
//!  write   net change per key, per table, in memory (values checked: what SQL Server cannot hold is a dead letter)
//!  commit  per table: stage (one JSON parameter) -> guard -> MERGE under CHANGE_TRACKING_CONTEXT -> versions
//!          dead letters (hub, then the peer's _tributary_errors); _tributary_state = end LSN; COMMIT
//! ```
//!
//! The guard keeps a hub change from overwriting a row the app changed
//! since the last pull: the pull sends that edit, the hub resolves it, and
//! its result comes back as a write-back. The peer lock keeps the pull's
//! position and the write-back in order: the push never runs between the
//! hub's commit of a pull and the peer's record of it.
//!
//! Every failure is the peer's: it is detached and probed, and the other
//! destinations go on ([`crate::mssql::conn::peer_err`]).

use super::poison::{DeadLetter, Isolating};
use super::{Done, Sink};
use crate::error::{Cause, Error};
use crate::lsn::Lsn;
use crate::metrics::DestinationMetrics;
use crate::mssql::conn::{self, Peer};
use crate::mssql::{sql, value, PeerTable};
use crate::pgoutput::Value;
use crate::transaction::{text, Change, Op, Table};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Buffered rows after which the open transaction's changes are sent.
const FLUSH_ROWS: usize = 10_000;

/// One key's net change in the open transaction.
struct Row {
    op: &'static str,
    version: Option<i64>,
    values: Vec<Json>,
    /// Columns whose value did not change and was not sent (TOAST).
    keep: Vec<bool>,
}

/// A table's pending changes.
struct Group {
    /// The hub table's id (its oid).
    id: u32,
    peer: Arc<PeerTable>,
    /// A TRUNCATE (or an initial copy) empties the table first.
    empty_first: bool,
    order: Vec<String>,
    rows: HashMap<String, Row>,
}

pub struct MssqlSink {
    peer: Peer,
    name: String,
    slot: String,
    hub: String,
    schema: String,
    progress: Lsn,
    /// The pull's position, as read at `begin` (the guard's start).
    pulled: Option<i64>,
    /// The peer table of each hub relation seen, and its relation.
    known: HashMap<u32, (Arc<Table>, Arc<PeerTable>)>,
    groups: Vec<Group>,
    rows: usize,
    lock: Arc<Mutex<()>>,
    held: Option<OwnedMutexGuard<()>>,
    metrics: Arc<DestinationMetrics>,
    /// Changes with a value SQL Server cannot hold, set aside.
    dead: Isolating,
}

/// A peer failure while doing `what`.
fn pe<'a>(name: &'a str, what: &'a str) -> impl FnOnce(tiberius::error::Error) -> Error + 'a {
    move |e| conn::peer_err(name, what, e)
}

/// The change as a staged row (or why SQL Server cannot hold a value):
/// every column of the peer table, a delete's non-key columns NULL, and
/// an unchanged TOASTed value marked to keep.
fn row_of(t: &PeerTable, c: &Change) -> Result<Row, String> {
    let op = if c.op == Op::Delete { "D" } else { "U" };
    let mut values = vec![Json::Null; t.columns.len()];
    let mut keep = vec![false; t.columns.len()];
    let tuple = c.tuple.as_ref().map(|t| t.0.as_slice()).unwrap_or(&[]);
    for (col, v) in c.table.relation.columns.iter().zip(tuple) {
        let Some(i) = t.columns.iter().position(|x| x.name == col.name) else {
            continue; // a tracking column
        };
        let pc = &t.columns[i];
        if op == "D" && !pc.key {
            continue;
        }
        if matches!(v, Value::UnchangedToast) {
            keep[i] = true;
            continue;
        }
        let txt = text(v).map(String::from_utf8_lossy);
        values[i] = value::to_peer(pc.oid, &pc.sql, txt.as_deref())
            .map_err(|e| format!("column {}: {e}", pc.name))?;
    }
    Ok(Row {
        op,
        version: c.version,
        values,
        keep,
    })
}

impl Group {
    /// Adds a change: the key's net change so far, and this one after it.
    fn add(&mut self, key: String, mut row: Row) {
        match self.rows.get(&key) {
            Some(prev) if row.op != "D" && prev.op != "D" => {
                // Values not sent now are the ones sent before.
                for i in 0..row.keep.len() {
                    if row.keep[i] && !prev.keep[i] {
                        row.keep[i] = false;
                        row.values[i] = prev.values[i].clone();
                    }
                }
            }
            Some(_) => {}
            None => self.order.push(key.clone()),
        }
        self.rows.insert(key, row);
    }

    /// The staged rows, one JSON parameter: `[[op, version, keep, values…], …]`.
    fn staged(&self) -> String {
        let rows: Vec<Json> = self
            .order
            .iter()
            .map(|k| {
                let r = &self.rows[k];
                let keep = r.keep.iter().any(|k| *k).then(|| {
                    r.keep
                        .iter()
                        .map(|k| if *k { '1' } else { '0' })
                        .collect::<String>()
                });
                let mut a = vec![Json::from(r.op), Json::from(r.version), Json::from(keep)];
                a.extend(r.values.iter().cloned());
                Json::Array(a)
            })
            .collect();
        Json::Array(rows).to_string()
    }
}

impl MssqlSink {
    /// Connects, applies the setup script when the peer lacks it (and the
    /// login may), and reads the position. A position in another hub's
    /// WAL is forgotten: the peer is copied anew.
    pub async fn open(
        dest: &crate::config::Destination,
        (slot, hub): (&str, &str),
        setup: &(String, Vec<String>),
        opts: crate::source::ConnectOptions,
        lock: Arc<Mutex<()>>,
        metrics: Arc<DestinationMetrics>,
    ) -> Result<MssqlSink, Error> {
        let name = dest.name.clone();
        let schema = dest.schema.clone().unwrap_or_else(|| "dbo".into());
        let mut peer = conn::connect(&name, dest.url.as_deref().unwrap_or_default()).await?;
        let (script, tables) = setup;
        let done = peer
            .query(crate::mssql::setup_done(&schema, tables), &[])
            .await
            .map_err(|e| conn::peer_err(&name, "checking the setup", e))?
            .into_row()
            .await
            .map_err(|e| conn::peer_err(&name, "checking the setup", e))?
            .and_then(|r| r.get::<i32, _>(0))
            == Some(1);
        if !done {
            apply_setup(&mut peer, &name, script).await?;
        }
        let row = peer
            .query(sql::read_position(&schema), &[&slot])
            .await
            .map_err(|e| conn::peer_err(&name, "reading _tributary_state", e))?
            .into_row()
            .await
            .map_err(|e| conn::peer_err(&name, "reading _tributary_state", e))?;
        let (lsn, at_hub) = match &row {
            Some(r) => (
                r.get::<&str, _>(0).unwrap_or("0/0").to_string(),
                r.get::<&str, _>(1).map(str::to_string),
            ),
            None => ("0/0".to_string(), None),
        };
        let progress: Lsn = lsn.parse().map_err(|e| Error::Peer {
            message: format!("destination {name}: _tributary_state holds {e}"),
            cause: Cause::PeerBroken,
        })?;
        let attempts = dest.max_attempts();
        let mut sink = MssqlSink {
            peer,
            name,
            slot: slot.to_string(),
            hub: hub.to_string(),
            schema,
            progress,
            pulled: None,
            known: HashMap::new(),
            groups: Vec::new(),
            rows: 0,
            lock,
            held: None,
            metrics,
            dead: Isolating::new(opts, attempts),
        };
        if at_hub.as_deref().is_some_and(|h| h != hub) && progress != Lsn(0) {
            tracing::warn!(destination = %sink.name, peer_hub = ?at_hub, hub = %hub,
                "the peer's position is in another hub's WAL (a restored hub): copying it anew");
            sink.forget_position().await?;
        }
        Ok(sink)
    }

    /// The hub tables the peer holds a copy of, with the tracking epoch of
    /// that copy.
    pub async fn copied_tables(&mut self) -> Result<HashMap<String, Option<i64>>, Error> {
        let rows = self
            .peer
            .query(sql::copied_tables(&self.schema), &[])
            .await
            .map_err(pe(&self.name, "reading _tributary_tables"))?
            .into_first_result()
            .await
            .map_err(pe(&self.name, "reading _tributary_tables"))?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.get::<&str, _>(0)?.to_string(), r.get::<i64, _>(1))))
            .collect())
    }

    /// Forgets the position: the next session copies the peer anew.
    pub async fn forget_position(&mut self) -> Result<(), Error> {
        self.peer
            .execute(sql::forget_position(&self.schema), &[&self.slot.as_str()])
            .await
            .map_err(pe(&self.name, "forgetting the position"))?;
        self.progress = Lsn(0);
        Ok(())
    }

    /// Compares the peer's position with the one the hub `recorded` for
    /// it ([`crate::progress`]). Below it, the database went back (restored
    /// from an older backup): the changes between are not in it and the
    /// slot may be confirmed past them, so it is copied anew.
    pub async fn check_recorded(&mut self, recorded: Option<Lsn>) -> Result<(), Error> {
        if !crate::progress::went_back(self.progress, recorded) {
            return Ok(());
        }
        tracing::warn!(destination = %self.name, peer_position = %self.progress,
            recorded = %recorded.unwrap_or_default(),
            "the peer's position is below the one the hub recorded for it: it was restored from an older backup; copying it anew");
        self.forget_position().await
    }

    /// The peer table of `t`, created at the peer if missing and widened
    /// with the columns the hub added.
    async fn known(&mut self, t: &Arc<Table>) -> Result<Arc<PeerTable>, Error> {
        if let Some((seen, p)) = self.known.get(&t.id) {
            if Arc::ptr_eq(seen, t) {
                return Ok(p.clone());
            }
        }
        let p = crate::mssql::peer_table_of(t, &self.schema);
        // The same shape under another description (a write-back's): the
        // peer table is as it was.
        if let Some((_, known)) = self.known.get(&t.id) {
            if **known == p {
                return Ok(known.clone());
            }
        }
        let name = p.qualified();
        let have = self.peer_columns(&name).await?;
        if have.is_empty() {
            tracing::info!(destination = %self.name, table = %name, "creating the peer table");
            let s = crate::mssql::ident(&self.schema);
            for batch in [
                crate::mssql::create_peer_table(&s, &p),
                crate::mssql::track_table(&s, &p.name),
            ] {
                let stmt = batch.trim_end().trim_end_matches("GO").to_string();
                conn::batch(&mut self.peer, &self.name, "creating the peer table", stmt).await?;
            }
        } else {
            for c in p.columns.iter().filter(|c| !have.contains(&c.name)) {
                tracing::info!(destination = %self.name, table = %name, column = %c.name, "adding the column the hub added");
                conn::batch(
                    &mut self.peer,
                    &self.name,
                    "adding a column",
                    sql::add_column(&p, c),
                )
                .await?;
            }
        }
        let p = Arc::new(p);
        self.known.insert(t.id, (t.clone(), p.clone()));
        Ok(p)
    }

    /// The peer table's columns (none: there is no such table).
    async fn peer_columns(&mut self, qualified: &str) -> Result<Vec<String>, Error> {
        let rows = self
            .peer
            .query(sql::columns_of(), &[&qualified])
            .await
            .map_err(pe(&self.name, "reading the table's columns"))?
            .into_first_result()
            .await
            .map_err(pe(&self.name, "reading the table's columns"))?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<&str, _>(0).map(str::to_string))
            .collect())
    }

    /// Makes the peer follow a change of a hub table's shape, at its
    /// place in the stream, where it can: a renamed table or column is
    /// renamed (its rows and revisions kept), a dropped column is dropped.
    /// A new type or key is not followed (SQL Server cannot change a
    /// change-tracked key in place): logged, for the peer's DBA.
    async fn follow(&mut self, c: &Change) -> Result<(), Error> {
        let Some(s) = &c.schema else {
            return Ok(());
        };
        self.flush().await?;
        let name = |(schema, table): &(String, String)| {
            crate::mssql::HubTable {
                schema: schema.clone(),
                name: table.clone(),
                primary_key: vec![],
                columns: vec![],
            }
            .peer_name()
        };
        let (old, new) = (name(&s.from), name(&s.to));
        let sch = crate::mssql::ident(&self.schema);
        let q = |t: &str| format!("{sch}.{}", crate::mssql::ident(t));
        if old != new {
            let (had, has) = (
                self.peer_columns(&q(&old)).await?,
                self.peer_columns(&q(&new)).await?,
            );
            if !had.is_empty() && has.is_empty() {
                tracing::info!(destination = %self.name, from = %old, to = %new, "following the hub's rename of the table");
                conn::batch(
                    &mut self.peer,
                    &self.name,
                    "renaming a table",
                    sql::rename_table(&self.schema, &old, &new),
                )
                .await?;
                self.peer
                    .execute(
                        sql::rename_versions(&self.schema),
                        &[&old.as_str(), &new.as_str()],
                    )
                    .await
                    .map_err(pe(&self.name, "renaming a table's revisions"))?;
            }
        }
        let p = crate::mssql::peer_table_of(&c.table, &self.schema);
        let mut cols = self.peer_columns(&p.qualified()).await?;
        for (from, to) in &s.renamed {
            if p.columns.iter().any(|k| k.key && &k.name == to) {
                // Change Tracking keys rows by their primary key: it is
                // not renamed in place.
                tracing::warn!(destination = %self.name, table = %p.qualified(), from = %from, to = %to,
                    "the hub renamed a key column: a SQL Server peer does not follow that; its DBA makes the same change");
                continue;
            }
            if cols.contains(from) && !cols.contains(to) {
                conn::batch(
                    &mut self.peer,
                    &self.name,
                    "renaming a column",
                    sql::rename_column(&p, from, to),
                )
                .await?;
                cols.retain(|x| x != from);
                cols.push(to.clone());
            }
        }
        for d in s.dropped.iter().filter(|d| cols.contains(d)) {
            conn::batch(
                &mut self.peer,
                &self.name,
                "dropping a column",
                sql::drop_column(&p, d),
            )
            .await?;
        }
        if s.rekeyed || !s.retyped.is_empty() {
            tracing::warn!(destination = %self.name, table = %p.qualified(), retyped = ?s.retyped, rekeyed = s.rekeyed,
                "the hub changed a column's type or the table's key: a SQL Server peer does not follow that; its DBA makes the same change");
        }
        self.known.remove(&s.oid);
        Ok(())
    }

    /// The pending group of `t`: the table's last group when it has the
    /// same shape, else a new one after it (so that a key's changes are
    /// sent in their order).
    async fn group(&mut self, t: &Arc<Table>) -> Result<&mut Group, Error> {
        let p = self.known(t).await?;
        let at = self
            .groups
            .iter()
            .rposition(|g| g.id == t.id)
            .filter(|&i| Arc::ptr_eq(&self.groups[i].peer, &p));
        let i = match at {
            Some(i) => i,
            None => {
                self.groups.push(Group {
                    id: t.id,
                    peer: p,
                    empty_first: false,
                    order: vec![],
                    rows: HashMap::new(),
                });
                self.groups.len() - 1
            }
        };
        Ok(&mut self.groups[i])
    }

    /// Sends the pending changes, table by table, inside the open
    /// transaction.
    async fn flush(&mut self) -> Result<(), Error> {
        let groups = std::mem::take(&mut self.groups);
        self.rows = 0;
        let mut applied = 0u64;
        for g in groups {
            let t = &g.peer;
            if g.empty_first {
                self.peer
                    .execute(sql::empty(t), &[&sql::CONTEXT, &t.name.as_str()])
                    .await
                    .map_err(pe(&self.name, "emptying a table"))?;
            }
            if g.order.is_empty() {
                continue;
            }
            conn::batch(
                &mut self.peer,
                &self.name,
                "creating the staging table",
                sql::stage_create(t),
            )
            .await?;
            let staged = g.staged();
            self.peer
                .execute(sql::stage_insert(t), &[&staged.as_str()])
                .await
                .map_err(pe(&self.name, "staging rows"))?;
            // After emptying the table (a copy, a TRUNCATE) there is no
            // app edit left to protect: the copy replaces the peer's rows.
            let since = if g.empty_first { None } else { self.pulled };
            let waiting: i64 = self
                .peer
                .query(sql::guard(t), &[&sql::CONTEXT, &since])
                .await
                .map_err(pe(&self.name, "checking for unpulled edits"))?
                .into_results()
                .await
                .map_err(pe(&self.name, "checking for unpulled edits"))?
                .last()
                .and_then(|rows| rows.first())
                .and_then(|r| r.get::<i32, _>(0))
                .map(i64::from)
                .unwrap_or(0);
            if waiting > 0 {
                tracing::info!(destination = %self.name, table = %t.qualified(), waiting,
                    "hub changes of rows the app changed since the last pull wait: the pull sends the app's edits, and the hub's resolution comes back");
            }
            let merged = self
                .peer
                .execute(sql::merge(t), &[&sql::CONTEXT])
                .await
                .map_err(pe(&self.name, "merging rows"))?;
            applied += merged.total();
            self.peer
                .execute(sql::merge_versions(t), &[&t.name.as_str()])
                .await
                .map_err(pe(&self.name, "keeping _tributary_versions"))?;
        }
        self.metrics.applied.fetch_add(applied, Relaxed);
        Ok(())
    }

    /// Sets `c` aside: SQL Server cannot hold one of its values.
    fn set_aside(&mut self, commit: Lsn, c: &Change, why: String) {
        tracing::warn!(destination = %self.name, table = %c.table.display, error = %why,
            "a hub change SQL Server cannot hold is set aside as a dead letter");
        self.dead.pending.push(DeadLetter::new(commit, c, why));
    }

    /// The dead letters in the peer's `_tributary_errors`.
    async fn record_dead(&mut self) -> Result<(), Error> {
        if self.dead.pending.is_empty() {
            return Ok(());
        }
        let rows: Vec<Json> = self
            .dead
            .pending
            .iter()
            .map(|d| {
                serde_json::json!({
                    "tbl": d.tbl, "pk": d.pk.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                    "op": d.op, "outcome": "DEAD_LETTER", "detail": d.error,
                    "hub_row": d.data.as_ref().map(|p| p.to_string()),
                })
            })
            .collect();
        let rows = Json::Array(rows).to_string();
        self.peer
            .execute(sql::record_outcomes(&self.schema), &[&rows.as_str()])
            .await
            .map_err(pe(&self.name, "recording dead letters"))?;
        Ok(())
    }
}

/// Applies the setup script (`run` does, when the peer lacks it), batch
/// by batch. A refusal stops the worker
/// with a hint naming `mssql-setup`: the peer is not ready, and someone
/// who may must run the script.
async fn apply_setup(peer: &mut Peer, name: &str, script: &str) -> Result<(), Error> {
    for batch in script.split("\nGO\n") {
        let batch: String = batch
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if batch.trim().is_empty() || batch.trim() == "GO" {
            continue;
        }
        if let Err(e) = conn::batch(peer, name, "applying the setup script", batch).await {
            return Err(Error::Definite {
                message: format!("the peer is not set up: {e}"),
                hint: format!(
                    "Run `tributary-worker mssql-setup --config FILE --destination {name}` and have a user who may create tables and alter the database run its script, then start the worker again."
                ),
                cause: Cause::Config,
            });
        }
    }
    tracing::info!(destination = %name, "applied the setup script to the peer");
    Ok(())
}

impl Sink for MssqlSink {
    fn progress(&self) -> Lsn {
        self.progress
    }

    async fn begin(&mut self) -> Result<(), Error> {
        self.held = Some(self.lock.clone().lock_owned().await);
        conn::batch(&mut self.peer, &self.name, "BEGIN", sql::begin()).await?;
        let row = self
            .peer
            .query(sql::read_position(&self.schema), &[&self.slot.as_str()])
            .await
            .map_err(pe(&self.name, "reading _tributary_state"))?
            .into_row()
            .await
            .map_err(pe(&self.name, "reading _tributary_state"))?;
        let (at, pulled) = match &row {
            Some(r) => (
                r.get::<&str, _>(0).and_then(|l| l.parse::<Lsn>().ok()),
                r.get::<i64, _>(2),
            ),
            None => (None, None),
        };
        if at.unwrap_or_default() != self.progress {
            return Err(Error::Peer {
                message: format!(
                    "destination {}: the peer's position is {} where the worker left {}: it was restored or changed under the worker; reopening it",
                    self.name,
                    at.map_or_else(|| "none".into(), |l| l.to_string()),
                    self.progress
                ),
                cause: Cause::PeerUnavailable,
            });
        }
        self.pulled = pulled;
        Ok(())
    }

    async fn prepare(&mut self, table: Arc<Table>, epoch: Option<i64>) -> Result<(), Error> {
        let hub = tributary_core::quote::qualified(&table.schema, &table.name);
        self.peer
            .execute(sql::record_copy(&self.schema), &[&hub.as_str(), &epoch])
            .await
            .map_err(pe(&self.name, "recording the copy"))?;
        let g = self.group(&table).await?;
        g.empty_first = true;
        g.order.clear();
        g.rows.clear();
        Ok(())
    }

    async fn write(&mut self, commit: (Lsn, i64), changes: Vec<Arc<Change>>) -> Result<(), Error> {
        for c in &changes {
            match c.op {
                Op::Schema => self.follow(c).await?,
                Op::Truncate => {
                    let g = self.group(&c.table).await?;
                    g.empty_first = true;
                    g.order.clear();
                    g.rows.clear();
                }
                Op::Insert | Op::Update | Op::Delete => {
                    let p = self.known(&c.table).await?;
                    match row_of(&p, c) {
                        Ok(row) => {
                            let key = c.pk_json().unwrap_or_default();
                            self.group(&c.table).await?.add(key, row);
                            self.rows += 1;
                        }
                        Err(why) => self.set_aside(commit.0, c, why),
                    }
                }
            }
        }
        if self.rows >= FLUSH_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    async fn commit(&mut self, d: &Done) -> Result<(), Error> {
        self.flush().await?;
        // At the hub first: a crash before the peer's commit records them
        // again, once (keyed by their place in the stream).
        self.dead.record(&self.name).await?;
        self.record_dead().await?;
        let end = d.end.to_string();
        self.peer
            .execute(
                sql::save_position(&self.schema),
                &[&self.slot.as_str(), &end.as_str(), &self.hub.as_str()],
            )
            .await
            .map_err(pe(&self.name, "storing the position"))?;
        crate::failpoint::hit("mssql.before_commit");
        conn::batch(&mut self.peer, &self.name, "COMMIT", sql::commit()).await?;
        self.held = None;
        self.progress = d.end;
        self.metrics.broken_streak.store(0, Relaxed);
        let n = self.dead.pending.len() as u64;
        self.dead.pending.clear();
        self.metrics.dead_letters.fetch_add(n, Relaxed);
        Ok(())
    }

    async fn rollback(&mut self) {
        let _ = conn::batch(&mut self.peer, &self.name, "ROLLBACK", sql::rollback()).await;
        self.groups.clear();
        self.rows = 0;
        self.dead.pending.clear();
        self.held = None;
    }
}

/// Whether the peer of `dest` answers (for a detached destination's probe).
pub async fn reachable(dest: &crate::config::Destination) -> bool {
    match conn::connect(&dest.name, dest.url.as_deref().unwrap_or_default()).await {
        Ok(mut p) => conn::batch(&mut p, &dest.name, "probing", "SELECT 1")
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{Column, Relation, Tuple};

    fn table() -> Arc<Table> {
        let col = |name: &str, oid, key| Column {
            key,
            name: name.into(),
            type_oid: oid,
            type_modifier: -1,
        };
        Arc::new(Table::new(Relation {
            id: 1,
            namespace: "public".into(),
            name: "tab'le]".into(),
            replica_identity: b'd',
            columns: vec![
                col("id", 23, true),
                col("n\"ote", 25, false),
                col("flag", 16, false),
                col("sync_version", 20, false),
            ],
        }))
    }

    fn change(op: Op, values: Vec<Value>, version: Option<i64>) -> Change {
        Change {
            table: table(),
            op,
            ord: 0,
            tuple: Some(Tuple(values)),
            version,
            origin: None,
            only_for: None,
            schema: None,
        }
    }

    fn t(s: &str) -> Value {
        Value::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn changes_become_net_staged_rows_per_key() {
        let p = crate::mssql::peer_table_of(&table(), "dbo");
        assert_eq!(p.name, "tab'le]");
        assert_eq!(p.columns.len(), 3, "no tracking column: {p:?}");
        let mut g = Group {
            id: 1,
            peer: Arc::new(p.clone()),
            empty_first: false,
            order: vec![],
            rows: HashMap::new(),
        };
        let ins = change(
            Op::Insert,
            vec![t("1"), t("it's ]"), t("t"), t("1")],
            Some(1),
        );
        let upd = change(
            Op::Update,
            vec![t("1"), Value::UnchangedToast, t("f"), t("2")],
            Some(2),
        );
        let other = change(
            Op::Update,
            vec![t("2"), Value::UnchangedToast, Value::Null, t("5")],
            Some(5),
        );
        let del = change(
            Op::Delete,
            vec![t("3"), Value::Null, Value::Null, Value::Null],
            None,
        );
        for c in [&ins, &upd, &other, &del] {
            g.add(c.pk_json().unwrap(), row_of(&p, c).unwrap());
        }
        // Key 1: the insert's text, the update's flag and revision; key 2
        // keeps its unsent text; key 3 is a delete of its key alone.
        assert_eq!(
            g.staged(),
            r#"[["U",2,null,"1","it's ]","0"],["U",5,"010","2",null,null],["D",null,null,"3",null,null]]"#
        );
        // A delete after an update of the same key is the delete.
        let del1 = change(
            Op::Delete,
            vec![t("1"), Value::Null, Value::Null, Value::Null],
            None,
        );
        g.add(del1.pk_json().unwrap(), row_of(&p, &del1).unwrap());
        assert!(
            g.staged().starts_with(r#"[["D",null,null,"1",null,null]"#),
            "{}",
            g.staged()
        );
        assert_eq!(g.order.len(), 3);
    }

    #[test]
    fn a_value_sql_server_cannot_hold_is_refused_with_its_column() {
        let p = crate::mssql::peer_table_of(&table(), "dbo");
        let bad = change(
            Op::Insert,
            vec![t("1"), t("x"), t("maybe"), t("1")],
            Some(1),
        );
        let e = row_of(&p, &bad).err().unwrap();
        assert!(
            e.contains("column flag") && e.contains("not a boolean"),
            "{e}"
        );
    }
}
