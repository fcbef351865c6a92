//! A SQLite peer file as the tests read it: every connection with a busy
//! timeout, as a well-behaved app opens it.
//!
//! ```text
//!  sqlite_dest(name, path)     a [[destination]] block for the worker
//!  lite / rows / outbox_len    reading the file
//!  caught_up(w, c, path)       waits until the file holds all the hub committed
//!  all_caught_up(w, c, paths)  the same for several files, with one marker
//! ```
//!
//! `caught_up` writes a row into the hub table `marker`, which the test's
//! schema must track.

use crate::worker::WorkerProc;
use crate::Client;
use rusqlite::types::Value as V;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

pub fn sqlite_dest(name: &str, path: &Path) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\nkind = \"sqlite\"\npath = \"{}\"\ntables = [\"public.*\", \"sales.*\"]\n",
        path.display()
    )
}

/// A SQLite peer `edge1` at `path` pulling every 50 ms, and a queue `audit`
/// taking `queue_tables` (a TOML list's inside, e.g. `"public.items"`).
pub fn peer_and_queue(path: &Path, queue_tables: &str) -> String {
    format!(
        "{}\n[[destination]]\nname = \"audit\"\nkind = \"queue\"\ntables = [{queue_tables}]\n",
        sqlite_dest("edge1", path).replace("tables =", "pull_interval_ms = 50\ntables =")
    )
}

pub fn lite(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

pub fn rows(path: &Path, sql: &str) -> Vec<Vec<V>> {
    let c = lite(path);
    let mut st = c.prepare(sql).unwrap();
    let n = st.column_count();
    st.query_map([], |r| (0..n).map(|i| r.get::<_, V>(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The peer's stored position for slot `w`, or None before its first commit.
pub fn peer_lsn(path: &Path) -> Option<String> {
    if !path.exists() {
        return None;
    }
    let c = lite(path);
    c.query_row(
        "SELECT lsn FROM _tributary_state WHERE slot = 'w'",
        [],
        |r| r.get(0),
    )
    .ok()
}

/// Waits until the peer has applied everything the hub committed so far.
pub fn caught_up(w: &mut WorkerProc, c: &mut Client, path: &Path) {
    all_caught_up(w, c, &[path]);
}

/// Waits until every peer of `paths` has applied everything the hub
/// committed so far, with one marker transaction for all of them (so none
/// is left applying another's marker afterwards).
pub fn all_caught_up(w: &mut WorkerProc, c: &mut Client, paths: &[&Path]) {
    let target: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    let target: tributary_worker::lsn::Lsn = target.parse().unwrap();
    // The last commit's end is at or below the current WAL position; a
    // marker transaction after it makes sure the peer passes it.
    c.batch_execute("INSERT INTO marker VALUES (DEFAULT)")
        .unwrap();
    w.until(T, "the peers to catch up", || {
        paths.iter().all(|path| {
            peer_lsn(path)
                .and_then(|l| l.parse::<tributary_worker::lsn::Lsn>().ok())
                .is_some_and(|l| l > target)
        })
    });
}

pub fn outbox_len(path: &Path) -> i64 {
    lite(path)
        .query_row("SELECT count(*) FROM _tributary_outbox", [], |r| r.get(0))
        .unwrap()
}
