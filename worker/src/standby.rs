//! One active worker per slot; the others stand by and take over.
//!
//! ```text
//!  worker A ── lease connection: pg_try_advisory_lock(TRIBUTARY, hashtext(slot)) = true  ──> active: streams
//!  worker B ── the same, false ─> standby: tries again every second
//!  A dies (kill -9: its connection closes) ─> the lock is free
//!  A hangs or is cut off: its lease is not checked (SELECT 1, every
//!  second) for 5 s ─> B ends A's lease session ─> the lock is free
//!  ─> B takes it, ends A's walsender if the slot still has one, and
//!     streams from the slot
//!  A's lease check fails or takes over 3 s ─> A stops streaming at once
//!  and stands by again
//! ```
//!
//! The lease is taken and checked on a thread of its own ([`hold`]), so
//! that a busy stream never looks like a hung worker.
//!
//! The lock lives in the hub, as the slot does, so every worker that can
//! stream can also see who holds it; no other coordinator is needed. Each
//! destination's own exactly-once rules (its stored position, or the
//! stream's last message) make the takeover lose and repeat nothing: the
//! new active starts from the slot's confirmed position and skips what a
//! destination already holds.

use crate::error::{Action, Context, Error};
use crate::metrics::Metrics;
use crate::source::ConnectOptions;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// The advisory lock's first key: "trib".
const LOCK_CLASS: i32 = 0x7472_6962;
/// How often a standby tries the lock, and the active checks its lease.
const EVERY: Duration = Duration::from_secs(1);
/// A lease check slower than this counts as a lost lease.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// A holder whose lease was not checked for this long is taken as gone
/// (hung, or cut off from the hub): a standby ends its session. Longer
/// than CHECK_TIMEOUT + EVERY, so that a live active that lost the hub has
/// stopped streaming first.
const STALE: Duration = Duration::from_secs(5);

/// The active worker's hold on the slot: the session that holds the lock.
pub struct Lease {
    client: Client,
}

/// The lease, kept on a thread of its own with its own runtime: the
/// worker's stream runs on one thread, and a long stretch of work there (a
/// big transaction's replay) must not delay the lease's checks, or a
/// standby would take a busy worker for a hung one. Only a hung process or
/// a lost hub stops the checks. Dropped, it releases the lock.
pub struct Keeper {
    lost: tokio::sync::oneshot::Receiver<String>,
    stop: CancellationToken,
}

impl Keeper {
    /// Resolves when the lease can no longer be trusted (see [`Lease::lost`]).
    pub async fn lost(&mut self) -> String {
        (&mut self.lost)
            .await
            .unwrap_or_else(|_| "the lease's thread ended".into())
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// [`acquire`] on the lease's own thread, which then keeps the lease
/// checked; None when shutdown fires first.
pub async fn hold(
    opts: ConnectOptions,
    slot: String,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Option<Keeper>, Error> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<bool, Error>>();
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("tributary-lease".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let lease = match acquire(&opts, &slot, &metrics, &shutdown).await {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        let _ = ready_tx.send(Ok(false));
                        return;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(true));
                tokio::select! {
                    why = lease.lost() => { let _ = lost_tx.send(why); }
                    _ = stopped.cancelled() => {}
                }
            });
        })
        .map_err(|e| Error::bug(format!("starting the lease's thread: {e}")))?;
    match ready_rx.await {
        Ok(Ok(true)) => Ok(Some(Keeper {
            lost: lost_rx,
            stop,
        })),
        Ok(Ok(false)) => Ok(None),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::bug("the lease's thread ended before it answered")),
    }
}

