//! Pull: a SQLite peer's own changes back to the hub, through the resolver.
//!
//! ```text
//!  app writes ──triggers──> _tributary_outbox (one row per key: op, row image, changed, base revision, gen)
//!      │ every pull_interval_ms
//!      v
//!  hub transaction:  sync_apply(tbl, changes, origin => <destination name>)
//!                    rows of those keys, as they now are (FOR SHARE by sync_apply's own locks)
//!                    tributary._emit_writeback({peer, rows})      -- a logical message, in commit order
//!  COMMIT
//!      v
//!  SQLite transaction: delete the sent outbox rows whose gen did not move;
//!                      MANUAL / DEFERRED / REJECTED -> _tributary_errors (with the hub's row)
//! ```
//!
//! The peer gets the hub's resolved rows back through the stream (the
//! write-back message reaches only this peer), ordered with every other
//! change: a later hub change can never be overwritten by an older
//! write-back. The stream's echo guard keeps the peer's own change from
//! coming back as such; where the hub's result differs (a merge, a lost
//! conflict) the write-back brings the difference, and where it does not,
//! the write-back changes nothing in the file.
//!
//! A crash between the hub's commit and the outbox cleanup sends the same
//! changes again: the resolver finds the same stamps and changes nothing
//! (tested with `kill -9`).
//!
//! The file is the peer's, so what it says is untrusted: a table's name
//! (`_tributary_tables.hub`) must be exactly `"schema"."table"` and one of
//! the destination's `tables`, or its edits are refused into
//! `_tributary_errors`; values go to `sync_apply` as bound JSON.

use crate::error::{Action, Cause, Context, Error};
use crate::source::ConnectOptions;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tributary_core::quote::ident;
use tributary_core::resolver::Outcome as Label;
use tributary_sqlite::outbox::{self, Entry, Report, Sent};

/// Outbox rows sent per round.
const BATCH: usize = 500;

/// What the hub answered for one change.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub outcome: String,
    pub conflict_id: Option<i64>,
    pub detail: Option<String>,
    pub hub_row: Option<String>,
    /// The key's hub revision after the change.
    pub row_version: Option<i64>,
}

impl Outcome {
    /// What the app must see, if anything (conflicts, parked and refused
    /// changes).
    pub fn report(self) -> Option<Report> {
        Label::parse(&self.outcome)
            .is_some_and(Label::needs_attention)
            .then_some(Report {
                outcome: self.outcome,
                detail: self.detail,
                hub_row: self.hub_row,
                conflict_id: self.conflict_id,
            })
    }
}

/// An outbox failure: only this peer's pull is concerned.
fn outbox_err(what: &str, e: tributary_sqlite::PeerError) -> Error {
    Error::Peer {
        message: format!("{what}: {e}"),
        cause: Cause::PeerOutbox,
    }
}

fn read_outbox(path: &Path) -> Result<Vec<Entry>, Error> {
    let what = format!("reading the outbox of {}", path.display());
    let c = tributary_sqlite::file::connect(path, false).map_err(|e| outbox_err(&what, e))?;
    outbox::read(&c, BATCH).map_err(|e| outbox_err(&what, e))
}

/// Removes what was sent (unless edited again since) and records the
/// outcomes the app must see, in one SQLite transaction.
fn finish(path: &Path, sent: Vec<(Entry, Outcome)>) -> Result<(), Error> {
    let what = format!("clearing the outbox of {}", path.display());
    let mut c = tributary_sqlite::file::connect(path, false).map_err(|e| outbox_err(&what, e))?;
    let sent: Vec<Sent> = sent
        .into_iter()
        .map(|(e, o)| Sent {
            taken: outbox::taken(&o.outcome, o.row_version),
            entry: e,
            report: o.report(),
        })
        .collect();
    outbox::finish(&mut c, &sent).map_err(|e| outbox_err(&what, e))
}

/// Whether sync_apply refused the changes themselves (bad data, a
/// constraint), as opposed to failing for a reason a retry can fix
/// (deadlock, connection) or the operator must (privileges).
fn refused(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        matches!(
            crate::error::classify(d.code().code(), d.message()),
            Cause::RefusedValue | Cause::BadColumn
        )
    })
}

