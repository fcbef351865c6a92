//! One watcher per process for every waiting long poll.
//!
//! ```text
//!  long poll: nothing new in [since, v) ──register(tables, v)──> waits (or its timeout)
//!  watcher, every watch_interval_ms while anyone waits:
//!    cur := sync_current_version()                    one query
//!    cur > lowest v waiting?  sync_tables_changed(lowest v, cur)   one query
//!    wake the waiters whose tables changed; the others now wait from cur
//! ```
//!
//! So the hub sees two small queries per interval however many clients
//! wait, never one per waiting client per commit. A woken client reads its
//! own changes, as its own role. A wake is a hint: a spurious one costs
//! that client one read.

use super::db::Hub;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

struct Waiter {
    id: u64,
    /// The tables it waits on (oids).
    tables: Vec<u32>,
    /// It has seen every change before this version.
    checked: i64,
    wake: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
pub struct Watcher {
    waiters: Mutex<(u64, Vec<Waiter>)>,
    /// sync_tables_changed is not granted: every move of the version
    /// wakes everyone (correct, slower); warned about once.
    blind: AtomicBool,
}

/// A registered wait; dropping it leaves the watcher's list.
pub struct Wait<'a> {
    watcher: &'a Watcher,
    id: u64,
    rx: oneshot::Receiver<()>,
}

impl Wait<'_> {
    /// True when woken, false at the deadline.
    pub async fn until(&mut self, deadline: tokio::time::Instant) -> bool {
        matches!(
            tokio::time::timeout_at(deadline, &mut self.rx).await,
            Ok(Ok(()))
        )
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let mut w = self.watcher.waiters.lock().expect("watcher lock");
        w.1.retain(|x| x.id != self.id);
    }
}

impl Watcher {
    pub fn waiting(&self) -> usize {
        self.waiters.lock().expect("watcher lock").1.len()
    }

    pub fn register(&self, tables: Vec<u32>, checked: i64) -> Wait<'_> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.waiters.lock().expect("watcher lock");
        w.0 += 1;
        let id = w.0;
        w.1.push(Waiter {
            id,
            tables,
            checked,
            wake: Some(tx),
        });
        Wait {
            watcher: self,
            id,
            rx,
        }
    }

    /// The lowest version a waiter has checked up to, if anyone waits.
    fn lowest(&self) -> Option<i64> {
        let w = self.waiters.lock().expect("watcher lock");
        w.1.iter()
            .filter(|x| x.wake.is_some())
            .map(|x| x.checked)
            .min()
    }

    /// Wakes the waiters of the changed tables (all, when `changed` is
    /// None); the others have now checked up to `cur`.
    fn wake(&self, changed: Option<&[u32]>, cur: i64) -> usize {
        let mut w = self.waiters.lock().expect("watcher lock");
        let mut woken = 0;
        for x in w.1.iter_mut().filter(|x| x.checked < cur) {
            let hit = match changed {
                None => true,
                Some(c) => x.tables.iter().any(|t| c.contains(t)),
            };
            if hit {
                if let Some(tx) = x.wake.take() {
                    let _ = tx.send(());
                    woken += 1;
                }
            } else {
                x.checked = cur;
            }
        }
        woken
    }

    pub async fn run(&self, hub: &Hub, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(low) = self.lowest() else { continue };
            if let Err(e) = self.once(hub, low).await {
                tracing::warn!(sqlstate = %e.sqlstate, message = %e.message, "the long-poll watcher cannot read the hub; retrying");
            }
        }
    }

    async fn once(&self, hub: &Hub, low: i64) -> Result<(), super::error::ApiError> {
        let c = hub.own().await?;
        let cur: i64 = c
            .query_one("SELECT sync_current_version()", &[])
            .await?
            .get(0);
        if cur <= low {
            return Ok(());
        }
        if self.blind.load(Ordering::Relaxed) {
            self.wake(None, cur);
            return Ok(());
        }
        let st = c
            .prepare_cached("SELECT t::oid FROM sync_tables_changed($1, $2) AS t")
            .await?;
        match c.query(&st, &[&low, &cur]).await {
            Ok(rows) => {
                let changed: Vec<u32> = rows.iter().map(|r| r.get(0)).collect();
                self.wake(Some(&changed), cur);
            }
            Err(e) if e.code().map(|c| c.code()) == Some("42501") => {
                tracing::warn!(
                    "the gateway's role may not run sync_tables_changed, so every long poll wakes at every commit; run SELECT sync_gateway_grant('<gateway role>') on the hub"
                );
                self.blind.store(true, Ordering::Relaxed);
                self.wake(None, cur);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_waiters_of_a_changed_table_wake_and_the_others_move_on() {
        let w = Watcher::default();
        let mut a = w.register(vec![1, 2], 10);
        let mut b = w.register(vec![3], 10);
        let mut late = w.register(vec![3], 20);
        assert_eq!(w.lowest(), Some(10));
        assert_eq!(w.wake(Some(&[2]), 15), 1);
        assert!(a.rx.try_recv().is_ok());
        assert!(b.rx.try_recv().is_err());
        // b has now checked up to 15; late (at 20) was not looked at.
        assert_eq!(w.lowest(), Some(15));
        assert_eq!(w.wake(None, 25), 2);
        assert!(b.rx.try_recv().is_ok() && late.rx.try_recv().is_ok());
        drop((a, b, late));
        assert_eq!(w.waiting(), 0);
    }
}
