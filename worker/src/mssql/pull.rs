//! Pull: a SQL Server peer's own changes back to the hub, through the
//! resolver, exactly once.
//!
//! ```text
//!  every pull_interval_ms, holding the peer lock (the push waits):
//!   peer  snapshot transaction: CHANGE_TRACKING_CURRENT_VERSION() = next position;
//!         per table: CHANGETABLE(CHANGES t, pulled_version), less the worker's context
//!                    (or every row, when pulled_version < CHANGE_TRACKING_MIN_VALID_VERSION)
//!   hub   sync_apply per table, origin = the destination, base revisions from
//!         _tributary_versions; the write-back message (crate::pull::HubSide)   COMMIT
//!   peer  MANUAL / DEFERRED / REJECTED -> _tributary_errors; pulled_version = next   COMMIT
//! ```
//!
//! A crash between the two commits reads the same changes again: the hub
//! resolves them once more against rows that already hold them. The
//! peer's rows are untrusted: a value that is not of its hub column's
//! type is refused into `_tributary_errors` without reaching the hub, and
//! the hub checks the rest as it checks any peer's.

use super::conn::{self, Peer};
use super::{sql, value, HubTable, PeerTable};
use crate::error::{Action, Error};
use crate::pull::{HubSide, Outcome};
use crate::source::ConnectOptions;
use serde_json::Value as Json;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tributary_core::resolver::Outcome as Label;
use tributary_sqlite::outbox::Entry;

/// What a pull round works with.
pub struct Pull {
    pub dest: crate::config::Destination,
    pub slot: String,
    /// The peer tables, from the hub's tables the destination takes (as
    /// at the start; the pull reads them again every few seconds).
    pub tables: Vec<PeerTable>,
    /// Held for a whole round; the push holds it for a transaction.
    pub lock: Arc<Mutex<()>>,
    pub metrics: Arc<crate::metrics::DestinationMetrics>,
}

/// How often the pull reads the hub's tables again.
const TABLES_EVERY: Duration = Duration::from_secs(5);

fn pe<'a>(name: &'a str, what: &'a str) -> impl FnOnce(tiberius::error::Error) -> Error + 'a {
    move |e| conn::peer_err(name, what, e)
}

/// One changed row as the peer's edit, or why it cannot be sent.
pub fn entry_of(
    t: &PeerTable,
    op: &str,
    base: Option<i64>,
    values: &[Option<String>],
    changed: &[bool],
    ts: i64,
) -> Result<Entry, String> {
    let mut pk = serde_json::Map::new();
    let mut data = serde_json::Map::new();
    for (c, v) in t.columns.iter().zip(values) {
        let j =
            value::to_hub(c.oid, v.as_deref()).map_err(|e| format!("column {}: {e}", c.name))?;
        if c.key {
            pk.insert(c.name.clone(), j.clone());
        }
        data.insert(c.name.clone(), j);
    }
    let nonkey: Vec<&str> = t
        .columns
        .iter()
        .filter(|c| !c.key)
        .map(|c| c.name.as_str())
        .collect();
    let changed: Vec<Json> = nonkey
        .iter()
        .zip(changed)
        .filter(|(_, ch)| **ch)
        .map(|(n, _)| Json::from(*n))
        .collect();
    let op = match op {
        "I" | "U" | "D" => op.to_string(),
        other => return Err(format!("Change Tracking gave the operation {other:?}")),
    };
    Ok(Entry {
        tbl: t.name.clone(),
        hub: t.hub.clone(),
        pk: Json::Object(pk).to_string(),
        data: (op != "D").then(|| Json::Object(data).to_string()),
        changed: (op == "U").then(|| Json::Array(changed).to_string()),
        op,
        base,
        gen: 0,
        ts,
    })
}

