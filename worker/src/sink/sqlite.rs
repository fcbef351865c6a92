//! The SQLite peer destination, push side: the hub's changes into a peer
//! file ([`tributary_sqlite::PeerFile`]), per source transaction, exactly
//! once.
//!
//! ```text
//!  begin   BEGIN IMMEDIATE; applying = 1              -- the file's capture triggers ignore these writes
//!          _tributary_state(slot) still where we left it? -- else restored under us: detach, reopen
//!  write   upsert / delete / truncate per change      -- with _tributary_versions (the hub revision)
//!  commit  _tributary_state(slot) = end LSN; COMMIT   -- durable (synchronous = FULL): publish it
//! ```
//!
//! The file's layout, type mapping and outbox live in `tributary-sqlite`;
//! this module turns stream changes into its writes. Tables are created
//! from the hub's columns on first sight (and gain the columns the hub
//! added later). A change of shape (`Op::Schema`, from the hub's DDL
//! guard) is followed where it happened in the stream: renames keep the
//! values, drops drop, a new type or key rebuilds the table. Every call runs on a blocking thread; the file is
//! moved there and back, so it is never shared.
//!
//! A locked file waits the busy timeout, then fails as unavailable: the
//! error policy detaches the peer (see [`crate::pipeline`]).

use super::poison::{DeadLetter, Isolating};
use super::{Done, Sink};
use crate::error::Error;
use crate::lsn::Lsn;
use crate::metrics::DestinationMetrics;
use crate::pgoutput::{Column, Value};
use crate::transaction::{text, Change, Op, Table};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tributary_sqlite::{ColumnDef, Mapped, PeerFile, TableDef};

/// A hub table as it is mapped into the file.
struct Known {
    table: Arc<Table>,
    def: Arc<TableDef>,
    mapped: Mapped,
}

/// The file and what the sink knows of it: moved to a blocking thread for
/// each call.
struct State {
    file: PeerFile,
    tables: HashMap<u32, Known>,
    what: String,
}

pub struct SqliteSink {
    state: Option<State>,
    /// The destination's name.
    name: String,
    slot: String,
    /// The hub whose WAL positions this session stores (see `hub::identity`).
    hub: String,
    progress: Lsn,
    metrics: Arc<DestinationMetrics>,
    /// Set after the peer refused a write `max_attempts` times in a row:
    /// each change is then applied alone (see [`super::poison`]).
    isolating: Option<Isolating>,
}

/// The file's view of a hub table: its data columns (no tracking columns).
pub fn table_def(t: &Table) -> TableDef {
    TableDef {
        schema: t.schema.clone(),
        name: t.name.clone(),
        columns: t
            .relation
            .columns
            .iter()
            .filter(|c| !tributary_core::tracking::is_tracking_column(&c.name))
            .map(column_def)
            .collect(),
    }
}

fn column_def(c: &Column) -> ColumnDef {
    ColumnDef {
        name: c.name.clone(),
        type_oid: c.type_oid,
        key: c.key,
    }
}

impl State {
    fn err(&self, e: tributary_sqlite::PeerError) -> Error {
        Error::peer(&self.what, e)
    }

    /// Inside the open transaction: the file's position must be where this
    /// sink left it (`expected`; 0/0 for none). Anything else means the
    /// file was restored or replaced under the open connection (an app's
    /// restore while the worker runs): writing on would stack new changes
    /// on a file that lacks the ones in between, and hide the gap. The
    /// error detaches the peer; the session that reopens it compares its
    /// position with the hub's record ([`SqliteSink::check_recorded`]).
    fn check_unmoved(&self, slot: &str, hub: &str, expected: Lsn) -> Result<(), Error> {
        let found = self.file.position(slot).map_err(|e| self.err(e))?;
        let at: Lsn = found
            .as_ref()
            .and_then(|p| p.lsn.parse().ok())
            .unwrap_or_default();
        let same_hub = found
            .as_ref()
            .is_none_or(|p| p.hub.as_deref().is_none_or(|h| h == hub));
        if at == expected && same_hub {
            return Ok(());
        }
        Err(Error::Peer {
            message: format!(
                "{}: the file's position is {} where the worker left {expected}: it was restored or replaced while open; reopening it",
                self.what,
                found.map_or_else(|| "none".to_string(), |p| p.lsn)
            ),
            cause: crate::error::Cause::PeerUnavailable,
        })
    }