/// Every edit of `entries` refused, with the same reason.
fn refuse_all(entries: Vec<Entry>, detail: &str) -> Vec<(Entry, Outcome)> {
    entries
        .into_iter()
        .map(|e| {
            let o = Outcome {
                outcome: Label::Rejected.as_str().into(),
                conflict_id: None,
                detail: Some(detail.to_string()),
                hub_row: None,
                row_version: None,
            };
            (e, o)
        })
        .collect()
}

/// How an edit's shape differs from the hub table's: the columns it names
/// that the hub does not have, and whether its key is other columns than
/// the hub's key.
fn shape_of(e: &Entry, cols: &[(String, u32, bool)]) -> (Vec<String>, bool) {
    let names = |text: Option<&str>| -> Vec<String> {
        match text.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) {
            Some(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => vec![],
        }
    };
    let known = |n: &String| cols.iter().any(|(c, _, _)| c == n);
    let mut unknown: Vec<String> = names(e.data.as_deref())
        .into_iter()
        .chain(names(e.changed.as_deref()))
        .chain(names(Some(&e.pk)))
        .filter(|n| !known(n))
        .collect();
    unknown.sort();
    unknown.dedup();
    let mut key = names(Some(&e.pk));
    key.sort();
    let mut hub_key: Vec<String> = cols.iter().filter(|c| c.2).map(|c| c.0.clone()).collect();
    hub_key.sort();
    (unknown, key != hub_key)
}

/// A key's row as the hub holds it after `sync_apply`.
struct HubRow {
    /// Its columns as text; None when the hub holds no such row.
    values: Option<Vec<Option<String>>>,
    /// The row as JSON, for `_tributary_errors`.
    json: Option<String>,
}

/// A hub table's columns: (name, type oid, part of the key), as the
/// write-back message carries them.
type Columns = Arc<Vec<(String, u32, bool)>>;

/// The hub's half of a peer's pull, shared by every kind of peer: a
/// peer's edits (as outbox [`Entry`]s, whatever captured them) through
/// `sync_apply`, with the write-back, one hub transaction per table.
pub struct HubSide {
    client: Client,
    name: String,
    /// The destination's `tables` globs: the only tables its pull writes.
    tables: Vec<String>,
    columns: HashMap<String, Columns>,
}

impl HubSide {
    /// Connects to the hub for destination `name`'s pull.
    pub async fn connect(
        opts: &ConnectOptions,
        name: &str,
        tables: &[String],
    ) -> Result<HubSide, Error> {
        let client = crate::hub::connect(opts, &format!("tributary-worker pull {name}")).await?;
        client
            .batch_execute(&crate::hub::session_settings_sql(false))
            .await
            .context("pull: session settings")?;
        Ok(HubSide {
            client,
            name: name.to_string(),
            tables: tables.to_vec(),
            columns: HashMap::new(),
        })
    }

    /// The hub connection (the worker's role).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the hub connection is lost.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Rolls back what a failed round left open.
    pub async fn reset(&self) {
        let _ = self.client.batch_execute("ROLLBACK").await;
    }

    async fn columns(&mut self, hub: &str) -> Result<Columns, Error> {
        if let Some(c) = self.columns.get(hub) {
            return Ok(c.clone());
        }
        let c: Columns = Arc::new(
            crate::snapshot::hub_columns(&self.client, hub)
                .await?
                .into_iter()
                .map(|c| (c.name, c.type_oid, c.key))
                .collect(),
        );
        self.columns.insert(hub.to_string(), c.clone());
        Ok(c)
    }

