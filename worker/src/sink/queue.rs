//! The outbound queue destination: rows in `tributary.queue_<name>` on the
//! hub itself, consumed with `sync_queue_read` / `sync_queue_ack`.
//!
//! ```text
//!  BEGIN
//!    INSERT INTO tributary.queue_<name> ... SELECT FROM unnest($1..$8)   (batches of rows)
//!      ON CONFLICT (lsn, ord) DO NOTHING                                 -- idempotent by position
//!    INSERT INTO tributary.worker_progress ... ON CONFLICT DO UPDATE     -- same transaction
//!  COMMIT                                                                -- now durable: publish it
//! ```
//!
//! Delivery contract (see [`crate::sink`]): at-least-once delivery from the
//! slot, exactly-once effect in the queue. Several small source
//! transactions may share one queue transaction (they commit together or
//! not at all); a source transaction is never split across two.

use super::ToSink;
use crate::error::{Context, Error};
use crate::lsn::Lsn;
use crate::metrics::DestinationMetrics;
use crate::transaction::Change;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement};

/// Rows sent to the server per INSERT.
const ROWS_PER_INSERT: usize = 4000;
/// A queue transaction is committed once a source transaction ends and the
/// channel is empty, or once it holds this many rows or is this old.
const MAX_OPEN_ROWS: usize = 50_000;
const MAX_OPEN_TIME: Duration = Duration::from_millis(200);

/// Connects an ordinary (non-replication) client.
pub async fn connect(
    o: &crate::source::ConnectOptions,
    application_name: &str,
) -> Result<Client, Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&o.host)
        .port(o.port)
        .user(&o.user)
        .dbname(&o.dbname)
        .application_name(application_name);
    if let Some(p) = &o.password {
        cfg.password(p);
    }
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to the hub")?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "hub connection ended");
        }
    });
    Ok(client)
}

pub struct QueueSink {
    client: Client,
    slot: String,
    name: String,
    insert: Statement,
    progress: Lsn,
    metrics: Arc<DestinationMetrics>,
}

/// The columns of the rows not yet sent, one vector each (sent as arrays).
#[derive(Default)]
struct Rows {
    lsn: Vec<String>,
    ord: Vec<i32>,
    tbl: Vec<String>,
    op: Vec<&'static str>,
    pk: Vec<Option<String>>,
    data: Vec<Option<String>>,
    origin: Vec<Option<String>>,
    time: Vec<i64>,
}

impl Rows {
    fn len(&self) -> usize {
        self.lsn.len()
    }

    fn push(&mut self, lsn: &str, time: i64, c: &Change) {
        self.lsn.push(lsn.to_string());
        self.ord.push(c.ord as i32);
        self.tbl.push(c.table.display.clone());
        self.op.push(c.op.code());
        self.pk.push(c.pk.clone());
        self.data.push(c.data.clone());
        self.origin.push(c.origin.clone());
        self.time.push(time);
    }
}

