//! One watcher per process for every waiting long poll.
//!
//! ```text
//!  long poll: nothing new in [since, v) ──register(role, claims, tables, v)──> waits (or its timeout)
//!  watcher, every watch_interval_ms while anyone waits:
//!    cur := sync_current_version()                                   one query
//!    cur > lowest v waiting?  changed := sync_tables_changed(low, cur)  one query
//!    per role among the waiters of changed tables:                     one query per role
//!      sync_changed_for(low, cur, changed, their distinct claims)
//!      = which claims would read a change (row filters, move-outs, deletes included)
//!    wake those waiters; the others now wait from cur
//! ```
//!
//! So the hub sees a few small queries per interval however many clients
//! wait, never one per waiting client per commit, and a commit of one
//! tenant wakes only that tenant's clients. A woken client reads its own
//! changes, as its own role. A wake is a hint: a spurious one costs that
//! client one read, so when `sync_changed_for` cannot run the watcher
//! wakes every waiter of a changed table instead.

use super::db::Hub;
use super::error::ApiError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

struct Waiter {
    id: u64,
    /// Who waits: the role it reads as and its claims (JSON text).
    role: String,
    claims: String,
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
    /// sync_changed_for is missing or not granted: waiters wake by table
    /// alone.
    by_table: AtomicBool,
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

/// The waiters of one role that a window may concern: their distinct
/// claims, and the tables they wait on.
#[derive(Default)]
struct RoleAsk {
    claims: Vec<String>,
    tables: BTreeSet<u32>,
}

impl Watcher {
    pub fn waiting(&self) -> usize {
        self.waiters.lock().expect("watcher lock").1.len()
    }