/// A row read back that could not become an edit: refused at the peer.
fn refused_here(
    t: &PeerTable,
    op: &str,
    values: &[Option<String>],
    why: String,
) -> (Entry, Outcome) {
    let pk: serde_json::Map<String, Json> = t
        .columns
        .iter()
        .zip(values)
        .filter(|(c, _)| c.key)
        .map(|(c, v)| (c.name.clone(), Json::from(v.clone())))
        .collect();
    let e = Entry {
        tbl: t.name.clone(),
        hub: t.hub.clone(),
        pk: Json::Object(pk).to_string(),
        op: op.to_string(),
        data: None,
        changed: None,
        base: None,
        gen: 0,
        ts: 0,
    };
    let o = Outcome {
        outcome: Label::Rejected.as_str().into(),
        conflict_id: None,
        detail: Some(format!(
            "{why} (SQLSTATE 22P02). HINT: the row stays at the peer; fix its value, and the next change of it is sent."
        )),
        hub_row: None,
        row_version: None,
    };
    (e, o)
}

impl Pull {
    /// Reads the changes since `pulled` in one snapshot transaction:
    /// the edits to send, those refused here, and the next position.
    async fn read(
        &self,
        peer: &mut Peer,
        tables: &[PeerTable],
        pulled: i64,
    ) -> Result<(Vec<Entry>, Vec<(Entry, Outcome)>, i64), Error> {
        let name = self.dest.name.as_str();
        conn::batch(
            peer,
            name,
            "starting a snapshot transaction",
            sql::pull_begin(),
        )
        .await?;
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default();
        let (mut send, mut refused, mut next) = (vec![], vec![], pulled);
        for t in tables {
            let q = t.qualified();
            let v = peer
                .query(sql::versions(), &[&q.as_str()])
                .await
                .map_err(pe(name, "reading Change Tracking versions"))?
                .into_row()
                .await
                .map_err(pe(name, "reading Change Tracking versions"))?;
            let (current, min_valid) = v
                .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
                .unwrap_or((None, None));
            let Some(current) = current else {
                return Err(Error::Peer {
                    message: format!("destination {name}: Change Tracking is off for the database: run the script `tributary-worker mssql-setup` prints"),
                    cause: crate::error::Cause::PeerBroken,
                });
            };
            // Not tracked (yet): a table the hub began to track after the
            // setup, which the push creates and tracks when its first
            // change comes.
            let Some(min_valid) = min_valid else {
                tracing::debug!(destination = %name, table = %q, "not change-tracked at the peer yet: nothing to pull");
                continue;
            };
            next = next.max(current);
            let rows = if pulled < min_valid {
                tracing::warn!(destination = %name, table = %q, pulled, min_valid,
                    "the peer's pull position is older than Change Tracking keeps for this table: re-reading it whole (its rows deleted meanwhile are not deleted at the hub)");
                peer.query(sql::all_rows(t), &[&t.name.as_str()]).await
            } else {
                peer.query(sql::changes(t), &[&pulled, &sql::CONTEXT, &t.name.as_str()])
                    .await
            }
            .map_err(pe(name, "reading changes"))?
            .into_first_result()
            .await
            .map_err(pe(name, "reading changes"))?;
            let n = t.columns.len();
            let nonkey = t.columns.iter().filter(|c| !c.key).count();
            for r in rows {
                let op_read = r.get::<&str, _>(0).unwrap_or("U").to_string();
                let base = r.get::<i64, _>(1);
                let exists = r.get::<i32, _>(2).unwrap_or(0) == 1;
                let values: Vec<Option<String>> = (0..n)
                    .map(|i| r.get::<&str, _>(3 + i).map(str::to_string))
                    .collect();
                let changed: Vec<bool> = (0..nonkey)
                    .map(|i| r.get::<i32, _>(3 + n + i).unwrap_or(1) == 1)
                    .collect();
                // A row gone by the snapshot's time is deleted, whatever
                // the net operation said.
                let op = if exists { op_read.as_str() } else { "D" };
                match entry_of(t, op, base, &values, &changed, ts) {
                    Ok(e) => send.push(e),
                    Err(why) => refused.push(refused_here(t, op, &values, why)),
                }
            }
        }
        conn::batch(
            peer,
            name,
            "ending the snapshot transaction",
            sql::pull_end(),
        )
        .await?;
        Ok((send, refused, next))
    }

