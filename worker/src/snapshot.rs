//! The initial copy of a new peer, joined to the stream without a gap or an
//! overlap.
//!
//! ```text
//!  replication conn:  CREATE_REPLICATION_SLOT tributary_snap_<pid> TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT
//!                       -> consistent point C, snapshot S
//!  ordinary conn:     BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT S
//!                     SELECT col::text, ... FROM each published table the peer takes
//!  sink:              Begin · Prepare{table, epoch}… · Changes… · Commit{end = C}   (one SQLite transaction)
//! ```
//!
//! Snapshot S sees exactly the transactions that committed before C; the
//! stream delivers those that commit at or after C. Storing C as the peer's
//! progress, in the same transaction as the copy, makes the peer skip every
//! streamed transaction with a commit LSN below C (already in the copy) and
//! apply the rest. The main slot's position is at or below C (it was read
//! before the temporary slot existed, and this destination's progress holds
//! it there), so nothing at or after C is missed.

use crate::config::Destination;
use crate::error::{Context, Error};
use crate::lsn::Lsn;
use crate::metrics::DestinationMetrics;
use crate::pgoutput::{Column, Relation, Tuple, Value};
use crate::router::glob_match;
use crate::sink::ToSink;
use crate::source::{ConnectOptions, Connection};
use crate::transaction::{Change, Op, Table};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::mpsc;

use tributary_core::quote::ident;

/// Copies every published table `dest` takes into its sink through `tx`,
/// as one transaction ending at the returned consistent point.
pub async fn copy(
    opts: &ConnectOptions,
    publication: &str,
    dest: &Destination,
    tx: &mpsc::Sender<ToSink>,
    metrics: &DestinationMetrics,
) -> Result<Lsn, Error> {
    let (client, at) = open_snapshot(opts).await?;
    let out = Out { dest, tx, metrics };
    out.send(ToSink::Begin {
        commit_lsn: Lsn(0),
        commit_time: crate::metrics::pg_now_micros(),
    })
    .await?;
    let tables = client
        .query(
            "SELECT c.oid::int8, n.nspname::text, c.relname::text
               FROM pg_publication_tables pt
               JOIN pg_namespace n ON n.nspname = pt.schemaname
               JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
              WHERE pt.pubname = $1 ORDER BY 2, 3",
            &[&publication],
        )
        .await
        .context("initial copy: listing the published tables")?;
    let mut ord = 0u32;
    for t in tables {
        let (oid, schema, name): (i64, String, String) = (t.get(0), t.get(1), t.get(2));
        if dest
            .tables
            .iter()
            .any(|g| glob_match(g, &format!("{schema}.{name}")))
        {
            copy_table(&client, &out, oid, &schema, &name, &mut ord).await?;
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .context("initial copy: closing the snapshot")?;
    out.send(ToSink::Commit { end_lsn: at }).await?;
    tracing::info!(destination = %dest.name, at = %at,
        rows = metrics.snapshot_rows.load(Relaxed), tables = metrics.snapshot_tables.load(Relaxed),
        "initial copy sent; streaming from here");
    Ok(at)
}

/// A temporary slot exports a snapshot, imported by an ordinary
/// connection: it sees exactly what committed before the slot's
/// consistent point, which is returned with it.
async fn open_snapshot(opts: &ConnectOptions) -> Result<(tokio_postgres::Client, Lsn), Error> {
    let mut repl = Connection::connect(opts).await?;
    let slot = format!("tributary_snap_{}", std::process::id());
    let info = repl.create_slot_with(&slot, true, true).await?;
    let snapshot = info
        .snapshot
        .ok_or_else(|| Error::bug("the server exported no snapshot for the initial copy"))?;
    let client = crate::hub::connect(opts, "tributary-worker snapshot").await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
             SET TRANSACTION SNAPSHOT {}; {}",
            tributary_core::quote::literal(&snapshot),
            crate::hub::session_settings_sql(true)
        ))
        .await
        .context("initial copy: importing the snapshot")?;
    // The snapshot is ours now: the exporting connection (and its
    // temporary slot) can go.
    drop(repl);
    Ok((client, info.consistent_point))
}

/// Where the copy goes.
struct Out<'a> {
    dest: &'a Destination,
    tx: &'a mpsc::Sender<ToSink>,
    metrics: &'a DestinationMetrics,
}

impl Out<'_> {
    async fn send(&self, m: ToSink) -> Result<(), Error> {
        // The destination's own error says why; the session starts again.
        self.tx.send(m).await.map_err(|_| Error::Definite {
            message: format!(
                "destination {}: stopped during its initial copy",
                self.dest.name
            ),
            hint: "see its error above".into(),
            cause: crate::error::Cause::Connection,
        })
    }
}

