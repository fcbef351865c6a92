//! The worker's counters and gauges, rendered for Prometheus at `/metrics`.
//!
//! Everything is an atomic shared by the pipeline and the HTTP server: no
//! lock, nothing held across an await.

use crate::lsn::Lsn;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Microseconds since 2000-01-01 (PostgreSQL's epoch), now.
pub fn pg_now_micros() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    unix.as_micros() as i64 - 946_684_800_000_000
}

#[derive(Default)]
pub struct DestinationMetrics {
    pub name: String,
    pub kind: &'static str,
    /// End LSN of the last source transaction durably applied (or that
    /// had nothing for this destination).
    pub durable_lsn: AtomicU64,
    /// End LSN the destination itself last committed (for a SQLite peer,
    /// the position stored in its file). `durable_lsn` runs ahead of it
    /// over transactions that had nothing for the destination. Stored
    /// before `durable_lsn` (which is stored with `Release`): whoever
    /// loads `durable_lsn` with `Acquire` then reads a committed position
    /// that covers every transaction for the destination below it. What
    /// the hub records for a peer file (`crate::progress`).
    pub committed_lsn: AtomicU64,
    /// Commit time of that transaction (µs since 2000-01-01).
    pub applied_commit_time: AtomicI64,
    pub rows: AtomicU64,
    pub transactions: AtomicU64,
    pub errors: AtomicU64,
    /// Changes that altered a peer file (a write-back equal to what the
    /// peer holds is not one).
    pub applied: AtomicU64,
    /// Peer changes sent to the hub (pull).
    pub pulled: AtomicU64,
    /// The peer's pull failed and waits to be retried.
    pub pull_failing: AtomicBool,
    /// The peer is set aside (its file cannot be opened or written now) and
    /// probed until it can; the other destinations go on.
    pub detached: AtomicBool,
    /// Detaches in a row for a write the peer refused (reset by a commit).
    pub broken_streak: std::sync::atomic::AtomicU32,
    /// Hub changes the peer refused `max_attempts` times, set aside
    /// (`tributary.dead_letters`).
    pub dead_letters: AtomicU64,
    /// Initial copy progress.
    pub snapshot_rows: AtomicU64,
    pub snapshot_tables: AtomicU64,
    /// The queue met a duplicate: write with ON CONFLICT DO NOTHING.
    pub guarded: AtomicBool,
}

#[derive(Default)]
pub struct Metrics {
    pub destinations: Vec<Arc<DestinationMetrics>>,
    /// The server's WAL end, from the last message or keepalive.
    pub server_wal_end: AtomicU64,
    /// What the slot was last confirmed up to.
    pub confirmed_lsn: AtomicU64,
    /// WAL the server keeps for the slot (current WAL - restart_lsn).
    pub retained_wal: AtomicU64,
    pub received_bytes: AtomicU64,
    pub connected: AtomicBool,
    /// This process holds the slot's lock (see [`crate::standby`]).
    pub active: AtomicBool,
    /// Another process holds it: this one stands by.
    pub standby: AtomicBool,
    pub errors: AtomicU64,
    pub restarts: AtomicU64,
}

impl Metrics {
    /// The destinations that are not fully working, as `name (why)`.
    pub fn degraded(&self) -> Vec<String> {
        self.destinations
            .iter()
            .filter_map(|d| {
                let why: Vec<&str> = [
                    (d.detached.load(Relaxed), "detached"),
                    (d.pull_failing.load(Relaxed), "pull failing"),
                ]
                .into_iter()
                .filter_map(|(on, w)| on.then_some(w))
                .collect();
                (!why.is_empty()).then(|| format!("{} ({})", d.name, why.join(", ")))
            })
            .collect()
    }