    pub fn register(&self, role: &str, claims: &str, tables: Vec<u32>, checked: i64) -> Wait<'_> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.waiters.lock().expect("watcher lock");
        w.0 += 1;
        let id = w.0;
        w.1.push(Waiter {
            id,
            role: role.to_string(),
            claims: claims.to_string(),
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

    /// Per role, what to ask about the waiters of the changed tables.
    fn asks(&self, changed: &[u32], cur: i64) -> BTreeMap<String, RoleAsk> {
        let w = self.waiters.lock().expect("watcher lock");
        let mut asks: BTreeMap<String, RoleAsk> = BTreeMap::new();
        for x in w.1.iter().filter(|x| x.wake.is_some() && x.checked < cur) {
            let hit: Vec<u32> = x
                .tables
                .iter()
                .copied()
                .filter(|t| changed.contains(t))
                .collect();
            if hit.is_empty() {
                continue;
            }
            let a = asks.entry(x.role.clone()).or_default();
            if !a.claims.contains(&x.claims) {
                a.claims.push(x.claims.clone());
            }
            a.tables.extend(hit);
        }
        asks
    }

    /// Wakes the waiters `woken` says would read a change; the others of
    /// the window have now checked up to `cur`. `woken(role, claims,
    /// table)`.
    fn wake(&self, cur: i64, woken: impl Fn(&str, &str, u32) -> bool) -> usize {
        let mut w = self.waiters.lock().expect("watcher lock");
        let mut n = 0;
        for x in w.1.iter_mut().filter(|x| x.checked < cur) {
            if x.tables.iter().any(|t| woken(&x.role, &x.claims, *t)) {
                if let Some(tx) = x.wake.take() {
                    let _ = tx.send(());
                    n += 1;
                }
            } else {
                x.checked = cur;
            }
        }
        n
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

    async fn once(&self, hub: &Hub, low: i64) -> Result<(), ApiError> {
        let c = hub.own().await?;
        let cur: i64 = c
            .query_one("SELECT sync_current_version()", &[])
            .await?
            .get(0);
        if cur <= low {
            return Ok(());
        }
        if self.blind.load(Ordering::Relaxed) {
            self.wake(cur, |_, _, _| true);
            return Ok(());
        }
        let st = c
            .prepare_cached("SELECT t::oid FROM sync_tables_changed($1, $2) AS t")
            .await?;
        let changed: Vec<u32> = match c.query(&st, &[&low, &cur]).await {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) if e.code().map(|c| c.code()) == Some("42501") => {
                tracing::warn!(
                    "the gateway's role may not run sync_tables_changed, so every long poll wakes at every commit; run SELECT sync_gateway_grant('<gateway role>') on the hub"
                );
                self.blind.store(true, Ordering::Relaxed);
                self.wake(cur, |_, _, _| true);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if changed.is_empty() || self.by_table.load(Ordering::Relaxed) {
            self.wake(cur, |_, _, t| changed.contains(&t));
            return Ok(());
        }
        let mut hits: BTreeSet<(String, String, u32)> = BTreeSet::new();
        for (role, ask) in self.asks(&changed, cur) {
            match changed_for(&c, &role, &ask, low, cur).await {
                Ok(found) => hits.extend(found.into_iter().map(|(cl, t)| (role.clone(), cl, t))),
                Err(e) => {
                    // Missing or not granted: for good (said once); anything
                    // else: for this window.
                    if matches!(e.sqlstate.as_str(), "42883" | "42501") {
                        tracing::warn!(sqlstate = %e.sqlstate, message = %e.message,
                            "sync_changed_for cannot run: long polls now wake for any change of their tables");
                        self.by_table.store(true, Ordering::Relaxed);
                    }
                    self.wake(cur, |_, _, t| changed.contains(&t));
                    return Ok(());
                }
            }
        }
        self.wake(cur, |role, claims, t| {
            hits.contains(&(role.to_string(), claims.to_string(), t))
        });
        Ok(())
    }
}

/// As `role`, which (claims, table) pairs of `ask` would read a change in
/// `[low, cur)`.
async fn changed_for(
    c: &deadpool_postgres::Object,
    role: &str,
    ask: &RoleAsk,
    low: i64,
    cur: i64,
) -> Result<Vec<(String, u32)>, ApiError> {
    let tables: Vec<u32> = ask.tables.iter().copied().collect();
    let st = c
        .prepare_cached(
            "SELECT f.claims_index, f.tbl::oid FROM sync_changed_for($1, $2, $3::oid[]::regclass[], $4::text[]::jsonb[]) AS f",
        )
        .await?;
    c.batch_execute("BEGIN").await?;
    let r = async {
        c.query("SELECT set_config('role', $1, true)", &[&role])
            .await?;
        c.query(&st, &[&low, &cur, &tables, &ask.claims]).await
    }
    .await;
    let end = if r.is_ok() { "COMMIT" } else { "ROLLBACK" };
    c.batch_execute(end).await?;
    Ok(r?
        .iter()
        .filter_map(|row| {
            let i: i32 = row.get(0);
            let t: u32 = row.get(1);
            ask.claims.get((i - 1) as usize).map(|cl| (cl.clone(), t))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_waiters_a_change_concerns_wake_and_the_others_move_on() {
        let w = Watcher::default();
        let mut a = w.register("device", "{\"tenant\":\"a\"}", vec![1, 2], 10);
        let mut b = w.register("device", "{\"tenant\":\"b\"}", vec![2], 10);
        let mut c = w.register("clerk", "{}", vec![3], 10);
        let mut late = w.register("device", "{\"tenant\":\"b\"}", vec![2], 20);
        assert_eq!(w.lowest(), Some(10));
        let asks = w.asks(&[2], 15);
        assert_eq!(asks.len(), 1, "only device waits on table 2 below 15");
        assert_eq!(asks["device"].claims.len(), 2);
        // Table 2 changed, for tenant a only.
        assert_eq!(w.wake(15, |_, cl, t| cl.contains("\"a\"") && t == 2), 1);
        assert!(a.rx.try_recv().is_ok());
        assert!(b.rx.try_recv().is_err() && c.rx.try_recv().is_err());
        // b and c have now checked up to 15; late (at 20) was not looked at.
        assert_eq!(w.lowest(), Some(15));
        assert_eq!(w.wake(25, |_, _, _| true), 3);
        assert!(b.rx.try_recv().is_ok() && c.rx.try_recv().is_ok() && late.rx.try_recv().is_ok());
        drop((a, b, c, late));
        assert_eq!(w.waiting(), 0);
    }
}