/// Copies one table: Prepare (with its tracking epoch), then its rows as
/// inserts, 1,024 per message.
async fn copy_table(
    client: &tokio_postgres::Client,
    out: &Out<'_>,
    oid: i64,
    schema: &str,
    name: &str,
    ord: &mut u32,
) -> Result<(), Error> {
    let qualified = format!("{}.{}", ident(schema), ident(name));
    let columns = hub_columns(client, &qualified).await?;
    let select = format!(
        "SELECT {} FROM ONLY {qualified}",
        columns
            .iter()
            .map(|c| format!("{}::text", ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let table = Arc::new(Table::new(Relation {
        id: oid as u32,
        namespace: schema.to_string(),
        name: name.to_string(),
        replica_identity: b'd',
        columns,
    }));
    let epoch: Option<i64> = client
        .query_opt(
            "SELECT tracked_xid FROM tributary.tracked WHERE relid = $1::int8::oid AND active",
            &[&oid],
        )
        .await
        .context(format!("initial copy: tracking epoch of {schema}.{name}"))?
        .map(|r| r.get(0));
    out.send(ToSink::Prepare {
        table: table.clone(),
        epoch,
    })
    .await?;
    let rows = client
        .query_raw(&select, std::iter::empty::<i64>())
        .await
        .context(format!("initial copy: reading {schema}.{name}"))?;
    tokio::pin!(rows);
    let mut batch = Vec::with_capacity(1024);
    let mut n = 0u64;
    use futures_util::StreamExt;
    while let Some(r) = rows.next().await {
        let r = r.context(format!("initial copy: reading {schema}.{name}"))?;
        batch.push(Arc::new(row_change(&table, &r, *ord)));
        *ord = ord.wrapping_add(1);
        n += 1;
        if batch.len() == 1024 {
            out.send(ToSink::Changes(std::mem::take(&mut batch)))
                .await?;
            out.metrics.snapshot_rows.fetch_add(1024, Relaxed);
        }
        if n.is_multiple_of(100_000) {
            tracing::info!(destination = %out.dest.name, table = %table.display, rows = n, "initial copy in progress");
        }
    }
    out.metrics
        .snapshot_rows
        .fetch_add(batch.len() as u64, Relaxed);
    if !batch.is_empty() {
        out.send(ToSink::Changes(batch)).await?;
    }
    out.metrics.snapshot_tables.fetch_add(1, Relaxed);
    tracing::info!(destination = %out.dest.name, table = %table.display, rows = n, "initial copy: table done");
    Ok(())
}

/// A copied row, as an insert.
fn row_change(table: &Arc<Table>, r: &tokio_postgres::Row, ord: u32) -> Change {
    let tuple = Tuple(
        (0..r.len())
            .map(|i| match r.get::<_, Option<&str>>(i) {
                Some(s) => Value::Text(s.as_bytes().to_vec()),
                None => Value::Null,
            })
            .collect(),
    );
    let version = table.version_col().and_then(|i| match &tuple.0[i] {
        Value::Text(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    });
    Change {
        table: table.clone(),
        op: Op::Insert,
        ord,
        tuple: Some(tuple),
        version,
        origin: None,
        only_for: None,
        schema: None,
    }
}

/// The tables a peer holds (`"schema"."name"` -> the tracking epoch of its
/// copy), under the names the hub gave them since: a rename the peer's
/// position has not reached yet reaches it through the stream, so the
/// table needs no new copy.
pub async fn follow_renames(
    client: &tokio_postgres::Client,
    mut held: HashMap<String, Option<i64>>,
) -> Result<HashMap<String, Option<i64>>, Error> {
    let rows = client
        .query(
            "SELECT format('\"%s\".\"%s\"', replace(from_schema, '\"', '\"\"'), replace(from_table, '\"', '\"\"')),
                    format('\"%s\".\"%s\"', replace(to_schema, '\"', '\"\"'), replace(to_table, '\"', '\"\"'))
               FROM tributary.schema_changes
              WHERE (from_schema, from_table) IS DISTINCT FROM (to_schema, to_table)
              ORDER BY id",
            &[],
        )
        .await
        .context("reading the renames of tracked tables")?;
    for r in rows {
        let (from, to): (String, String) = (r.get(0), r.get(1));
        if let Some(epoch) = held.get(&from).copied() {
            held.entry(to).or_insert(epoch);
        }
    }
    Ok(held)
}

/// The published tables `dest` takes, as `"schema"."name"`, with their
/// tracking epoch (`tributary.tracked.tracked_xid`).
pub async fn wanted_tables(
    client: &tokio_postgres::Client,
    publication: &str,
    dest: &Destination,
) -> Result<Vec<(String, Option<i64>)>, Error> {
    let rows = client
        .query(
            "SELECT pt.schemaname::text, pt.tablename::text, t.tracked_xid
               FROM pg_publication_tables pt
               LEFT JOIN tributary.tracked t
                 ON t.relid = format('%I.%I', pt.schemaname, pt.tablename)::regclass AND t.active
              WHERE pt.pubname = $1",
            &[&publication],
        )
        .await
        .context("listing the published tables")?;
    Ok(rows
        .iter()
        .filter(|r| {
            let full = format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1));
            dest.tables.iter().any(|g| glob_match(g, &full))
        })
        .map(|r| {
            (
                format!(
                    "{}.{}",
                    ident(&r.get::<_, String>(0)),
                    ident(&r.get::<_, String>(1))
                ),
                r.get(2),
            )
        })
        .collect())
}

/// A hub table's columns, in attribute order, with the primary key marked.
/// `relation` is a (quoted) name, as `regclass` reads it.
pub async fn hub_columns(
    client: &tokio_postgres::Client,
    relation: &str,
) -> Result<Vec<Column>, Error> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid::int8, a.atttypmod,
                    coalesce(a.attnum = ANY (i.indkey::int2[]), false)
               FROM pg_attribute a
               LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&relation],
        )
        .await
        .context(format!("the columns of {relation}"))?;
    Ok(rows
        .iter()
        .map(|c| Column {
            name: c.get(0),
            type_oid: c.get::<_, i64>(1) as u32,
            type_modifier: c.get(2),
            key: c.get(3),
        })
        .collect())
}
