//! Destinations ("sinks"): each runs as its own task, fed whole source
//! transactions in commit order through a bounded channel, by one generic
//! driver ([`drive`]) that owns the batching and the progress; a
//! destination only says how to begin, write, commit and roll back
//! ([`Sink`]).
//!
//! ```text
//!  pipeline ──ToSink::Begin / Prepare / Changes / Commit──> [bounded channel] ──> drive(sink)
//!                                                                                 │ Batch: skip what is applied,
//!                                                                                 │ gather whole transactions
//!                                                                                 │ sink.begin / write / commit(progress)
//!  pipeline <──────────── durable position (DestinationMetrics) ──────────────────┘
//! ```
//!
//! Implementations: [`queue`] (rows in `tributary.queue_<name>`),
//! [`sqlite`] (a peer file) and [`nats`] (messages in a JetStream stream).

pub mod mssql;
pub mod nats;
pub mod poison;
pub mod queue;
pub mod sqlite;

use crate::error::Error;
use crate::lsn::Lsn;
use crate::metrics::DestinationMetrics;
use crate::transaction::{Change, Table};
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A destination, as the driver ([`drive`]) sees it.
///
/// **The delivery contract** every implementation keeps:
/// - *At-least-once in.* After a crash, the source transactions after the
///   slot's confirmed position arrive again; the driver hands the sink
///   only those not below its stored progress ([`Sink::progress`]).
/// - *Exactly-once effect.* [`Sink::commit`] stores the end LSN of the
///   last source transaction *in the same destination transaction as the
///   data*, so nothing is ever visible without its progress, and a replay
///   is skipped before anything is written. Where a destination can, it
///   also keys each change by (commit LSN, ordinal), so that a change
///   delivered twice anyway has one effect.
/// - *Durable means committed.* A write counts once [`Sink::commit`] has
///   returned; only then does the driver publish the new position, and the
///   slot is never confirmed beyond the smallest published position. (For
///   a SQLite peer, the pipeline also records the file's committed
///   position at the hub before it confirms past it: see
///   [`crate::progress`].)
/// - *Whole transactions.* A source transaction is never split across two
///   destination transactions; several may share one.
/// - *Errors.* A method's error ends the destination's task; the driver
///   rolls back what was not committed. What follows is the error policy's
///   ([`crate::error::Cause::action`]).
#[allow(async_fn_in_trait)]
pub trait Sink {
    /// The end LSN of the last source transaction this destination holds,
    /// as loaded when it was opened.
    fn progress(&self) -> Lsn;

    /// Opens a destination transaction.
    async fn begin(&mut self) -> Result<(), Error>;

    /// An initial copy of `table` follows: create it if needed and empty it
    /// (so that empty tables exist too, and a resync replaces old rows).
    /// Destinations that hold no tables ignore it.
    async fn prepare(&mut self, _table: Arc<Table>, _epoch: Option<i64>) -> Result<(), Error> {
        Ok(())
    }

    /// Writes changes of the source transaction that committed at
    /// `commit` (LSN and time), inside the open transaction.
    async fn write(&mut self, commit: (Lsn, i64), changes: Vec<Arc<Change>>) -> Result<(), Error>;

    /// Stores `done.end` as progress and commits the open transaction.
    async fn commit(&mut self, done: &Done) -> Result<(), Error>;

    /// Rolls the open transaction back (after an error, or when the
    /// channel closed in the middle of a source transaction).
    async fn rollback(&mut self);
}

/// Runs `sink` until the channel closes: skips what it holds, gathers whole
/// source transactions into destination transactions, and publishes each
/// durable position in `metrics`. A channel closed in the middle of a
/// source transaction, or an error, rolls the open transaction back:
/// nothing half-applied is ever committed.
pub async fn drive<S: Sink>(
    mut sink: S,
    mut rx: mpsc::Receiver<ToSink>,
    metrics: Arc<DestinationMetrics>,
) -> Result<(), Error> {
    let mut batch = Batch::new(sink.progress());
    metrics.committed_lsn.store(batch.progress.0, Relaxed);
    metrics.durable_lsn.store(batch.progress.0, Release);
    let result = run(&mut sink, &mut rx, &mut batch, &metrics).await;
    if result.is_err() || batch.is_open() {
        sink.rollback().await;
    }
    if result.is_err() {
        metrics.errors.fetch_add(1, Relaxed);
    }
    result.map(|_| ())
}

