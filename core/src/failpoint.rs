//! Crash points for the fault tests: `TRIBUTARY_FAILPOINT=<name>:<n>`
//! aborts the process (no cleanup, like `kill -9`) the n-th time the named
//! point is reached; `<name>:<n>:sleep=<ms>` pauses there instead (a test
//! acts while the process stands at that point). Unset, a check is one
//! relaxed atomic load.
//!
//! The worker's points: `queue.before_commit` (rows written, destination
//! transaction still open), `queue.after_commit` (committed, slot not yet
//! confirmed), `sqlite.after_commit`, `pull.before_hub_commit`,
//! `pull.after_hub_commit`, `nats.after_acks` (every publish of a
//! destination transaction acknowledged, the position not yet handed on).
//! The edge client's: `edge.pull.after_page` (a
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

    /// The armed point: its name, the hit that fires, and a pause in
    /// milliseconds (fire = sleep that long, then go on) or none (abort).
    static ARMED: OnceLock<Option<(String, u64, Option<u64>)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    pub fn hit(name: &str) {
        let armed = ARMED.get_or_init(|| {
            let v = std::env::var("TRIBUTARY_FAILPOINT").ok()?;
            let mut parts = v.split(':');
            let n = parts.next()?.to_string();
            let count = parts.next()?.parse().ok()?;
            let pause = match parts.next() {
                Some(p) => Some(p.strip_prefix("sleep=")?.parse().ok()?),
                None => None,
            };
            Some((n, count, pause))
        });
        if let Some((n, count, pause)) = armed {
            if n == name && HITS.fetch_add(1, Relaxed) + 1 == *count {
                if let Some(ms) = pause {
                    eprintln!("tributary: failpoint {name} reached: pausing {ms} ms");
                    std::thread::sleep(std::time::Duration::from_millis(*ms));
                    return;
                }
                eprintln!("tributary: failpoint {name} reached: aborting");
                std::process::abort();
            }
        }
    }
}
