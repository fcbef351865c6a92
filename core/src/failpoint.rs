//! Crash points for the fault tests: `TRIBUTARY_FAILPOINT=<name>:<n>`
//! aborts the process (no cleanup, like `kill -9`) the n-th time the named
//! point is reached. Unset, a check is one relaxed atomic load.
//!
//! The worker's points: `queue.before_commit` (rows written, destination
//! transaction still open), `queue.after_commit` (committed, slot not yet
//! confirmed), `sqlite.after_commit`, `pull.before_hub_commit`,
//! `pull.after_hub_commit`. The edge client's: `edge.pull.after_page` (a
//! page and its progress committed), `edge.push.after_hub` (the hub
//! answered, the outbox not yet cleared).
//!
//! Only a build with the `failpoints` feature has them (the end-to-end
//! tests build the worker and the edge client so; their own `failpoints`
//! features turn on this crate's); otherwise [`hit`] is empty. The one
//! piece of this crate that reads the environment.

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

#[cfg(feature = "failpoints")]
pub use armed::hit;

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    pub fn hit(name: &str) {
        let armed = ARMED.get_or_init(|| {
            let v = std::env::var("TRIBUTARY_FAILPOINT").ok()?;
            let (n, count) = v.split_once(':')?;
            Some((n.to_string(), count.parse().ok()?))
        });
        if let Some((n, count)) = armed {
            if n == name && HITS.fetch_add(1, Relaxed) + 1 == *count {
                eprintln!("tributary: failpoint {name} reached: aborting");
                std::process::abort();
            }
        }
    }
}
