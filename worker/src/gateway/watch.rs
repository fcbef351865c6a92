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
//!
//! A tick judges only the waiters that were there when it took its window
//! (their `checked` is at or above its start); one that came later waits
//! for the next tick. So a waiter's `checked` is exact: it may read no
//! change before it, and a poll that times out answers with it as its
//! version, without a read.
//!
//! A poll that comes back with the version it was just given (the usual
//! re-poll) need not read at all when no later version was current in the
//! last moments (the watcher's or a read's): it waits from its `since`
//! with the role and tables its previous read found (kept [`SEEN_FOR`]).
//! Only wakes depend on them: every read is still a transaction as the
//! peer's role.

use super::db::Hub;
use super::error::ApiError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
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

/// How long a peer's role and tables, as a read found them, serve its
/// next long polls without a read (see the module's notes).
pub const SEEN_FOR: Duration = Duration::from_secs(5);

/// What a long poll asks for: the peer and the tables it named (None: all
/// it may read). Its role and tables depend on nothing else; its claims
/// are the request's own.
pub type PollKey = (String, Option<Vec<String>>);

/// What a read of a poll key found: the role and table oids, and when.
type Found = (String, Vec<u32>, Instant);

#[derive(Default)]
pub struct Watcher {
    waiters: Mutex<(u64, Vec<Waiter>)>,
    /// The last version the watcher read, and when.
    last: Mutex<Option<(i64, Instant)>>,
    /// Per poll key: the role and table oids its last read found, and when.
    seen: Mutex<HashMap<PollKey, Found>>,
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

