//! `run`: a daemon that keeps the file in step while the app uses it.
//!
//! ```text
//!  loop
//!    every `interval` (and at once when the app's outbox has edits): sync = push, then pull
//!    between: a long poll on its own thread (GET /v1/changes?since=<the tables' version>&wait=)
//!             wakes a pull as soon as the hub has a change this peer reads;
//!             the outbox is looked at every `OUTBOX_TICK`
//!    the hub unreachable (or refusing for a while): back off 1 s, 2 s, … 60 s, and go on;
//!             the app keeps working on the file meanwhile
//!    a refused token, a file that is not a peer: stop (they need a person)
//! ```
//!
//! Every step is a transaction of its own (a page, a push's bookkeeping),
//! so the process may be killed at any moment: the next `run` goes on.

use crate::error::{Error, Result};
use crate::sync::{Progress, Pulled, Pushed};
use crate::Edge;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often the outbox is looked at between syncs.
const OUTBOX_TICK: Duration = Duration::from_millis(200);
/// The longest a long poll waits (the gateway caps it at its `max_wait_s`).
const MAX_WAIT: Duration = Duration::from_secs(25);
/// The longest back-off while the hub is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What `run` reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// A sync or a woken pull ended.
    Synced {
        pushed: &'a Pushed,
        pulled: &'a [Pulled],
    },
    /// A step failed with what may pass (the hub unreachable, a refusal,
    /// the file locked): the next try is in `retry_in`.
    Failed {
        error: &'a Error,
        retry_in: Duration,
    },
    /// The first step that worked after failures.
    Recovered,
}

/// Whether an error needs a person (stop) rather than time (back off).
fn fatal(e: &Error) -> bool {
    matches!(
        e,
        Error::TokenRefused(_) | Error::NotAPeer { .. } | Error::Usage(_)
    )
}

/// Parses an interval: `500ms`, `5s`, `2m`, or a number of seconds.
pub fn parse_interval(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not an interval (e.g. 5s, 500ms, 2m)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("{s:?}: the unit must be ms, s or m")),
    };
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?} is too short: at least 100ms"));
    }
    Ok(d)
}

/// The long poll under way, on its own thread.
struct Poll {
    done: mpsc::Receiver<Result<bool>>,
}

impl Edge {
    /// The version every table is complete up to (None: a table was never
    /// pulled, or a pull of one is under way).
    fn common_version(&mut self) -> Result<Option<i64>> {
        let (n, low, open): (i64, Option<i64>, i64) = self.file.conn().query_row(
            "SELECT count(*), min(version), count(*) FILTER (WHERE version IS NULL OR next IS NOT NULL)
               FROM _tributary_pulls",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(if n == 0 || open > 0 { None } else { low })
    }

    fn unsent(&mut self) -> Result<bool> {
        Ok(self.file.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM _tributary_outbox)",
            [],
            |r| r.get(0),
        )?)
    }

    /// Starts a long poll from the tables' common version.
    fn start_poll(&mut self, wait: Duration) -> Result<Option<Poll>> {
        let Some(since) = self.common_version()? else {
            return Ok(None);
        };
        let hub = self.hub.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(hub.changed_since(since, wait));
        });
        Ok(Some(Poll { done: rx }))
    }

    /// Runs until `stop` says so (checked between steps) or an error that
    /// needs a person. Syncs every `interval`, pushes the app's edits as
    /// they come, and pulls as soon as the hub has a change for this peer.
    pub fn run(
        &mut self,
        interval: Duration,
        stop: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(&Progress),
        report: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let mut backoff: Option<Duration> = None;
        let mut next_sync = Instant::now();
        let mut poll: Option<Poll> = None;
        while !stop() {
            // Decide what this step is: a sync, a pull the hub woke, or
            // nothing yet.
            let step = if Instant::now() >= next_sync || self.unsent()? {
                Some(self.sync(&[], progress))
            } else if let Some(p) = &poll {
                match p.done.recv_timeout(OUTBOX_TICK) {
                    Ok(Ok(true)) => {
                        poll = None;
                        Some(self.pull(&[], progress).map(|l| (Pushed::default(), l)))
                    }
                    Ok(Ok(false)) => {
                        poll = None;
                        None
                    }
                    Ok(Err(e)) => {
                        poll = None;
                        Some(Err(e))
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        poll = None;
                        None
                    }
                }
            } else {
                let wait = next_sync
                    .saturating_duration_since(Instant::now())
                    .min(MAX_WAIT);
                poll = self.start_poll(wait)?;
                if poll.is_none() {
                    std::thread::sleep(OUTBOX_TICK);
                }
                None
            };
            match step {
                None => {}
                Some(Ok((pushed, pulled))) => {
                    if backoff.take().is_some() {
                        report(Event::Recovered);
                    }
                    if Instant::now() >= next_sync {
                        next_sync = Instant::now() + interval;
                    }
                    report(Event::Synced {
                        pushed: &pushed,
                        pulled: &pulled,
                    });
                }
                Some(Err(e)) if fatal(&e) => return Err(e),
                Some(Err(e)) => {
                    let wait = backoff.map_or(Duration::from_secs(1), |b| (b * 2).min(MAX_BACKOFF));
                    backoff = Some(wait);
                    report(Event::Failed {
                        error: &e,
                        retry_in: wait,
                    });
                    poll = None;
                    let until = Instant::now() + wait;
                    while Instant::now() < until && !stop() {
                        std::thread::sleep(OUTBOX_TICK.min(until - Instant::now()));
                    }
                    next_sync = Instant::now();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_as_people_write_them() {
        assert_eq!(parse_interval("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_interval("7"), Ok(Duration::from_secs(7)));
        assert!(parse_interval("5h").is_err());
        assert!(parse_interval("fast").is_err());
        assert!(parse_interval("10ms").is_err());
    }

    #[test]
    fn only_what_needs_a_person_stops_the_daemon() {
        assert!(fatal(&Error::Usage("x".into())));
        assert!(fatal(&Error::TokenRefused(Default::default())));
        assert!(!fatal(&Error::Unreachable {
            hub: "h".into(),
            cause: "c".into()
        }));
        assert!(!fatal(&Error::Hub(Default::default())));
    }
}
