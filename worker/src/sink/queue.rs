//! The outbound queue destination: rows in `tributary.queue_<name>` on the
//! hub itself, consumed with `sync_queue_read` / `sync_queue_ack`.
//!
//! ```text
//!  BEGIN
//!    COPY tributary.queue_<name> (...) FROM STDIN (FORMAT binary)        (chunks of rows)
//!    INSERT INTO tributary.worker_progress ... ON CONFLICT DO UPDATE     -- same transaction
//!  COMMIT                                                                -- now durable: publish it
//! ```
//!
//! Delivery contract (see [`crate::sink`]): at-least-once delivery from the
//! slot, exactly-once effect in the queue. Several small source
//! transactions may share one queue transaction (they commit together or
//! not at all); a source transaction is never split across two.
//!
//! Exactly once rests on the progress row: a transaction at or below it is
//! skipped before anything is written. The queue's `UNIQUE (hub, lsn,
//! ord)` is the second line: should a change ever arrive twice anyway (two
//! workers misconfigured onto one queue), COPY fails on it, the session
//! restarts, and from then on this destination writes with `INSERT … ON
//! CONFLICT (hub, lsn, ord) DO NOTHING` (slower: speculative insertion), so
//! the duplicate is dropped and the stream goes on. `hub` names the cluster
//! whose WAL the LSN is in: rows restored from another cluster's dump never
//! collide with new ones.

use super::{Done, Sink};
use crate::error::{Cause, Context, Error};
use crate::hub::connect;
use crate::lsn::Lsn;
use crate::metrics::DestinationMetrics;
use crate::transaction::{Change, Op};
use bytes::{BufMut, BytesMut};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};
use tributary_core::quote;

/// Rows sent to the server per COPY (or INSERT).
const ROWS_PER_CHUNK: usize = 8192;

/// Binary COPY values the driver has no type for: `pg_lsn` (a u64),
/// `jsonb` from JSON text (version 1, then the text), and `timestamptz`
/// from microseconds since 2000-01-01.
#[derive(Debug)]
struct PgLsn(u64);
#[derive(Debug)]
struct JsonbText<'a>(&'a str);
#[derive(Debug)]
struct PgTime(i64);

impl ToSql for PgLsn {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_u64(self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::PG_LSN
    }
    to_sql_checked!();
}

impl ToSql for JsonbText<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
    to_sql_checked!();
}