impl QueueSink {
    /// Connects, checks the queue exists (creating it when the role may),
    /// and loads the stored progress.
    pub async fn open(
        o: &crate::source::ConnectOptions,
        slot: &str,
        name: &str,
        metrics: Arc<DestinationMetrics>,
    ) -> Result<QueueSink, Error> {
        let client = connect(o, &format!("tributary-worker queue {name}")).await?;
        let exists = client
            .query_opt("SELECT 1 FROM tributary.queues WHERE name = $1", &[&name])
            .await
            .context(format!("destination {name}: looking up the queue"))?
            .is_some();
        if !exists {
            client
                .execute("SELECT sync_queue_create($1)", &[&name])
                .await
                .map_err(|e| Error::Definite {
                    message: format!(
                        "destination {name}: queue {name:?} does not exist and could not be created ({})",
                        e.as_db_error().map(|d| d.message()).unwrap_or("error")
                    ),
                    hint: format!(
                        "as an admin: SELECT sync_queue_create('{name}'); SELECT sync_worker_grant('<worker role>');"
                    ),
                })?;
        }
        let table = format!("tributary.\"queue_{}\"", name.replace('"', "\"\""));
        let insert = client
            .prepare(&format!(
                "INSERT INTO {table} (lsn, ord, tbl, op, pk, data, origin, committed_at)
                 SELECT u.l::pg_lsn, u.o, u.t, u.op, u.p::jsonb, u.d::jsonb, u.og,
                        timestamptz '2000-01-01 00:00:00+00' + u.ct * interval '1 microsecond'
                   FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::text[], $8::int8[]) AS u(l, o, t, op, p, d, og, ct)
                 ON CONFLICT (lsn, ord) DO NOTHING"
            ))
            .await
            .context(format!("destination {name}: preparing the queue insert"))?;
        let progress = load_progress(&client, slot, name).await?;
        metrics.durable_lsn.store(progress.0, Relaxed);
        Ok(QueueSink {
            client,
            slot: slot.to_string(),
            name: name.to_string(),
            insert,
            progress,
            metrics,
        })
    }

    pub fn progress(&self) -> Lsn {
        self.progress
    }

    async fn send(&self, rows: &mut Rows) -> Result<(), Error> {
        if rows.len() == 0 {
            return Ok(());
        }
        let r = std::mem::take(rows);
        self.client
            .execute(
                &self.insert,
                &[
                    &r.lsn, &r.ord, &r.tbl, &r.op, &r.pk, &r.data, &r.origin, &r.time,
                ],
            )
            .await
            .context(format!("destination {}: writing the queue", self.name))?;
        Ok(())
    }

    /// Runs until the channel closes. A channel closed in the middle of a
    /// source transaction (the pipeline failed) rolls the open queue
    /// transaction back: nothing half-applied is ever committed.
    pub async fn run(mut self, mut rx: mpsc::Receiver<ToSink>) -> Result<(), Error> {
        let mut rows = Rows::default();
        // The queue transaction: open, since when, rows in it, and the
        // source transactions it completes (end LSN, commit time, count).
        let mut open: Option<Instant> = None;
        let mut open_rows = 0usize;
        let mut done: Option<(Lsn, i64)> = None;
        let mut done_txns = 0u64;
        let mut current: Option<(String, i64)> = None;
        let mut skipping = false;
        loop {
            let Some(msg) = rx.recv().await else {
                if current.is_some() {
                    if open.is_some() {
                        let _ = self.client.batch_execute("ROLLBACK").await;
                    }
                    return Ok(());
                }
                if open.is_some() {
                    self.commit(&mut rows, done, done_txns, open_rows).await?;
                }
                return Ok(());
            };
            match msg {
                ToSink::Begin {
                    commit_lsn,
                    commit_time,
                } => {
                    // Applied before the crash: its commit lies below the
                    // stored end of the last applied transaction.
                    skipping = commit_lsn < self.progress;
                    current = Some((commit_lsn.to_string(), commit_time));
                }
                ToSink::Changes(changes) => {
                    if skipping {
                        continue;
                    }
                    let (lsn, time) = current.as_ref().ok_or_else(|| Error::Definite {
                        message: "changes outside a transaction".into(),
                        hint: "report this as a bug".into(),
                    })?;
                    if open.is_none() {
                        self.client
                            .batch_execute("BEGIN")
                            .await
                            .context(format!("destination {}: BEGIN", self.name))?;
                        open = Some(Instant::now());
                    }
                    for c in &changes {
                        rows.push(lsn, *time, c);
                    }
                    open_rows += changes.len();
                    if rows.len() >= ROWS_PER_INSERT {
                        self.send(&mut rows).await?;
                    }
                }
                ToSink::Commit { end_lsn } => {
                    let time = current.take().map(|c| c.1).unwrap_or_default();
                    if !skipping {
                        done = Some((end_lsn, time));
                        done_txns += 1;
                    }
                    skipping = false;
                    match open {
                        Some(since)
                            if rx.is_empty()
                                || open_rows >= MAX_OPEN_ROWS
                                || since.elapsed() >= MAX_OPEN_TIME =>
                        {
                            self.commit(&mut rows, done, done_txns, open_rows).await?;
                            open = None;
                            open_rows = 0;
                            done = None;
                            done_txns = 0;
                        }
                        Some(_) => {}
                        None => {
                            // Nothing of it was for this queue: nothing to
                            // make durable, the position simply moves on.
                            if let Some((end, t)) = done.take() {
                                self.progress = self.progress.max(end);
                                self.metrics.durable_lsn.store(self.progress.0, Relaxed);
                                self.metrics.applied_commit_time.store(t, Relaxed);
                                done_txns = 0;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn commit(
        &mut self,
        rows: &mut Rows,
        done: Option<(Lsn, i64)>,
        txns: u64,
        n: usize,
    ) -> Result<(), Error> {
        self.send(rows).await?;
        let Some((end, time)) = done else {
            return Ok(());
        };
        self.client
            .execute(
                "INSERT INTO tributary.worker_progress AS p (slot, destination, lsn)
                 VALUES ($1, $2, $3::text::pg_lsn)
                 ON CONFLICT (slot, destination) DO UPDATE SET lsn = excluded.lsn, updated_at = now()",
                &[&self.slot, &self.name, &end.to_string()],
            )
            .await
            .context(format!("destination {}: storing progress", self.name))?;
        crate::failpoint::hit("queue.before_commit");
        self.client
            .batch_execute("COMMIT")
            .await
            .context(format!("destination {}: COMMIT", self.name))?;
        crate::failpoint::hit("queue.after_commit");
        self.progress = end;
        self.metrics.durable_lsn.store(end.0, Relaxed);
        self.metrics.applied_commit_time.store(time, Relaxed);
        self.metrics.rows.fetch_add(n as u64, Relaxed);
        self.metrics.transactions.fetch_add(txns, Relaxed);
        Ok(())
    }
}

/// The end LSN a destination stored for `slot`, or 0/0.
pub async fn load_progress(client: &Client, slot: &str, destination: &str) -> Result<Lsn, Error> {
    let row = client
        .query_opt(
            "SELECT lsn::text FROM tributary.worker_progress WHERE slot = $1 AND destination = $2",
            &[&slot, &destination],
        )
        .await
        .context(format!("destination {destination}: reading its progress"))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|s| s.parse().ok())
        .unwrap_or_default())
}