    /// One round. Returns how many edits were handled.
    async fn round(
        &self,
        peer: &mut Peer,
        hub: &mut HubSide,
        tables: &[PeerTable],
    ) -> Result<usize, Error> {
        let _held = self.lock.lock().await;
        let name = self.dest.name.as_str();
        let schema = self.dest.schema.as_deref().unwrap_or("dbo");
        let pulled: Option<i64> = peer
            .query(sql::read_pulled(schema), &[&self.slot.as_str()])
            .await
            .map_err(pe(name, "reading the pull's position"))?
            .into_row()
            .await
            .map_err(pe(name, "reading the pull's position"))?
            .and_then(|r| r.get::<i64, _>(0));
        // Before the first copy has committed, there is nothing to pull.
        let Some(pulled) = pulled else {
            return Ok(0);
        };
        let (send, refused, next) = self.read(peer, tables, pulled).await?;
        if send.is_empty() && refused.is_empty() && next == pulled {
            return Ok(0);
        }
        let mut done = hub.send(send).await?;
        crate::failpoint::hit("mssql.pull.after_hub");
        done.extend(refused);
        let reports: Vec<Json> = done
            .iter()
            .filter_map(|(e, o)| {
                o.clone().report().map(|r| {
                    serde_json::json!({
                        "tbl": e.tbl, "pk": e.pk, "op": e.op, "outcome": r.outcome,
                        "detail": r.detail, "local_data": e.data, "hub_row": r.hub_row,
                        "conflict_id": r.conflict_id,
                    })
                })
            })
            .collect();
        conn::batch(peer, name, "BEGIN", sql::begin()).await?;
        if !reports.is_empty() {
            let rows = Json::Array(reports).to_string();
            peer.execute(sql::record_outcomes(schema), &[&rows.as_str()])
                .await
                .map_err(pe(name, "recording outcomes"))?;
        }
        peer.execute(
            sql::save_pulled(schema),
            &[&self.slot.as_str(), &next, &pulled],
        )
        .await
        .map_err(pe(name, "storing the pull's position"))?;
        conn::batch(peer, name, "COMMIT", sql::commit()).await?;
        self.metrics.pulled.fetch_add(done.len() as u64, Relaxed);
        Ok(done.len())
    }

