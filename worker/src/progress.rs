//! The hub's record of where each SQLite peer file stands
//! (`tributary.worker_progress`, one row per slot and destination), so
//! that a file that went backwards (restored from an older backup of
//! itself, or replaced by an older copy) is noticed and copied anew
//! instead of silently missing the changes in between.
//!
//! ```text
//!  sink::drive    file COMMIT (position P in _tributary_state) ──> committed_lsn
//!  pipeline       before each standby status that moves the slot:
//!                   FilePositions::record: one upsert for every file whose
//!                   committed position moved ──> worker_progress(slot, dest) = R
//!                 then confirm the slot
//!  opening a peer load(slot, dest) = R;  P < R ──> the file went back: copy it anew
//! ```
//!
//! Two rules make `P >= R` mean that nothing was skipped: R is recorded
//! only after the file committed it (R is never above what the file
//! holds), and the slot is confirmed past a transaction the file took
//! only once R covers it (the record comes before the confirmation). So
//! every transaction for the file below the slot's confirmed position is
//! at or below R; a file at or above R holds them all, and the stream
//! brings the rest. A queue destination writes its own row, in the same
//! transaction as its rows (`sink::queue`); destination names are unique,
//! so the rows never meet.

use crate::error::{Context, Error};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio_postgres::{Client, Statement};

/// Never moves a record back: a position recorded once was committed by
/// the file, and a file copied anew commits above it.
const RECORD: &str = "INSERT INTO tributary.worker_progress AS p (slot, destination, lsn)
     SELECT $1, d, l::pg_lsn FROM unnest($2::text[], $3::text[]) AS u(d, l)
     ON CONFLICT (slot, destination) DO UPDATE SET lsn = excluded.lsn, updated_at = now()
      WHERE p.lsn < excluded.lsn";

/// The position recorded at the hub for `destination` on `slot`, if any.
pub async fn load(client: &Client, slot: &str, destination: &str) -> Result<Option<Lsn>, Error> {
    let row = client
        .query_opt(
            "SELECT lsn::text FROM tributary.worker_progress WHERE slot = $1 AND destination = $2",
            &[&slot, &destination],
        )
        .await
        .context(format!("destination {destination}: reading its progress"))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|s| s.parse().ok()))
}

/// Whether a file at `position` went back behind what the hub recorded
/// for it. A file with no position is copied anyway; no record (a first
/// run, or a worker from before the record) means nothing to compare.
pub fn went_back(position: Lsn, recorded: Option<Lsn>) -> bool {
    position != Lsn(0) && recorded.is_some_and(|r| position < r)
}

/// A SQLite peer whose committed position the hub records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Its index among the destinations (and their metrics).
    pub index: usize,
    pub name: String,
    /// What the hub holds for it (0/0: nothing).
    pub recorded: Lsn,
}

/// The session's peer files and what the hub holds for each.
pub struct FilePositions {
    client: Arc<Client>,
    slot: String,
    files: Vec<Watched>,
    /// Prepared on first use: each record is then one round trip.
    statement: Option<Statement>,
}

impl FilePositions {
    pub fn new(client: Arc<Client>, slot: &str, files: Vec<Watched>) -> FilePositions {
        FilePositions {
            client,
            slot: slot.to_string(),
            files,
            statement: None,
        }
    }

    /// Records at the hub every file's committed position that moved since
    /// it was last recorded: one statement for all of them, none when none
    /// moved. Call it after reading what the slot may be confirmed up to,
    /// before confirming it.
    pub async fn record(&mut self, metrics: &Metrics) -> Result<(), Error> {
        let due = due(&self.files, |i| {
            Lsn(metrics.destinations[i].committed_lsn.load(Relaxed))
        });
        if due.is_empty() {
            return Ok(());
        }
        let statement = match &self.statement {
            Some(s) => s.clone(),
            None => {
                let s = self
                    .client
                    .prepare(RECORD)
                    .await
                    .context("preparing the record of the peer files' positions")?;
                self.statement.insert(s).clone()
            }
        };
        let names: Vec<&str> = due.iter().map(|&(k, _)| &*self.files[k].name).collect();
        let lsns: Vec<String> = due.iter().map(|(_, l)| l.to_string()).collect();
        self.client
            .execute(&statement, &[&self.slot, &names, &lsns])
            .await
            .context("recording the peer files' positions")?;
        for (k, l) in due {
            self.files[k].recorded = l;
        }
        Ok(())
    }
}

/// The files (by their place in `files`) whose committed position is
/// above what is recorded, with that position.
fn due(files: &[Watched], committed: impl Fn(usize) -> Lsn) -> Vec<(usize, Lsn)> {
    files
        .iter()
        .enumerate()
        .filter_map(|(k, f)| {
            let c = committed(f.index);
            (c > f.recorded).then_some((k, c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_file_below_its_record_went_back() {
        assert!(
            went_back(Lsn(100), Some(Lsn(200))),
            "restored from a backup"
        );
        assert!(!went_back(Lsn(200), Some(Lsn(200))));
        assert!(
            !went_back(Lsn(300), Some(Lsn(200))),
            "committed, not yet recorded"
        );
        assert!(!went_back(Lsn(100), None), "nothing recorded yet");
        assert!(!went_back(Lsn(0), Some(Lsn(200))), "copied anyway");
    }

    #[test]
    fn only_files_whose_committed_position_moved_are_recorded() {
        let files = [
            Watched {
                index: 1,
                name: "edge1".into(),
                recorded: Lsn(100),
            },
            Watched {
                index: 3,
                name: "edge2".into(),
                recorded: Lsn(0),
            },
        ];
        let committed = |i| if i == 1 { Lsn(100) } else { Lsn(50) };
        assert_eq!(due(&files, committed), vec![(1, Lsn(50))]);
        // A file whose committed position is unknown (0/0: copied anew,
        // or detached since the process started) is never recorded.
        assert!(due(&files, |_| Lsn(0)).is_empty());
    }
}