    /// The version up to which the watcher found nothing this waiter may
    /// read.
    pub fn checked(&self) -> i64 {
        let w = self.watcher.waiters.lock().expect("watcher lock");
        w.1.iter()
            .find(|x| x.id == self.id)
            .map(|x| x.checked)
            .expect("a wait is listed until dropped")
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

    /// A version current now (the watcher's or a read's).
    pub fn note_version(&self, v: i64) {
        let mut l = self.last.lock().expect("watcher lock");
        let v = l.map_or(v, |(old, _)| old.max(v));
        *l = Some((v, Instant::now()));
    }

    /// The latest version current in the last `within`, if any.
    pub fn recent_version(&self, within: Duration) -> Option<i64> {
        let l = self.last.lock().expect("watcher lock");
        l.filter(|(_, at)| at.elapsed() <= within).map(|(v, _)| v)
    }

    /// The role and tables the last read of `key` found, if recent.
    pub fn seen(&self, key: &PollKey) -> Option<(String, Vec<u32>)> {
        let m = self.seen.lock().expect("watcher lock");
        m.get(key)
            .filter(|(_, _, at)| at.elapsed() <= SEEN_FOR)
            .map(|(r, t, _)| (r.clone(), t.clone()))
    }

    /// Keeps what a read of `key` found.
    pub fn saw(&self, key: PollKey, role: &str, tables: &[u32]) {
        let mut m = self.seen.lock().expect("watcher lock");
        if m.len() > 100_000 {
            m.retain(|_, (_, _, at)| at.elapsed() <= SEEN_FOR);
        }
        m.insert(key, (role.to_string(), tables.to_vec(), Instant::now()));
    }

    /// A tick's window: the lowest version a waiter has checked up to, and
    /// the waiters it judges (those waiting now), if anyone waits.
    fn window(&self) -> Option<(i64, BTreeSet<u64>)> {
        let w = self.waiters.lock().expect("watcher lock");
        let live = w.1.iter().filter(|x| x.wake.is_some());
        let low = live.clone().map(|x| x.checked).min()?;
        Some((low, live.map(|x| x.id).collect()))
    }

    /// Per role, what to ask about the waiters `ids` of the changed tables.
    fn asks(&self, ids: &BTreeSet<u64>, changed: &[u32], cur: i64) -> BTreeMap<String, RoleAsk> {
        let w = self.waiters.lock().expect("watcher lock");
        let mut asks: BTreeMap<String, RoleAsk> = BTreeMap::new();
        for x in
            w.1.iter()
                .filter(|x| ids.contains(&x.id) && x.wake.is_some() && x.checked < cur)
        {
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

    /// Wakes the waiters of `ids` that `woken` says would read a change;
    /// the others have now checked up to `cur`. `woken(role, claims,
    /// table)`.
    fn wake(
        &self,
        ids: &BTreeSet<u64>,
        cur: i64,
        woken: impl Fn(&str, &str, u32) -> bool,
    ) -> usize {
        let mut w = self.waiters.lock().expect("watcher lock");
        let mut n = 0;
        for x in
            w.1.iter_mut()
                .filter(|x| ids.contains(&x.id) && x.checked < cur)
        {
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
            let Some((low, ids)) = self.window() else {
                continue;
            };
            if let Err(e) = self.once(hub, low, &ids).await {
                tracing::warn!(sqlstate = %e.sqlstate, message = %e.message, "the long-poll watcher cannot read the hub; retrying");
            }
        }
    }

    async fn once(&self, hub: &Hub, low: i64, ids: &BTreeSet<u64>) -> Result<(), ApiError> {
        let c = hub.own().await?;
        let cur: i64 = c
            .query_one("SELECT sync_current_version()", &[])
            .await?
            .get(0);
        self.note_version(cur);
        if cur <= low {
            return Ok(());
        }
        if self.blind.load(Ordering::Relaxed) {
            self.wake(ids, cur, |_, _, _| true);
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
                self.wake(ids, cur, |_, _, _| true);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if changed.is_empty() || self.by_table.load(Ordering::Relaxed) {
            self.wake(ids, cur, |_, _, t| changed.contains(&t));
            return Ok(());
        }
        let mut hits: BTreeSet<(String, String, u32)> = BTreeSet::new();
        // Roles whose question failed: their waiters wake by table.
        let mut by_table: BTreeSet<String> = BTreeSet::new();
        for (role, ask) in self.asks(ids, &changed, cur) {
            match changed_for(&c, &role, &ask, low, cur).await {
                Ok(found) => hits.extend(found.into_iter().map(|(cl, t)| (role.clone(), cl, t))),
                Err(e) => {
                    // Missing: for good (said once). Anything else (a role
                    // that lost a privilege while its clients waited, a
                    // timeout): this role, this window.
                    if e.sqlstate == "42883" {
                        tracing::warn!(sqlstate = %e.sqlstate, message = %e.message,
                            "sync_changed_for cannot run: long polls now wake for any change of their tables");
                        self.by_table.store(true, Ordering::Relaxed);
                    } else {
                        tracing::debug!(role = %role, sqlstate = %e.sqlstate, message = %e.message,
                            "sync_changed_for failed for a role: its long polls wake for any change of their tables");
                    }
                    by_table.insert(role);
                }
            }
        }
        self.wake(ids, cur, |role, claims, t| {
            (by_table.contains(role) && changed.contains(&t))
                || hits.contains(&(role.to_string(), claims.to_string(), t))
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
        let (low, ids) = w.window().unwrap();
        assert_eq!((low, ids.len()), (10, 4));
        // One that comes after the window was taken is not judged by it,
        // though its version is below the tick's.
        let mut later = w.register("device", "{\"tenant\":\"a\"}", vec![2], 5);
        let asks = w.asks(&ids, &[2], 15);
        assert_eq!(asks.len(), 1, "only device waits on table 2 below 15");
        assert_eq!(asks["device"].claims.len(), 2);
        // Table 2 changed, for tenant a only.
        assert_eq!(
            w.wake(&ids, 15, |_, cl, t| cl.contains("\"a\"") && t == 2),
            1
        );
        assert!(a.rx.try_recv().is_ok());
        assert!(b.rx.try_recv().is_err() && c.rx.try_recv().is_err());
        assert!(later.rx.try_recv().is_err());
        // b and c have now checked up to 15; late (at 20) was not looked
        // at, nor was later (still at 5).
        assert_eq!(
            (b.checked(), c.checked(), late.checked(), later.checked()),
            (15, 15, 20, 5)
        );
        let (low, ids) = w.window().unwrap();
        assert_eq!((low, ids.len()), (5, 4));
        assert_eq!(w.wake(&ids, 25, |_, _, _| true), 4);
        assert!(b.rx.try_recv().is_ok() && c.rx.try_recv().is_ok() && late.rx.try_recv().is_ok());
        assert!(later.rx.try_recv().is_ok());
        drop((a, b, c, late, later));
        assert_eq!(w.waiting(), 0);
    }
}