/// Waits until this worker holds the slot's lock; None when shutdown fires
/// first. Sets `metrics.active` and logs the role as it changes.
pub async fn acquire(
    opts: &ConnectOptions,
    slot: &str,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Option<Lease>, Error> {
    let mut said = false;
    let mut warned: Option<std::time::Instant> = None;
    loop {
        match try_acquire(opts, slot).await {
            Ok(Ok(lease)) => {
                metrics.active.store(true, Relaxed);
                tracing::info!(slot = %slot, "active: this worker holds the slot's lock and streams");
                lease.end_old_walsender(slot).await;
                return Ok(Some(lease));
            }
            Ok(Err(holder)) => {
                metrics.active.store(false, Relaxed);
                metrics.standby.store(true, Relaxed);
                if !said {
                    tracing::info!(slot = %slot, holder = %holder, "standby: another worker holds the slot's lock; taking over when it goes");
                    said = true;
                }
            }
            // What a person must fix (a login, TLS) stops the worker, as
            // a session would.
            Err(e) if e.action() == Action::Stop => return Err(e),
            // The hub unreachable: a standby cannot tell who is active;
            // it keeps trying, as a session retries.
            Err(e) => {
                metrics.active.store(false, Relaxed);
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                    tracing::warn!(error = %e, "cannot reach the hub to take the slot's lock; trying again every second");
                    warned = Some(std::time::Instant::now());
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// One attempt: the lease, or who holds the lock.
async fn try_acquire(opts: &ConnectOptions, slot: &str) -> Result<Result<Lease, String>, Error> {
    let client = crate::hub::connect(opts, "tributary-worker lease").await?;
    // The server notices a lease holder that vanished without closing its
    // connection (a lost network) in about 3 + 3 × 1 s, not the default
    // two hours: then the lock is free for a standby.
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 3; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3",
        )
        .await
        .context("setting the lease connection's keepalives")?;
    let got: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &slot],
        )
        .await
        .context("trying the slot's lock")?
        .get(0);
    if got {
        return Ok(Ok(Lease { client }));
    }
    // Who holds it, and how long ago its lease was last checked: the
    // active checks every second, so a holder silent for STALE is hung or
    // cut off (its kernel may still answer keepalives): end its session.
    let holder = client
        .query_opt(
            "SELECT a.pid, format('pid %s, %s, %s', a.pid, coalesce(a.client_addr::text, 'local'), a.application_name),
                    a.state = 'idle' AND now() - a.state_change > $3::float8 * interval '1 second'
               FROM pg_locks l JOIN pg_stat_activity a USING (pid)
              WHERE l.locktype = 'advisory' AND l.granted
                AND l.classid = $1::int::oid AND l.objid = hashtext($2)::oid AND l.objsubid = 2",
            &[&LOCK_CLASS, &slot, &STALE.as_secs_f64()],
        )
        .await
        .context("looking up the lock's holder")?;
    let Some(h) = holder else {
        return Ok(Err("unknown (it was just released)".into()));
    };
    let (pid, who, stale): (i32, String, bool) = (h.get(0), h.get(1), h.get(2));
    if stale {
        tracing::warn!(holder = %who, "the active worker has not checked its lease for {STALE:?}: ending its sessions so that this one takes over");
        // Its lease, and every other session it has (its walsender, a
        // destination transaction it left open, holding locks the new
        // active would wait on): they carry its tag.
        client
            .execute(
                r"SELECT pg_terminate_backend(b.pid)
                   FROM pg_stat_activity a, pg_stat_activity b
                  WHERE a.pid = $1 AND b.pid <> pg_backend_pid()
                    AND (b.pid = a.pid
                         OR b.application_name
                            LIKE '%[' || substring(a.application_name FROM '\[([0-9a-f.]+)\]$') || ']')",
                &[&pid],
            )
            .await
            .context("ending a stale lease")?;
    }
    Ok(Err(who))
}

impl Lease {
    /// The slot may still have the previous active's walsender (its
    /// network lost, its server not yet aware): end it, or the stream
    /// cannot start. The same role may end its own backends.
    async fn end_old_walsender(&self, slot: &str) {
        let r = self
            .client
            .query(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                  WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&slot],
            )
            .await;
        match r {
            Ok(rows) if !rows.is_empty() => {
                tracing::warn!(slot = %slot, "ended the previous active worker's walsender")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(slot = %slot, error = %e, "could not end the slot's walsender; the stream retries until it is gone")
            }
        }
    }

    /// Resolves when the lease can no longer be trusted: its connection
    /// failed, or a check took longer than [`CHECK_TIMEOUT`]. The lock may
    /// then be another worker's: stop streaming.
    pub async fn lost(&self) -> String {
        loop {
            tokio::time::sleep(EVERY).await;
            match tokio::time::timeout(CHECK_TIMEOUT, self.client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("the lease connection failed: {e}"),
                Err(_) => {
                    return format!("the lease connection did not answer in {CHECK_TIMEOUT:?}")
                }
            }
        }
    }
}
