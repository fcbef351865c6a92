//! Destinations ("sinks"): each runs as its own task, fed whole source
//! transactions in commit order through a bounded channel.
//!
//! ```text
//!  pipeline ──ToSink::Begin / Changes / Commit──> [bounded channel] ──> sink task
//!                                                                        │ writes data + its
//!                                                                        │ progress in ONE
//!                                                                        │ destination transaction
//!  pipeline <──────────── durable position (DestinationMetrics) ─────────┘
//! ```
//!
//! **The contract every sink keeps.**
//! - Delivery is at-least-once: after a crash, transactions after the
//!   slot's confirmed position arrive again.
//! - The effect is exactly once: a sink stores the end LSN of the last
//!   source transaction it applied *in the same destination transaction as
//!   the data*, skips any transaction whose commit LSN is below it, and
//!   keys each change by (commit LSN, ordinal) so a replay cannot
//!   duplicate it.
//! - A write counts as durable when that destination transaction has
//!   committed; only then does the sink publish its new position, and the
//!   slot is never confirmed beyond the smallest published position.
//! - A source transaction is never split: it is committed whole, possibly
//!   together with the transactions before it.

pub mod queue;
pub mod sqlite;

use crate::lsn::Lsn;
use crate::transaction::Change;
use std::sync::Arc;

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
        table: Arc<crate::transaction::Table>,
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