    /// Pulls until `stop` fires or an error.
    async fn run(&self, opts: &ConnectOptions, stop: &CancellationToken) -> Result<(), Error> {
        let interval = Duration::from_millis(self.dest.pull_interval_ms.unwrap_or(200));
        let mut hub = HubSide::connect(opts, &self.dest.name, &self.dest.tables).await?;
        let mut peer = conn::connect(
            &self.dest.name,
            self.dest.url.as_deref().unwrap_or_default(),
        )
        .await?;
        let mut tables = self.tables.clone();
        let mut read_at = std::time::Instant::now();
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            // The hub's tables change while the worker runs (a table
            // renamed, tracked, given a column): read them again now and then.
            if read_at.elapsed() >= TABLES_EVERY {
                let schema = self.dest.schema.as_deref().unwrap_or("dbo");
                tables = peer_tables(schema, &super::hub_tables(hub.client(), &self.dest).await?);
                read_at = std::time::Instant::now();
            }
            match self.round(&mut peer, &mut hub, &tables).await {
                Ok(_) => self.metrics.pull_failing.store(false, Relaxed),
                Err(e @ Error::Postgres { .. })
                    if e.action() == Action::Retry && !hub.is_closed() =>
                {
                    tracing::warn!(destination = %self.dest.name, error = %e, "pull round failed; retrying it");
                    hub.reset().await;
                    let _ =
                        conn::batch(&mut peer, &self.dest.name, "ROLLBACK", sql::rollback()).await;
                    self.metrics.errors.fetch_add(1, Relaxed);
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Runs the peer's pull until `stop` fires; failures that concern this
/// peer pause its pull alone ([`crate::pull::keep_pulling`]).
pub async fn supervise(
    opts: ConnectOptions,
    pull: Pull,
    stop: CancellationToken,
) -> Result<(), Error> {
    let name = pull.dest.name.clone();
    let metrics = pull.metrics.clone();
    crate::pull::keep_pulling(&name, &metrics, &stop, || pull.run(&opts, &stop)).await
}

/// The peer tables of `tables` in `schema`.
pub fn peer_tables(schema: &str, tables: &[HubTable]) -> Vec<PeerTable> {
    tables.iter().map(|t| t.peer_table(schema)).collect()
}

/// The peer tables that destination `dest` takes, read from the hub's
/// `sync_schema()` as the worker's role.
pub async fn peer_tables_from_hub(
    opts: &ConnectOptions,
    dest: &crate::config::Destination,
) -> Result<Vec<PeerTable>, Error> {
    let client = crate::hub::connect(opts, "tributary-worker mssql tables").await?;
    let tables = super::hub_tables(&client, dest).await?;
    Ok(peer_tables(
        dest.schema.as_deref().unwrap_or("dbo"),
        &tables,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PeerTable {
        super::super::tests::tables()[0].peer_table("dbo")
    }

    #[test]
    fn a_changed_row_becomes_the_edit_sync_apply_takes() {
        let t = table();
        let mut values: Vec<Option<String>> = vec![None; t.columns.len()];
        let set = |values: &mut Vec<Option<String>>, name: &str, v: &str| {
            let i = t.columns.iter().position(|c| c.name == name).unwrap();
            values[i] = Some(v.to_string());
        };
        set(&mut values, "id", "7");
        set(&mut values, "name", "it's ]");
        set(&mut values, "flag", "1");
        set(&mut values, "raw", "0x00FF");
        set(&mut values, "doc", "{\"a\":[1,2]}");
        let nonkey = t.columns.len() - 1;
        let mut changed = vec![false; nonkey];
        changed[0] = true; // name
        changed[2] = true; // flag
        let e = entry_of(&t, "U", Some(4), &values, &changed, 99).unwrap();
        assert_eq!(e.hub, "\"public\".\"customers\"");
        assert_eq!(e.pk, r#"{"id":7}"#);
        let c = e.change();
        assert_eq!(c["op"], "U");
        assert_eq!(c["version"], 5, "the base revision plus one");
        assert_eq!(c["changed"], serde_json::json!(["name", "flag"]));
        assert_eq!(c["data"]["name"], "it's ]");
        assert_eq!(c["data"]["flag"], true);
        assert_eq!(c["data"]["raw"], "\\x00ff");
        assert_eq!(c["data"]["doc"], serde_json::json!({"a": [1, 2]}));
        assert_eq!(c["data"]["small"], serde_json::Value::Null);
        // A delete carries its key alone; a new row has no base.
        let d = entry_of(&t, "D", Some(4), &values, &changed, 99).unwrap();
        assert!(d.data.is_none() && d.changed.is_none());
        let i = entry_of(&t, "I", None, &values, &changed, 99).unwrap();
        assert_eq!(i.change()["version"], 1);
        assert!(i.changed.is_none(), "an insert sets every column");
    }

    #[test]
    fn a_row_that_is_not_of_its_hub_types_is_refused_at_the_peer() {
        let t = table();
        let mut values: Vec<Option<String>> = vec![None; t.columns.len()];
        values[0] = Some("7".into());
        let doc = t.columns.iter().position(|c| c.name == "doc").unwrap();
        values[doc] = Some("{not json".into());
        let e = entry_of(&t, "U", None, &values, &[], 0).unwrap_err();
        assert!(e.contains("column doc") && e.contains("not JSON"), "{e}");
        let (entry, o) = refused_here(&t, "U", &values, e);
        assert_eq!(entry.pk, r#"{"id":"7"}"#);
        assert_eq!(o.outcome, "REJECTED");
        assert!(o.detail.unwrap().contains("SQLSTATE 22P02"));
        assert!(entry_of(&t, "X", None, &values, &[], 0).is_err());
    }
}