/// The driver's loop. Ok(true) when the last destination transaction was
/// committed at close.
async fn run<S: Sink>(
    sink: &mut S,
    rx: &mut mpsc::Receiver<ToSink>,
    batch: &mut Batch,
    metrics: &DestinationMetrics,
) -> Result<bool, Error> {
    loop {
        let Some(msg) = rx.recv().await else {
            return match batch.close() {
                AtClose::Commit(d) => {
                    sink.commit(&d).await?;
                    published(metrics, &d);
                    Ok(true)
                }
                AtClose::Rollback | AtClose::Nothing => Ok(false),
            };
        };
        match msg {
            ToSink::Begin {
                commit_lsn,
                commit_time,
            } => batch.begin(commit_lsn, commit_time),
            ToSink::Prepare { table, epoch } => {
                if !batch.skipping() {
                    if batch.opens() {
                        sink.begin().await?;
                    }
                    sink.prepare(table, epoch).await?;
                }
            }
            ToSink::Changes(changes) => {
                if !batch.skipping() {
                    let commit = batch.current()?;
                    if batch.opens() {
                        sink.begin().await?;
                    }
                    batch.added(changes.len());
                    sink.write(commit, changes).await?;
                }
            }
            ToSink::Commit { end_lsn } => match batch.commit(end_lsn, !rx.is_empty()) {
                AtCommit::Commit(d) => {
                    sink.commit(&d).await?;
                    batch.committed(&d);
                    published(metrics, &d);
                }
                AtCommit::Moved { end, time } => {
                    metrics.durable_lsn.store(end.0, Release);
                    metrics.applied_commit_time.store(time, Relaxed);
                }
                AtCommit::Keep | AtCommit::Nothing => {}
            },
        }
    }
}

/// `d` is durable: publish it. The committed position first: the
/// pipeline reads it after `durable_lsn` (see
/// [`DestinationMetrics::committed_lsn`]).
fn published(metrics: &DestinationMetrics, d: &Done) {
    metrics.committed_lsn.store(d.end.0, Relaxed);
    metrics.durable_lsn.store(d.end.0, Release);
    metrics.applied_commit_time.store(d.time, Relaxed);
    metrics.rows.fetch_add(d.rows as u64, Relaxed);
    metrics.transactions.fetch_add(d.txns, Relaxed);
}

/// What the pipeline sends a sink.
#[derive(Debug)]
pub enum ToSink {
    Begin {
        commit_lsn: Lsn,
        commit_time: i64,
    },
    /// An initial copy of `table` follows: create it if needed and empty it
    /// (so that empty tables exist too, and a resync replaces old rows).
    Prepare {
        table: Arc<Table>,
        /// The hub's tracking epoch of the table (`tributary.tracked.tracked_xid`):
        /// a peer whose copy is of another epoch needs a new one.
        epoch: Option<i64>,
    },
    /// The next changes of the open transaction that this sink takes.
    Changes(Vec<Arc<Change>>),
    Commit {
        end_lsn: Lsn,
    },
}

/// A destination transaction is committed once a source transaction ends
/// and nothing more is waiting in the channel, or once it holds this many
/// rows or is this old.
pub const MAX_OPEN_ROWS: usize = 50_000;
pub const MAX_OPEN_TIME: std::time::Duration = std::time::Duration::from_millis(200);

/// What a destination transaction completes when it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// End LSN of the last source transaction in it: the progress to store.
    pub end: Lsn,
    /// That transaction's commit time.
    pub time: i64,
    pub txns: u64,
    pub rows: usize,
}

/// What to do once a source transaction has ended.
#[derive(Debug, PartialEq, Eq)]
pub enum AtCommit {
    /// Store `Done.end` as progress and commit the destination transaction.
    Commit(Done),
    /// Keep the destination transaction open for the next ones.
    Keep,
    /// Nothing of it was for this destination and nothing is open: the
    /// position moves on with nothing to make durable.
    Moved {
        end: Lsn,
        time: i64,
    },
    Nothing,
}

/// What to do when the channel closes.
#[derive(Debug, PartialEq, Eq)]
pub enum AtClose {
    /// A source transaction was half-received: roll everything back.
    Rollback,
    Commit(Done),
    Nothing,
}

/// The bookkeeping every sink shares: the source transaction being
/// received, whether it is skipped (applied before a crash), and the
/// destination transaction that gathers whole source transactions.
#[derive(Debug)]
pub struct Batch {
    /// End LSN of the last source transaction made durable (or with nothing
    /// for this destination).
    pub progress: Lsn,
    current: Option<(Lsn, i64)>,
    skipping: bool,
    open: Option<std::time::Instant>,
    rows: usize,
    done: Option<(Lsn, i64)>,
    txns: u64,
}

impl Batch {
    pub fn new(progress: Lsn) -> Batch {
        Batch {
            progress,
            current: None,
            skipping: false,
            open: None,
            rows: 0,
            done: None,
            txns: 0,
        }
    }