    /// One hub transaction: apply `entries` (one table), then emit the
    /// write-back. Returns one outcome per entry, or the database error
    /// that refused the batch.
    async fn apply(
        &mut self,
        hub: &str,
        entries: &[Entry],
    ) -> Result<Result<Vec<Outcome>, tokio_postgres::Error>, Error> {
        let cols = self.columns(hub).await?;
        let changes =
            serde_json::Value::Array(entries.iter().map(Entry::change).collect()).to_string();
        self.client
            .batch_execute("BEGIN")
            .await
            .context("pull: BEGIN")?;
        let r = self
            .client
            .query(
                "SELECT outcome, conflict_id, detail, row_version FROM sync_apply($1::text::regclass, $2::text::jsonb, $3)",
                &[&hub, &changes, &self.name],
            )
            .await;
        let rows = match r {
            Ok(rows) => rows,
            Err(e) if refused(&e) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Ok(Err(e));
            }
            Err(e) => return Err(e).context("pull: sync_apply"),
        };
        let mut outcomes: Vec<Outcome> = rows
            .iter()
            .map(|r| Outcome {
                outcome: r.get(0),
                conflict_id: r.get(1),
                detail: r.get(2),
                hub_row: None,
                row_version: r.get(3),
            })
            .collect();
        if outcomes.len() != entries.len() {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(Error::bug(format!(
                "sync_apply returned {} outcomes for {} changes",
                outcomes.len(),
                entries.len()
            )));
        }
        let deferred: Vec<bool> = outcomes
            .iter()
            .map(|o| o.outcome == Label::Deferred.as_str())
            .collect();
        let hub_rows = self.write_back(hub, &cols, entries, &deferred).await?;
        for (o, r) in outcomes.iter_mut().zip(hub_rows) {
            o.hub_row = r;
        }
        crate::failpoint::hit("pull.before_hub_commit");
        self.client
            .batch_execute("COMMIT")
            .await
            .context("pull: COMMIT")?;
        crate::failpoint::hit("pull.after_hub_commit");
        Ok(Ok(outcomes))
    }

    /// Inside the open hub transaction: reads the keys of `entries` as the
    /// hub now holds them and emits the write-back message for this peer:
    /// rows to hold, and keys to drop (unless `deferred`: parked at the
    /// hub, to come later). Returns each row as JSON, for the errors table.
    async fn write_back(
        &mut self,
        hub: &str,
        cols: &[(String, u32, bool)],
        entries: &[Entry],
        deferred: &[bool],
    ) -> Result<Vec<Option<String>>, Error> {
        // Rows sync_apply touched are locked until our commit, so what we
        // read is what our commit leaves.
        let mut rows = self.fetch(hub, cols, entries).await?;
        if (0..entries.len()).any(|i| rows[i].values.is_none() && !deferred[i]) {
            // Keys the hub does not hold: make sure no one inserts them
            // before we commit the write-back that removes them at the peer
            // (SHARE mode waits for writers in flight, then holds new ones
            // off until our commit).
            self.client
                .batch_execute(&format!("LOCK TABLE {hub} IN SHARE MODE"))
                .await
                .context(format!("pull: locking {hub}"))?;
            rows = self.fetch(hub, cols, entries).await?;
        }
        let mut upserts = vec![];
        let mut deletes = vec![];
        for (i, e) in entries.iter().enumerate() {
            match &rows[i].values {
                Some(values) => upserts.push(values.clone()),
                None if !deferred[i] => {
                    // The key as the hub types it, other columns null.
                    let pk: serde_json::Value =
                        serde_json::from_str(&e.pk).unwrap_or(serde_json::Value::Null);
                    deletes.push(
                        cols.iter()
                            .map(|(n, _, key)| {
                                if *key {
                                    pk.get(n).and_then(|v| match v {
                                        serde_json::Value::Null => None,
                                        serde_json::Value::String(s) => Some(s.clone()),
                                        other => Some(other.to_string()),
                                    })
                                } else {
                                    None
                                }
                            })
                            .collect::<Vec<_>>(),
                    );
                }
                None => {}
            }
        }
        let (schema, table, oid) = self.names(hub).await?;
        let msg = crate::transaction::Writeback {
            peer: self.name.clone(),
            oid,
            schema,
            table,
            columns: cols.to_vec(),
            upserts,
            deletes,
        };
        self.client
            .execute(
                "SELECT tributary._emit_writeback($1)",
                &[&serde_json::to_string(&msg).unwrap_or_default()],
            )
            .await
            .context("pull: emitting the write-back")?;
        Ok(rows.into_iter().map(|r| r.json).collect())
    }

    /// After a change was refused: the peer gets the hub's row back (or
    /// loses the key), so that it converges; the refused change stays in
    /// `_tributary_errors`.
    async fn resync(&mut self, hub: &str, e: &Entry) -> Result<Option<String>, Error> {
        let cols = self.columns(hub).await?;
        self.client
            .batch_execute("BEGIN")
            .await
            .context("pull: BEGIN")?;
        let rows = self
            .write_back(hub, &cols, std::slice::from_ref(e), &[false])
            .await?;
        self.client
            .batch_execute("COMMIT")
            .await
            .context("pull: COMMIT")?;
        Ok(rows.into_iter().next().flatten())
    }

    async fn names(&self, hub: &str) -> Result<(String, String, u32), Error> {
        let r = self
            .client
            .query_one(
                "SELECT n.nspname::text, c.relname::text, c.oid::int8
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = $1::text::regclass",
                &[&hub],
            )
            .await
            .context(format!("pull: naming {hub}"))?;
        Ok((r.get(0), r.get(1), r.get::<_, i64>(2) as u32))
    }

    /// For each entry's key: the hub row's columns as text (None when the
    /// hub holds no such row), and the row as JSON for the errors table.
    async fn fetch(
        &self,
        hub: &str,
        cols: &[(String, u32, bool)],
        entries: &[Entry],
    ) -> Result<Vec<HubRow>, Error> {
        let keys = serde_json::Value::Array(
            entries
                .iter()
                .map(|e| serde_json::from_str(&e.pk).unwrap_or(serde_json::Value::Null))
                .collect(),
        )
        .to_string();
        let select: Vec<String> = cols
            .iter()
            .map(|(n, _, _)| format!("t.{}::text", ident(n)))
            .collect();
        let join: Vec<String> = cols
            .iter()
            .filter(|c| c.2)
            .map(|(n, _, _)| {
                format!(
                    "t.{0} = (jsonb_populate_record(NULL::{hub}, k.v)).{0}",
                    ident(n)
                )
            })
            .collect();
        let sql = format!(
            "SELECT k.ord, t.ctid IS NOT NULL, tributary.row_json(t)::text, {}
               FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS k(v, ord)
               LEFT JOIN {hub} t ON {}
              ORDER BY k.ord",
            select.join(", "),
            join.join(" AND ")
        );
        let rows = self
            .client
            .query(&sql, &[&keys])
            .await
            .context(format!("pull: reading back {hub}"))?;
        Ok(rows
            .iter()
            .map(|r| {
                if r.get::<_, bool>(1) {
                    let vals = (0..cols.len())
                        .map(|i| r.get::<_, Option<String>>(3 + i))
                        .collect();
                    HubRow {
                        values: Some(vals),
                        json: r.get(2),
                    }
                } else {
                    HubRow {
                        values: None,
                        json: None,
                    }
                }
            })
            .collect())
    }

    /// Why edits of the file's table `hub` may not reach the hub, if they
    /// may not: the name is read from the peer's own file, so it must be
    /// exactly a table name as Tributary writes it (`"schema"."table"`),
    /// and one of the tables this destination takes.
    fn out_of_scope(&self, hub: &str) -> Option<String> {
        let Some((schema, table)) = tributary_core::quote::parse_qualified(hub) else {
            return Some(format!(
                "the file maps an outbox edit to {hub:?}, which is not a table name as Tributary writes one (SQLSTATE 42602). HINT: _tributary_tables.hub is written by the worker; restore it, or copy the file anew."
            ));
        };
        let plain = format!("{schema}.{table}");
        let taken = self
            .tables
            .iter()
            .any(|g| crate::router::glob_match(g, &plain));
        (!taken).then(|| format!(
            "table {hub} is not among the tables destination {} takes (SQLSTATE 42501): its edits are not sent. HINT: add it to the destination's tables in the worker's configuration if this peer may write it.",
            self.name
        ))
    }

    /// Sorts a table's outbox edits by what the hub's shape makes of them:
    /// those to send, and those refused now. An edit made in a shape the
    /// hub has since changed (a column renamed or dropped, the key or the
    /// table's name changed; see `tributary.schema_changes`) waits, in the
    /// outbox, until the push has made the file follow: that rewrites it
    /// in the new shape. Edits of a table the hub no longer has are
    /// refused.
    async fn settle_shape(
        &mut self,
        hub: &str,
        entries: Vec<Entry>,
    ) -> Result<(Vec<Entry>, Vec<(Entry, Outcome)>), Error> {
        let oid: Option<u32> = self
            .client
            .query_one("SELECT to_regclass($1)::oid", &[&hub])
            .await
            .context(format!("pull: finding {hub}"))?
            .get(0);
        let Some(oid) = oid else {
            let renamed: bool = self
                .client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM tributary.schema_changes
                                     WHERE format('\"%s\".\"%s\"', replace(from_schema, '\"', '\"\"'),
                                                  replace(from_table, '\"', '\"\"')) = $1)",
                    &[&hub],
                )
                .await
                .context(format!("pull: looking up {hub}"))?
                .get(0);
            if renamed {
                tracing::info!(destination = %self.name, table = %hub, waiting = entries.len(),
                    "edits of a table the hub renamed wait until the file follows the rename");
                return Ok((vec![], vec![]));
            }
            tracing::warn!(destination = %self.name, table = %hub, refused = entries.len(),
                "edits of a table the hub does not have are refused");
            let detail = format!(
                "the hub has no table {hub} (SQLSTATE 42P01): it was dropped, or the file names a table the hub never had. HINT: the edit stays here; re-enter it in a table the hub has."
            );
            return Ok((vec![], refuse_all(entries, &detail)));
        };
        let cols = self.columns(hub).await?;
        let off: Vec<(usize, Vec<String>, bool)> = entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let (unknown, key_differs) = shape_of(e, &cols);
                (!unknown.is_empty() || key_differs).then_some((i, unknown, key_differs))
            })
            .collect();
        if off.is_empty() {
            return Ok((entries, vec![]));
        }
        let row = self
            .client
            .query_one(
                "SELECT coalesce(array_agg(DISTINCT n), '{}'), coalesce(bool_or(k), false)
                   FROM (SELECT unnest(dropped) AS n, rekeyed AS k FROM tributary.schema_changes WHERE relid = $1
                         UNION ALL
                         SELECT r ->> 0, rekeyed FROM tributary.schema_changes, jsonb_array_elements(renamed) r
                          WHERE relid = $1) s",
                &[&oid],
            )
            .await
            .context(format!("pull: the changes of shape of {hub}"))?;
        let (gone, rekeyed): (Vec<String>, bool) = (row.get(0), row.get(1));
        let mut wait = vec![false; entries.len()];
        for (i, unknown, key_differs) in off {
            wait[i] = (key_differs && rekeyed)
                || (!unknown.is_empty() && unknown.iter().all(|n| gone.contains(n)));
        }
        let waiting = wait.iter().filter(|w| **w).count();
        if waiting > 0 {
            tracing::info!(destination = %self.name, table = %hub, waiting,
                "edits made before a change of the table's shape wait until the file follows it");
        }
        let ready = entries
            .into_iter()
            .zip(wait)
            .filter_map(|(e, w)| (!w).then_some(e))
            .collect();
        Ok((ready, vec![]))
    }

    /// Sends `batch` (edits of any tables, oldest first) to the hub, per
    /// table in the order the tables were first written. Returns each edit
    /// with what the hub made of it: applied, a conflict, parked, or
    /// refused (an edit of a table out of scope, or one `sync_apply`
    /// refuses alone).
    pub async fn send(&mut self, batch: Vec<Entry>) -> Result<Vec<(Entry, Outcome)>, Error> {
        let mut order: Vec<String> = vec![];
        let mut groups: HashMap<String, Vec<Entry>> = HashMap::new();
        for e in &batch {
            if !groups.contains_key(&e.hub) {
                order.push(e.hub.clone());
            }
            groups.entry(e.hub.clone()).or_default().push(e.clone());
        }
        // A table's columns may have changed since the last round.
        self.columns.clear();
        let mut sent: Vec<(Entry, Outcome)> = vec![];
        for hub in order {
            let all = groups.remove(&hub).unwrap_or_default();
            if let Some(detail) = self.out_of_scope(&hub) {
                tracing::warn!(destination = %self.name, table = %hub, refused = all.len(), "{detail}");
                sent.extend(refuse_all(all, &detail));
                continue;
            }
            let (ready, refused) = self.settle_shape(&hub, all).await?;
            sent.extend(refused);
            if ready.is_empty() {
                continue;
            }
            let entries = &ready;
            match self.apply(&hub, entries).await? {
                Ok(outcomes) => sent.extend(entries.iter().cloned().zip(outcomes)),
                Err(_) => {
                    // The batch was refused whole: find the poison change(s)
                    // by applying one at a time.
                    for e in entries {
                        match self.apply(&hub, std::slice::from_ref(e)).await? {
                            Ok(mut o) => sent.push((e.clone(), o.remove(0))),
                            Err(err) => {
                                let d = err.as_db_error();
                                let detail = d.map(|d| {
                                    format!(
                                        "{} (SQLSTATE {}){}{}",
                                        d.message(),
                                        d.code().code(),
                                        d.detail()
                                            .map(|x| format!(" DETAIL: {x}"))
                                            .unwrap_or_default(),
                                        d.hint().map(|x| format!(" HINT: {x}")).unwrap_or_default()
                                    )
                                });
                                tracing::warn!(destination = %self.name, table = %hub, pk = %e.pk, error = ?detail, "a peer change was rejected");
                                let hub_row = self.resync(&hub, e).await?;
                                sent.push((
                                    e.clone(),
                                    Outcome {
                                        outcome: Label::Rejected.as_str().into(),
                                        conflict_id: None,
                                        detail,
                                        hub_row,
                                        row_version: None,
                                    },
                                ));
                            }
                        }
                    }
                }
            }
        }
        Ok(sent)
    }
}