    /// The mapping of `t`, creating or widening its file table when the
    /// hub's relation is new or changed.
    fn known(&mut self, t: &Arc<Table>) -> Result<&Known, Error> {
        let fresh = match self.tables.get(&t.id) {
            Some(k) => !Arc::ptr_eq(&k.table, t),
            None => true,
        };
        if fresh {
            let def = Arc::new(table_def(t));
            let mapped = self.file.ensure_table(&def).map_err(|e| self.err(e))?;
            let known = Known {
                table: t.clone(),
                def,
                mapped,
            };
            self.tables.insert(t.id, known);
        }
        Ok(&self.tables[&t.id])
    }

    /// Applies one change inside the open transaction. Returns whether it
    /// changed the file.
    fn apply(&mut self, c: &Change) -> Result<bool, Error> {
        if c.op == Op::Schema {
            return self.follow(c);
        }
        let k = self.known(&c.table)?;
        let (def, m) = (k.def.clone(), k.mapped.clone());
        write_change(&self.file, &def, &m, c).map_err(|e| self.err(e))
    }

    /// Applies one change in a savepoint (see [`super::poison`]). A write
    /// the file refuses is undone alone and recorded in its
    /// `_tributary_errors`; it is returned as a dead letter.
    fn apply_isolated(&mut self, commit: Lsn, c: &Change) -> Result<Option<DeadLetter>, Error> {
        if c.op == Op::Schema {
            return self.follow(c).map(|_| None);
        }
        let k = self.known(&c.table)?;
        let (def, m) = (k.def.clone(), k.mapped.clone());
        match self.file.isolated(|f| write_change(f, &def, &m, c)) {
            Ok(_) => Ok(None),
            Err(e) if e.is_refusal() => {
                let d = DeadLetter::new(commit, c, e.to_string());
                let pk = c.pk_json().unwrap_or_else(|| "{}".into());
                let hub_row = c.data_json();
                self.file
                    .record_refused(&def.file_name(), &pk, d.op, &d.error, hub_row.as_deref())
                    .map_err(|e| self.err(e))?;
                Ok(Some(d))
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Makes the file follow a change of a hub table's shape, at its place
    /// in the stream: a rename keeps the values, a dropped column goes, and
    /// a change of type or key rebuilds the table (the hub sends every row
    /// again right after). Outbox edits made in the old shape are rewritten
    /// to the new one, or reported in `_tributary_errors` when they cannot
    /// be.
    fn follow(&mut self, c: &Change) -> Result<bool, Error> {
        let Some(s) = &c.schema else {
            return Ok(false);
        };
        let change = tributary_sqlite::alter::SchemaChange {
            from_schema: s.from.0.clone(),
            from_name: s.from.1.clone(),
            def: table_def(&c.table),
            renamed: s.renamed.clone(),
            dropped: s.dropped.clone(),
            rebuild: s.rekeyed || !s.retyped.is_empty(),
        };
        let followed = self.file.alter(&change).map_err(|e| self.err(e))?;
        // The next change of the table brings its new Relation: map it anew.
        self.tables.remove(&s.oid);
        match followed {
            Some((_, notes)) => {
                for note in notes {
                    tracing::warn!(peer = %self.what, table = %c.table.display, "{note}");
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Writes one row change into the file (not a change of shape).
fn write_change(
    file: &PeerFile,
    def: &TableDef,
    m: &Mapped,
    c: &Change,
) -> tributary_sqlite::Result<bool> {
    // The stream's columns come in the relation's order, as the
    // definition's do (less the tracking columns): walk both at once.
    match c.op {
        Op::Insert | Op::Update => file.upsert(m, &pick(def, c.data_columns()), c.version),
        Op::Delete => file.delete(m, &pick(def, c.key_columns())),
        Op::Truncate => file.truncate(m).map(|_| true),
        Op::Schema => Ok(false),
    }
}

/// The stream's columns with their values, as the file's columns. They
/// come in the relation's order, as the definition's do (less the
/// tracking columns): both are walked at once.
fn pick<'a>(
    def: &'a TableDef,
    cols: impl Iterator<Item = (&'a Column, &'a Value)>,
) -> Vec<(&'a ColumnDef, Option<&'a [u8]>)> {
    let mut defs = def.columns.iter();
    cols.filter_map(|(col, v)| {
        let d = defs.find(|d| d.name == col.name)?;
        Some((d, text(v)))
    })
    .collect()
}

impl SqliteSink {
    /// Opens (creating it if needed) the peer file and reads its progress.
    /// A file that cannot be opened or is locked is unavailable. A position
    /// in another hub's WAL (a restored hub, a file moved between hubs) is
    /// forgotten: the file is copied anew, its unsent edits kept. (A
    /// position behind the hub's record: [`SqliteSink::check_recorded`].)
    pub fn open(
        path: &Path,
        slot: &str,
        name: &str,
        hub: &str,
        metrics: Arc<DestinationMetrics>,
    ) -> Result<SqliteSink, Error> {
        let what = format!("destination {name}: {}", path.display());
        let file = PeerFile::open(path).map_err(|e| Error::peer(&what, e))?;
        let position = file.position(slot).map_err(|e| Error::peer(&what, e))?;
        let progress: Lsn = match position {
            Some(p) if p.hub.as_deref().is_some_and(|h| h != hub) => {
                tracing::warn!(destination = %name, file_hub = ?p.hub, hub = %hub,
                    "the file's position is in another hub's WAL (a restored hub, or a file moved between hubs): copying it anew");
                file.forget_position(slot)
                    .map_err(|e| Error::peer(&what, e))?;
                Lsn(0)
            }
            Some(p) => p.lsn.parse().map_err(|e| Error::Peer {
                message: format!("destination {name}: _tributary_state holds {e}"),
                cause: crate::error::Cause::PeerBroken,
            })?,
            None => Lsn(0),
        };
        Ok(SqliteSink {
            state: Some(State {
                file,
                tables: HashMap::new(),
                what,
            }),
            name: name.to_string(),
            slot: slot.to_string(),
            hub: hub.to_string(),
            progress,
            metrics,
            isolating: None,
        })
    }

    /// From now on, applies each change alone and sets aside those the
    /// file refuses, recording them at the hub through `opts`: the peer
    /// refused a write `attempts` times in a row.
    pub fn isolate(&mut self, opts: crate::source::ConnectOptions, attempts: u32) {
        tracing::warn!(destination = %self.name, attempts,
            "the peer refused a write again and again: applying each change alone, to set aside the ones it refuses");
        self.isolating = Some(Isolating::new(opts, attempts));
    }

    fn state(&self) -> &State {
        self.state
            .as_ref()
            .expect("the file is back from its thread")
    }

    /// The hub tables the file holds a copy of, with the tracking epoch of
    /// that copy (None: the table came by the stream alone).
    pub fn copied_tables(&self) -> Result<HashMap<String, Option<i64>>, Error> {
        let s = self.state();
        s.file.copied_tables().map_err(|e| s.err(e))
    }

    /// Forgets the file's position: the next session copies it anew.
    pub fn forget_position(&mut self) -> Result<(), Error> {
        let s = self.state();
        s.file.forget_position(&self.slot).map_err(|e| s.err(e))?;
        self.progress = Lsn(0);
        Ok(())
    }

    /// Compares the file's position with the one the hub `recorded` for it
    /// ([`crate::progress`]). Below it, the file went back (restored from
    /// an older backup of itself, or replaced by an older copy): the
    /// changes between are not in it and the slot may be confirmed past
    /// them, so its position is forgotten and it is copied anew; its
    /// unsent edits stay in the outbox and are still sent. Returns whether
    /// it went back.
    pub fn check_recorded(&mut self, recorded: Option<Lsn>) -> Result<bool, Error> {
        if !crate::progress::went_back(self.progress, recorded) {
            return Ok(false);
        }
        tracing::warn!(destination = %self.name, file_position = %self.progress,
            recorded = %recorded.unwrap_or_default(),
            "the peer file's position is below the one the hub recorded for it: it was restored from an older backup (or replaced by an older copy); copying it anew, its unsent edits kept");
        self.forget_position()?;
        Ok(true)
    }

    /// Runs `f` on the file on a blocking thread.
    async fn blocking<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut State) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let mut state = self
            .state
            .take()
            .ok_or_else(|| Error::bug("the peer file was lost by an earlier call"))?;
        let (state, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut state);
            (state, r)
        })
        .await
        .map_err(|e| Error::bug(format!("peer file thread: {e}")))?;
        self.state = Some(state);
        r
    }
}

impl Sink for SqliteSink {
    fn progress(&self) -> Lsn {
        self.progress
    }

    async fn begin(&mut self) -> Result<(), Error> {
        let (slot, hub, expected) = (self.slot.clone(), self.hub.clone(), self.progress);
        self.blocking(move |s| {
            s.file.begin().map_err(|e| s.err(e))?;
            s.check_unmoved(&slot, &hub, expected)
        })
        .await
    }

    async fn prepare(&mut self, table: Arc<Table>, epoch: Option<i64>) -> Result<(), Error> {
        self.blocking(move |s| {
            let m = s.known(&table)?.mapped.clone();
            s.file.prepare_copy(&m, epoch).map_err(|e| s.err(e))
        })
        .await
    }

    async fn write(&mut self, commit: (Lsn, i64), changes: Vec<Arc<Change>>) -> Result<(), Error> {
        if self.isolating.is_some() {
            return self.write_isolated(commit.0, changes).await;
        }
        let applied = self
            .blocking(move |s| {
                let mut n = 0;
                for c in &changes {
                    n += u64::from(s.apply(c)?);
                }
                Ok(n)
            })
            .await?;
        self.metrics.applied.fetch_add(applied, Relaxed);
        Ok(())
    }

    async fn commit(&mut self, d: &Done) -> Result<(), Error> {
        if let Some(iso) = &mut self.isolating {
            // At the hub first: a crash before the file's commit records
            // them again, once (keyed by their place in the stream).
            iso.record(&self.name).await?;
        }
        let (slot, end, hub) = (self.slot.clone(), d.end.to_string(), self.hub.clone());
        self.blocking(move |s| s.file.commit(&slot, &end, &hub).map_err(|e| s.err(e)))
            .await?;
        crate::failpoint::hit("sqlite.after_commit");
        self.progress = d.end;
        self.metrics.broken_streak.store(0, Relaxed);
        if let Some(iso) = &mut self.isolating {
            let n = iso.pending.len() as u64;
            iso.pending.clear();
            self.metrics.dead_letters.fetch_add(n, Relaxed);
        }
        Ok(())
    }

    async fn rollback(&mut self) {
        if let Some(s) = &self.state {
            s.file.rollback();
        }
        if let Some(iso) = &mut self.isolating {
            iso.pending.clear();
        }
    }
}

impl SqliteSink {
    /// [`Sink::write`] in isolating mode.
    async fn write_isolated(
        &mut self,
        commit: Lsn,
        changes: Vec<Arc<Change>>,
    ) -> Result<(), Error> {
        let (applied, dead) = self
            .blocking(move |s| {
                let (mut applied, mut dead) = (0, Vec::new());
                for c in &changes {
                    match s.apply_isolated(commit, c)? {
                        Some(d) => dead.push(d),
                        None => applied += 1,
                    }
                }
                Ok((applied, dead))
            })
            .await?;
        self.metrics.applied.fetch_add(applied, Relaxed);
        if let Some(iso) = &mut self.isolating {
            iso.pending.extend(dead);
        }
        Ok(())
    }
}

/// The file's path for a destination.
pub fn path_of(d: &crate::config::Destination) -> PathBuf {
    PathBuf::from(d.path.clone().unwrap_or_default())
}