    /// A source transaction begins. It is skipped when its commit lies
    /// below what is applied, committed or not yet (an initial copy ends at
    /// its consistent point, above where the stream starts).
    pub fn begin(&mut self, commit_lsn: Lsn, commit_time: i64) {
        let applied = self.progress.max(self.done.map_or(Lsn(0), |d| d.0));
        self.skipping = commit_lsn < applied;
        self.current = Some((commit_lsn, commit_time));
    }

    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// The commit LSN and time of the source transaction being received.
    pub fn current(&self) -> Result<(Lsn, i64), Error> {
        self.current
            .ok_or_else(|| Error::bug("changes outside a transaction"))
    }

    /// Before writing: true when the destination transaction must be
    /// opened first.
    pub fn opens(&mut self) -> bool {
        let first = self.open.is_none();
        if first {
            self.open = Some(std::time::Instant::now());
        }
        first
    }

    /// Whether a destination transaction is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    pub fn added(&mut self, rows: usize) {
        self.rows += rows;
    }

    /// A source transaction ended; `more_waiting` tells whether the channel
    /// holds more.
    pub fn commit(&mut self, end_lsn: Lsn, more_waiting: bool) -> AtCommit {
        let time = self.current.take().map(|c| c.1).unwrap_or_default();
        if !std::mem::take(&mut self.skipping) {
            self.done = Some((end_lsn, time));
            self.txns += 1;
        }
        match self.open {
            Some(since)
                if self.done.is_some()
                    && (!more_waiting
                        || self.rows >= MAX_OPEN_ROWS
                        || since.elapsed() >= MAX_OPEN_TIME) =>
            {
                self.take().map_or(AtCommit::Nothing, AtCommit::Commit)
            }
            Some(_) => AtCommit::Keep,
            None => match self.done.take() {
                Some((end, time)) => {
                    self.txns = 0;
                    self.progress = self.progress.max(end);
                    AtCommit::Moved {
                        end: self.progress,
                        time,
                    }
                }
                None => AtCommit::Nothing,
            },
        }
    }

    /// The channel closed.
    pub fn close(&mut self) -> AtClose {
        match (self.current.is_some(), self.open.is_some()) {
            (true, true) => AtClose::Rollback,
            (false, true) => self.take().map_or(AtClose::Nothing, AtClose::Commit),
            _ => AtClose::Nothing,
        }
    }

    /// The destination committed `d`.
    pub fn committed(&mut self, d: &Done) {
        self.progress = self.progress.max(d.end);
    }

    fn take(&mut self) -> Option<Done> {
        self.open = None;
        let rows = std::mem::take(&mut self.rows);
        let txns = std::mem::take(&mut self.txns);
        self.done.take().map(|(end, time)| Done {
            end,
            time,
            txns,
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_below_progress_are_skipped_and_whole_ones_batched() {
        let mut b = Batch::new(Lsn(100));
        b.begin(Lsn(50), 1);
        assert!(b.skipping(), "applied before a crash");
        assert_eq!(b.commit(Lsn(60), false), AtCommit::Nothing);
        b.begin(Lsn(120), 2);
        assert!(!b.skipping());
        assert!(b.opens());
        b.added(3);
        assert_eq!(
            b.commit(Lsn(130), true),
            AtCommit::Keep,
            "more waiting: keep it open"
        );
        b.begin(Lsn(140), 3);
        assert!(!b.opens());
        b.added(2);
        let d = Done {
            end: Lsn(150),
            time: 3,
            txns: 2,
            rows: 5,
        };
        assert_eq!(b.commit(Lsn(150), false), AtCommit::Commit(d));
        b.committed(&d);
        assert_eq!(b.progress, Lsn(150));
        // Nothing for this destination: the position moves on.
        b.begin(Lsn(160), 4);
        assert_eq!(
            b.commit(Lsn(170), false),
            AtCommit::Moved {
                end: Lsn(170),
                time: 4
            }
        );
        // Half-received when the channel closes: roll back.
        b.begin(Lsn(180), 5);
        assert!(b.opens());
        assert_eq!(b.close(), AtClose::Rollback);
    }

    #[test]
    fn a_copy_ending_above_the_stream_start_makes_earlier_transactions_skip() {
        let mut b = Batch::new(Lsn(0));
        b.begin(Lsn(0), 0);
        assert!(b.opens());
        b.added(10);
        // The copy ends at its consistent point 500, not yet committed.
        assert_eq!(b.commit(Lsn(500), true), AtCommit::Keep);
        b.begin(Lsn(400), 1);
        assert!(b.skipping(), "in the copy already");
        assert_eq!(b.commit(Lsn(450), true), AtCommit::Keep);
        b.begin(Lsn(600), 2);
        assert!(!b.skipping());
        assert_eq!(
            b.close(),
            AtClose::Rollback,
            "a transaction still being received"
        );
    }
}