/// The SQLite peer's pull: its outbox, through [`HubSide`].
struct Puller {
    hub: HubSide,
    path: PathBuf,
    metrics: Arc<crate::metrics::DestinationMetrics>,
}

impl Puller {
    /// One round: read, apply per table, clean up. Returns how many outbox
    /// rows were handled.
    async fn round(&mut self) -> Result<usize, Error> {
        let path = self.path.clone();
        let batch = tokio::task::spawn_blocking(move || read_outbox(&path))
            .await
            .map_err(|e| Error::bug(format!("pull task: {e}")))??;
        if batch.is_empty() {
            return Ok(0);
        }
        let sent = self.hub.send(batch).await?;
        let n = sent.len();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || finish(&path, sent))
            .await
            .map_err(|e| Error::bug(format!("pull task: {e}")))??;
        self.metrics.pulled.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
}

/// Runs the peer's pull until `stop` fires. A failure that concerns only
/// this peer (its outbox locked or unreadable) or that a retry can fix
/// (a lost hub connection) pauses this pull alone, which starts again
/// after a backoff; the peer's push and the other destinations go on. An
/// error the policy stops for (a missing privilege) is returned.
pub async fn supervise(
    opts: ConnectOptions,
    name: String,
    path: PathBuf,
    tables: Vec<String>,
    interval: Duration,
    metrics: Arc<crate::metrics::DestinationMetrics>,
    stop: CancellationToken,
) -> Result<(), Error> {
    keep_pulling(&name, &metrics, &stop, || {
        run(&opts, (&name, &path, &tables), interval, &metrics, &stop)
    })
    .await
}