impl ToSql for PgTime {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_i64(self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
    to_sql_checked!();
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// A change waiting to be written, with its transaction's commit LSN and time.
struct Pending {
    change: Arc<Change>,
    lsn: Lsn,
    time: i64,
}

pub struct QueueSink {
    client: Client,
    slot: String,
    name: String,
    table: String,
    insert: Statement,
    progress: Lsn,
    /// The hub whose WAL positions the rows carry (see `hub::identity`).
    hub: String,
    metrics: Arc<DestinationMetrics>,
    /// Rows written but not yet sent to the server.
    rows: Vec<Pending>,
}

impl QueueSink {
    /// Connects, checks the queue exists (creating it when the role may),
    /// and loads the stored progress.
    pub async fn open(
        o: &crate::source::ConnectOptions,
        slot: &str,
        name: &str,
        hub: &str,
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
                        "as an admin: SELECT sync_queue_create({}); SELECT sync_worker_grant('<worker role>');",
                        quote::literal(name)
                    ),
                    cause: Cause::MissingObject,
                })?;
        }
        let table = quote::qualified("tributary", &format!("queue_{name}"));
        let insert = client
            .prepare(&format!(
                "INSERT INTO {table} (hub, lsn, ord, tbl, op, pk, data, origin, committed_at)
                 SELECT $9, u.l::pg_lsn, u.o, u.t, u.op, u.p::jsonb, u.d::jsonb, u.og,
                        timestamptz '2000-01-01 00:00:00+00' + u.ct * interval '1 microsecond'
                   FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::text[], $8::int8[]) AS u(l, o, t, op, p, d, og, ct)
                 ON CONFLICT (hub, lsn, ord) DO NOTHING"
            ))
            .await
            .context(format!("destination {name}: preparing the queue insert"))?;
        let progress = load_progress(&client, slot, name).await?;
        Ok(QueueSink {
            client,
            slot: slot.to_string(),
            name: name.to_string(),
            table,
            insert,
            progress,
            hub: hub.to_string(),
            metrics,
            rows: Vec::new(),
        })
    }

    /// Writes the pending rows: binary COPY, or the guarded INSERT once a
    /// duplicate was met (see the module docs).
    async fn send(&self, rows: &mut Vec<Pending>) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let ctx = || format!("destination {}: writing the queue", self.name);
        if self.metrics.guarded.load(Relaxed) {
            let (mut l, mut o, mut t, mut op, mut pk, mut d, mut og, mut ct) = (
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
            );
            for p in rows.iter() {
                let c = &p.change;
                l.push(p.lsn.to_string());
                o.push(c.ord as i32);
                t.push(c.table.display.as_str());
                op.push(c.op.code());
                pk.push(c.pk_json());
                d.push(c.data_json());
                og.push(c.origin.as_deref());
                ct.push(p.time);
            }
            self.client
                .execute(
                    &self.insert,
                    &[&l, &o, &t, &op, &pk, &d, &og, &ct, &self.hub],
                )
                .await
                .context(ctx())?;
        } else {
            let sink = self
                .client
                .copy_in(&format!(
                    "COPY {} (hub, lsn, ord, tbl, op, pk, data, origin, committed_at) FROM STDIN (FORMAT binary)",
                    self.table
                ))
                .await
                .context(ctx())?;
            let types = [
                Type::TEXT,
                Type::PG_LSN,
                Type::INT4,
                Type::TEXT,
                Type::TEXT,
                Type::JSONB,
                Type::JSONB,
                Type::TEXT,
                Type::TIMESTAMPTZ,
            ];
            let w = BinaryCopyInWriter::new(sink, &types);
            tokio::pin!(w);
            for p in rows.iter() {
                let c = &p.change;
                let ord = c.ord as i32;
                let (lsn, time) = (PgLsn(p.lsn.0), PgTime(p.time));
                let (pk, data) = (c.pk_json(), c.data_json());
                let pk = pk.as_deref().map(JsonbText);
                let data = data.as_deref().map(JsonbText);
                let r = w
                    .as_mut()
                    .write(&[
                        &self.hub,
                        &lsn,
                        &ord,
                        &c.table.display,
                        &c.op.code(),
                        &pk,
                        &data,
                        &c.origin,
                        &time,
                    ])
                    .await;
                self.check_duplicate(r).context(ctx())?;
            }
            let r = w.finish().await;
            self.check_duplicate(r).context(ctx())?;
        }
        rows.clear();
        Ok(())
    }

    /// A unique violation on (hub, lsn, ord) means a change arrived twice: write
    /// with ON CONFLICT DO NOTHING from the next session on.
    fn check_duplicate<T>(
        &self,
        r: Result<T, tokio_postgres::Error>,
    ) -> Result<T, tokio_postgres::Error> {
        if let Err(e) = &r {
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                tracing::warn!(destination = %self.name, "a change reached the queue twice; dropping duplicates from now on");
                self.metrics.guarded.store(true, Relaxed);
            }
        }
        r
    }
}

impl Sink for QueueSink {
    fn progress(&self) -> Lsn {
        self.progress
    }

    async fn begin(&mut self) -> Result<(), Error> {
        self.client
            .batch_execute("BEGIN")
            .await
            .context(format!("destination {}: BEGIN", self.name))
    }

    async fn write(&mut self, commit: (Lsn, i64), changes: Vec<Arc<Change>>) -> Result<(), Error> {
        let (lsn, time) = commit;
        // A change of shape is no row: queue rows carry the new shape
        // from the first change made in it.
        self.rows.extend(
            changes
                .into_iter()
                .filter(|c| c.op != Op::Schema)
                .map(|change| Pending { change, lsn, time }),
        );
        if self.rows.len() >= ROWS_PER_CHUNK {
            let mut rows = std::mem::take(&mut self.rows);
            self.send(&mut rows).await?;
        }
        Ok(())
    }

    async fn commit(&mut self, d: &Done) -> Result<(), Error> {
        let mut rows = std::mem::take(&mut self.rows);
        self.send(&mut rows).await?;
        self.client
            .execute(
                "INSERT INTO tributary.worker_progress AS p (slot, destination, lsn)
                 VALUES ($1, $2, $3::text::pg_lsn)
                 ON CONFLICT (slot, destination) DO UPDATE SET lsn = excluded.lsn, updated_at = now()",
                &[&self.slot, &self.name, &d.end.to_string()],
            )
            .await
            .context(format!("destination {}: storing progress", self.name))?;
        crate::failpoint::hit("queue.before_commit");
        self.client
            .batch_execute("COMMIT")
            .await
            .context(format!("destination {}: COMMIT", self.name))?;
        crate::failpoint::hit("queue.after_commit");
        self.progress = d.end;
        Ok(())
    }

    async fn rollback(&mut self) {
        self.rows.clear();
        let _ = self.client.batch_execute("ROLLBACK").await;
    }
}

/// The end LSN a destination stored for `slot`, or 0/0.
pub async fn load_progress(client: &Client, slot: &str, destination: &str) -> Result<Lsn, Error> {
    Ok(crate::progress::load(client, slot, destination)
        .await?
        .unwrap_or_default())
}
