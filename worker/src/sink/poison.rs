//! Poison changes: hub changes a SQLite peer refuses again and again (a
//! UNIQUE index or CHECK the app added to its file, a value it cannot hold).
//!
//! ```text
//!  attempt 1..max_attempts   the peer is detached and retried with backoff (pipeline)
//!  then                      the sink opens isolating: each change in a savepoint;
//!                            one the file refuses is undone alone, recorded in the
//!                            file's _tributary_errors (DEAD_LETTER), and
//!  at commit                 in tributary.dead_letters at the hub (first), then the
//!                            file commits: the peer's stream goes on past it
//! ```
//!
//! Only a refusal of one write ([`tributary_sqlite::PeerError::is_refusal`])
//! is set aside; a locked, full or damaged file fails the whole batch as
//! before. A dead letter is keyed by (destination, commit LSN, ordinal): a
//! retry after a crash between the two commits records it once.

use crate::error::{Context, Error};
use crate::lsn::Lsn;
use crate::source::ConnectOptions;
use crate::transaction::Change;

/// How many times a peer may refuse a write before it is set aside.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A hub change the peer refused, to be recorded at the hub.
#[derive(Debug, serde::Serialize)]
pub struct DeadLetter {
    pub lsn: String,
    pub ord: u32,
    pub tbl: String,
    pub op: &'static str,
    pub pk: Option<serde_json::Value>,
    pub data: Option<serde_json::Value>,
    pub error: String,
}

impl DeadLetter {
    pub fn new(commit: Lsn, c: &Change, error: String) -> DeadLetter {
        let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        DeadLetter {
            lsn: commit.to_string(),
            ord: c.ord,
            tbl: c.table.display.clone(),
            op: c.op.code(),
            pk: json(c.pk_json()),
            data: json(c.data_json()),
            error,
        }
    }
}

/// The isolating mode of a sink: where to record, and what is not yet.
pub struct Isolating {
    opts: ConnectOptions,
    attempts: u32,
    hub: Option<tokio_postgres::Client>,
    pub pending: Vec<DeadLetter>,
}

const RECORD: &str = "\
INSERT INTO tributary.dead_letters (destination, lsn, ord, tbl, op, pk, data, error, attempts)
SELECT $1, (x ->> 'lsn')::pg_lsn, (x ->> 'ord')::int, x ->> 'tbl', x ->> 'op', x -> 'pk', x -> 'data',
       x ->> 'error', $3
  FROM jsonb_array_elements($2::text::jsonb) AS x
ON CONFLICT (destination, lsn, ord) DO NOTHING";

impl Isolating {
    pub fn new(opts: ConnectOptions, attempts: u32) -> Isolating {
        Isolating {
            opts,
            attempts,
            hub: None,
            pending: Vec::new(),
        }
    }

    /// Records the pending dead letters at the hub (before the file
    /// commits them as passed). A failure concerns this peer alone (say,
    /// the worker's role lacks the grant): it is detached and retried.
    pub async fn record(&mut self, destination: &str) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.try_record(destination).await.map_err(|e| Error::Peer {
            message: format!(
                "destination {destination}: recording its dead letters at the hub failed: {e} (SELECT sync_worker_grant('<worker role>') grants it)"
            ),
            cause: crate::error::Cause::PeerBroken,
        })
    }

    async fn try_record(&mut self, destination: &str) -> Result<(), Error> {
        if self.hub.is_none() {
            self.hub =
                Some(crate::hub::connect(&self.opts, "tributary-worker dead letters").await?);
        }
        let letters = serde_json::to_string(&self.pending)
            .map_err(|e| Error::bug(format!("dead letters as JSON: {e}")))?;
        let attempts = i32::try_from(self.attempts).unwrap_or(i32::MAX);
        let hub = self.hub.as_ref().expect("connected above");
        hub.execute(RECORD, &[&destination, &letters, &attempts])
            .await
            .context("recording dead letters in tributary.dead_letters")?;
        for d in &self.pending {
            tracing::warn!(destination = %destination, table = %d.tbl, pk = ?d.pk, lsn = %d.lsn,
                error = %d.error, attempts = self.attempts,
                "a hub change the peer refused again and again is set aside as a dead letter (sync_dead_letters; the peer's _tributary_errors); its stream goes on");
        }
        Ok(())
    }
}