/// Runs a peer's pull (`run`, which returns when `stop` fires or on an
/// error) again and again: an error that concerns only this peer, or
/// that a retry can fix, pauses it with a backoff; the peer's push and
/// the other destinations go on. An error the policy stops for is
/// returned.
pub async fn keep_pulling<F, Fut>(
    name: &str,
    metrics: &crate::metrics::DestinationMetrics,
    stop: &CancellationToken,
    mut run: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = std::time::Instant::now();
        let e = match run().await {
            Ok(()) => return Ok(()),
            Err(e) if e.action() == Action::Stop => return Err(e),
            Err(e) => e,
        };
        metrics.errors.fetch_add(1, Relaxed);
        metrics.pull_failing.store(true, Relaxed);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tracing::warn!(destination = %name, error = %e, retry_in_ms = backoff.as_millis() as u64,
            "pull failed: this peer's pull waits; its push and the other destinations go on");
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Pulls the peer's outbox until `stop` fires or an error.
async fn run(
    opts: &ConnectOptions,
    (name, path, tables): (&str, &Path, &[String]),
    interval: Duration,
    metrics: &Arc<crate::metrics::DestinationMetrics>,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let mut p = Puller {
        hub: HubSide::connect(opts, name, tables).await?,
        path: path.to_path_buf(),
        metrics: metrics.clone(),
    };
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        if !p.path.exists() {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => continue,
            }
        }
        let n = match p.round().await {
            Ok(n) => {
                p.metrics.pull_failing.store(false, Relaxed);
                n
            }
            // A deadlock with the hub's own writers, a serialization
            // failure: the round rolled back; try it again on this
            // connection. A lost connection or a peer error ends the loop
            // (and `supervise` starts it again).
            Err(e @ Error::Postgres { .. })
                if e.action() == Action::Retry && !p.hub.is_closed() =>
            {
                tracing::warn!(destination = %name, error = %e, "pull round failed; retrying it");
                p.hub.reset().await;
                p.metrics.errors.fetch_add(1, Relaxed);
                0
            }
            Err(e) => return Err(e),
        };
        if n < BATCH {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