    pub fn new(destinations: impl IntoIterator<Item = (String, &'static str)>) -> Metrics {
        Metrics {
            destinations: destinations
                .into_iter()
                .map(|(name, kind)| {
                    Arc::new(DestinationMetrics {
                        name,
                        kind,
                        ..Default::default()
                    })
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let now = Now {
            wal_end: self.server_wal_end.load(Relaxed),
            micros: pg_now_micros(),
        };
        for (name, help, kind, value) in DESTINATION_FAMILIES {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for d in &self.destinations {
                let labels = format!("destination=\"{}\",kind=\"{}\"", escape(&d.name), d.kind);
                let _ = writeln!(s, "{name}{{{labels}}} {}", value(d, &now));
            }
        }
        for (name, help, kind, value) in GLOBAL_FAMILIES {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value(self, &now)
            );
        }
        s
    }

    pub fn confirmed(&self) -> Lsn {
        Lsn(self.confirmed_lsn.load(Relaxed))
    }
}

/// What a rendering reads once: the server's WAL end and the time.
struct Now {
    wal_end: u64,
    micros: i64,
}

type Family<T> = (
    &'static str,
    &'static str,
    &'static str,
    fn(&T, &Now) -> f64,
);

/// The per-destination families: name, help, type, value.
const DESTINATION_FAMILIES: &[Family<DestinationMetrics>] = &[
    (
        "tributary_destination_lag_bytes",
        "WAL bytes between the server's end and what the destination has durably applied.",
        "gauge",
        |d, now| now.wal_end.saturating_sub(d.durable_lsn.load(Relaxed)) as f64,
    ),
    (
        "tributary_destination_lag_seconds",
        "Age of the last source commit the destination applied, while it is behind; 0 when caught up.",
        "gauge",
        |d, now| {
            let t = d.applied_commit_time.load(Relaxed);
            if t == 0 || d.durable_lsn.load(Relaxed) >= now.wal_end {
                0.0
            } else {
                (now.micros - t).max(0) as f64 / 1e6
            }
        },
    ),
    (
        "tributary_destination_rows_total",
        "Changes durably written to the destination.",
        "counter",
        |d, _| d.rows.load(Relaxed) as f64,
    ),
    (
        "tributary_destination_transactions_total",
        "Source transactions durably applied by the destination.",
        "counter",
        |d, _| d.transactions.load(Relaxed) as f64,
    ),
    (
        "tributary_destination_errors_total",
        "Errors writing to the destination.",
        "counter",
        |d, _| d.errors.load(Relaxed) as f64,
    ),
    (
        "tributary_destination_applied_total",
        "Changes that altered a SQLite peer (writes equal to what it holds excluded).",
        "counter",
        |d, _| d.applied.load(Relaxed) as f64,
    ),
    (
        "tributary_destination_pulled_total",
        "A peer's own changes sent to the hub through sync_apply.",
        "counter",
        |d, _| d.pulled.load(Relaxed) as f64,
    ),
    (
        "tributary_destination_detached",
        "1 while the peer is set aside (unreachable or refusing writes) and retried with backoff; the other destinations go on.",
        "gauge",
        |d, _| f64::from(u8::from(d.detached.load(Relaxed))),
    ),
    (
        "tributary_destination_dead_letters_total",
        "Hub changes the peer refused max_attempts times in a row, set aside in tributary.dead_letters so that its stream goes on.",
        "counter",
        |d, _| d.dead_letters.load(Relaxed) as f64,
    ),
    (
        "tributary_destination_pull_failing",
        "1 while the peer's pull has failed and waits to be retried (its push goes on).",
        "gauge",
        |d, _| f64::from(u8::from(d.pull_failing.load(Relaxed))),
    ),
    (
        "tributary_snapshot_rows_total",
        "Rows sent to the destination by its initial copy.",
        "counter",
        |d, _| d.snapshot_rows.load(Relaxed) as f64,
    ),
    (
        "tributary_snapshot_tables_total",
        "Tables the destination's initial copy has finished.",
        "counter",
        |d, _| d.snapshot_tables.load(Relaxed) as f64,
    ),
];

/// The worker-wide families: name, help, type, value.
const GLOBAL_FAMILIES: &[Family<Metrics>] = &[
    (
        "tributary_retained_wal_bytes",
        "WAL the server keeps for the slot (current WAL position - the slot's restart_lsn).",
        "gauge",
        |m, _| m.retained_wal.load(Relaxed) as f64,
    ),
    (
        "tributary_unconfirmed_bytes",
        "WAL the server sent beyond what the slot is confirmed up to.",
        "gauge",
        |m, now| now.wal_end.saturating_sub(m.confirmed_lsn.load(Relaxed)) as f64,
    ),
    (
        "tributary_confirmed_lsn",
        "Position the slot is confirmed up to.",
        "gauge",
        |m, _| m.confirmed_lsn.load(Relaxed) as f64,
    ),
    (
        "tributary_received_bytes_total",
        "pgoutput bytes received from the slot.",
        "counter",
        |m, _| m.received_bytes.load(Relaxed) as f64,
    ),
    (
        "tributary_source_connected",
        "1 while streaming from the slot.",
        "gauge",
        |m, _| f64::from(u8::from(m.connected.load(Relaxed))),
    ),
    (
        "tributary_worker_active",
        "1 while this process holds the slot's lock and streams; 0 while it stands by (another worker holds it) or starts.",
        "gauge",
        |m, _| f64::from(u8::from(m.active.load(Relaxed))),
    ),
    (
        "tributary_errors_total",
        "Errors that restarted the pipeline.",
        "counter",
        |m, _| m.errors.load(Relaxed) as f64,
    ),
];

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
