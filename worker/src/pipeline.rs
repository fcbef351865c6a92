//! The worker's main loop: one replication stream in, every destination
//! out, progress back to the slot.
//!
//! ```text
//!   slot ──Stream──> Assembler ──Items──> Router ──ToSink──> [sink task] x N
//!    ^                                                          │ durable end LSN
//!    └──── standby status: flush = min(durable) ────────────────┘
//! ```
//!
//! - **Confirming.** The slot is confirmed up to the smallest position any
//!   destination made durable (never lower than where the slot already
//!   is). When every destination holds everything received and no
//!   transaction is half-received, a keepalive's WAL end is confirmed too,
//!   so an idle worker does not hold WAL back. Before the slot moves, the
//!   hub records each SQLite peer file's committed position
//!   ([`crate::progress`]): a file found below its record when it is
//!   opened went back (restored from an older backup) and is copied anew.
//! - **Failures.** Any error ends the session: sinks roll back what they
//!   had not committed, the stream is dropped. A transient error starts a
//!   new session after a backoff; it resumes at the slot's confirmed
//!   position, and each destination skips what its stored progress covers.
//!   A definite error stops the worker with its hint. Except: a SQLite
//!   peer that is locked or missing is *detached* (it gets nothing, its
//!   position holds the slot, a probe retries it); the others go on, and
//!   when it is back the session restarts so that it catches up.
//! - **Shutdown.** Once `shutdown` fires, the transaction being received
//!   is finished and delivered, the sinks commit, a final status update is
//!   sent, and `run` returns `Ok`.

use crate::config::{Config, Kind};
use crate::error::{Action, Cause, Context, Error};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::progress::{FilePositions, Watched};
use crate::router::{Route, Router};
use crate::sink::nats::NatsSink;
use crate::sink::queue::QueueSink;
use crate::sink::sqlite::SqliteSink;
use crate::sink::{self, Sink, ToSink};
use crate::source::{ConnectOptions, Connection, Event, Stream};
use crate::transaction::{Assembler, Change, Item};
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Changes handed to a sink per channel message.
const CHANGES_PER_MESSAGE: usize = 1024;
/// Channel depth per sink: bounds what is in flight (messages, not rows).
const CHANNEL_DEPTH: usize = 64;
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Runs until `shutdown` fires (then returns `Ok`) or a definite error.
/// Transient errors are retried with backoff, forever.
pub async fn run(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let opts = ConnectOptions::from_url(&config.source.url, config.source.password.clone())?;
    loop {
        // Only the worker that holds the slot's lock streams.
        let Some(mut lease) = crate::standby::hold(
            opts.clone(),
            config.source.slot.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
        .await?
        else {
            return Ok(());
        };
        tokio::select! {
            r = sessions(&config, &metrics, &shutdown) => return r,
            why = lease.lost() => {
                // Another worker may hold the lock by now: stop at once
                // (whatever is not committed rolls back) and stand by.
                metrics.connected.store(false, Relaxed);
                metrics.active.store(false, Relaxed);
                tracing::warn!(reason = %why, "lost the slot's lock: stopping the stream and standing by");
            }
        }
    }
}

/// Sessions, one after another, until shutdown or an error the operator
/// must fix; a transient error restarts the session after a backoff.
async fn sessions(
    config: &Config,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        match session(config, metrics, shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) if e.action() == Action::Stop => {
                metrics.connected.store(false, Relaxed);
                tracing::error!(error = %e, "stopping: this needs the operator");
                return Err(e);
            }
            Err(e) => {
                metrics.connected.store(false, Relaxed);
                metrics.errors.fetch_add(1, Relaxed);
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(250);
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "transient error; restarting the stream");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                metrics.restarts.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Checks the slot and the publication; creates the slot on the first run.
/// Returns the slot's confirmed position.
async fn prepare_slot(
    config: &Config,
    opts: &ConnectOptions,
    client: &tokio_postgres::Client,
) -> Result<Lsn, Error> {
    let slot = &config.source.slot;
    if client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&config.source.publication],
        )
        .await
        .context("checking the publication")?
        .is_none()
    {
        return Err(Error::Definite {
            message: format!("publication {:?} does not exist", config.source.publication),
            hint: "track a table (SELECT sync_track('t') creates \"tributary\"), or fix source.publication".into(),
            cause: Cause::PublicationMissing,
        });
    }
    let row = client
        .query_opt(
            "SELECT coalesce(wal_status, ''), plugin, database = current_database(), confirmed_flush_lsn::text
               FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .context("looking up the slot")?;
    if let Some(r) = row {
        let (status, plugin, here): (String, Option<String>, Option<bool>) =
            (r.get(0), r.get(1), r.get(2));
        if plugin.as_deref() != Some("pgoutput") || here != Some(true) {
            return Err(Error::Definite {
                message: format!(
                    "slot {slot:?} exists but is not a pgoutput slot of this database"
                ),
                hint: "choose another source.slot name".into(),
                cause: Cause::Config,
            });
        }
        if status == "lost" {
            return Err(Error::Definite {
                message: format!("slot {slot:?} was invalidated: the WAL it needed is gone"),
                hint: "changes were lost for every destination: drop the slot, DELETE FROM tributary.worker_progress WHERE slot = '<slot>', and resync the destinations in full".into(),
                cause: Cause::SlotLost,
            });
        }
        let confirmed: Option<String> = r.get(3);
        return Ok(confirmed.and_then(|s| s.parse().ok()).unwrap_or_default());
    }
    // No slot. A first run creates it; a slot that vanished after the
    // destinations recorded progress means changes were lost.
    let known: i64 = client
        .query_one(
            "SELECT count(*) FROM tributary.worker_progress WHERE slot = $1",
            &[slot],
        )
        .await
        .context("reading the destinations' progress")?
        .get(0);
    if known > 0 {
        return Err(Error::Definite {
            message: format!(
                "replication slot {slot:?} does not exist, but {known} destination(s) recorded progress on it"
            ),
            hint: "the slot was dropped and changes since may be lost; the worker never recreates it by itself. To start over: DELETE FROM tributary.worker_progress WHERE slot = '<slot>', then run again (and resync the destinations)".into(),
            cause: Cause::SlotLost,
        });
    }
    let mut conn = Connection::connect(opts).await?;
    let info = conn.create_slot(slot, false).await?;
    tracing::info!(slot = %slot, at = %info.consistent_point, "created the replication slot (first run)");
    Ok(info.consistent_point)
}

/// Aborts a helper task when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Outlet {
    /// None while the destination is detached (a SQLite peer that is
    /// locked or missing): it gets nothing, and its position holds the slot.
    tx: Option<mpsc::Sender<ToSink>>,
    buffer: Vec<Arc<Change>>,
}

/// How a supervised task ended: its destination's index and result.
type TaskEnd = (usize, Result<(), Error>);

/// One session's destinations: their channels, and their tasks,
/// supervised apart. A sink task ends only with an error (or when its
/// channel closes at the end of the session); a pull task ends only when
/// asked to, or with an error the policy stops for.
struct Destinations {
    outlets: Vec<Outlet>,
    routes: Vec<Route>,
    sinks: JoinSet<TaskEnd>,
    pulls: JoinSet<TaskEnd>,
    /// Detached peers being waited for: when one is back, the session
    /// restarts so that it catches up from the slot.
    probes: JoinSet<()>,
    /// New peers, to be copied before the stream starts.
    needs_copy: Vec<usize>,
    /// The SQLite peers, with the position the hub recorded for each.
    files: Vec<Watched>,
    /// Ends the pulls with the session.
    stop_pull: CancellationToken,
}

/// How long a peer detached for `e` waits before it is tried again: a file
/// that cannot be opened or written now is probed from 0.5 s on; one that
/// refused a write it can take no better on retry (an app's constraint the
/// hub's rows break, a damaged file) waits 5 s, doubling with each failure
/// in a row up to 5 minutes, so that retrying it costs the others little.
fn detach_wait(e: &Error, m: &crate::metrics::DestinationMetrics) -> Duration {
    if e.cause() != Cause::PeerBroken {
        return Duration::from_millis(500);
    }
    let streak = m.broken_streak.fetch_add(1, Relaxed).min(6);
    (Duration::from_secs(5) * 2u32.pow(streak)).min(Duration::from_secs(300))
}

/// Whether a peer that holds the copies `held` (hub table → tracking
/// epoch) lacks one: a table it takes that it has no copy of (tracked
/// after its copy), or whose copy is of an older tracking epoch (untracked
/// and tracked again). The stream alone cannot bring it up to date, so it
/// is copied anew.
async fn lacks_a_copy(
    admin: &tokio_postgres::Client,
    config: &Config,
    dest: &crate::config::Destination,
    held: std::collections::HashMap<String, Option<i64>>,
) -> Result<bool, Error> {
    let held = crate::snapshot::follow_renames(admin, held).await?;
    let wanted = crate::snapshot::wanted_tables(admin, &config.source.publication, dest).await?;
    match wanted.iter().find(|(t, e)| held.get(t) != Some(e)) {
        Some((t, _)) => {
            tracing::warn!(destination = %dest.name, table = %t, "the peer's copy of this table is missing or of an older epoch: copying it anew");
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Waits `first`, then until a detached destination takes writes again: a
/// peer file can be opened and written, a NATS stream answers and has room.
async fn probe(dest: crate::config::Destination, first: Duration) {
    let mut wait = first;
    loop {
        tokio::time::sleep(wait).await;
        let ok = match dest.kind {
            Kind::Nats => sink::nats::reachable(&dest).await,
            // Never detached: a queue's trouble is the hub's.
            Kind::Queue => false,
            Kind::Mssql => sink::mssql::reachable(&dest).await,
            Kind::Sqlite => {
                let p = sink::sqlite::path_of(&dest);
                tokio::task::spawn_blocking(move || {
                    tributary_sqlite::PeerFile::open(&p)
                        .and_then(|f| f.check_writable())
                        .is_ok()
                })
                .await
                .unwrap_or(false)
            }
        };
        if ok {
            return;
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

impl Destinations {
    /// Opens every destination of the configuration, each with its task.
    async fn open(
        config: &Config,
        metrics: &Metrics,
        opts: &ConnectOptions,
        admin: &tokio_postgres::Client,
        hub: &str,
    ) -> Result<Destinations, Error> {
        let mut d = Destinations {
            outlets: Vec::new(),
            routes: Vec::new(),
            sinks: JoinSet::new(),
            pulls: JoinSet::new(),
            probes: JoinSet::new(),
            needs_copy: Vec::new(),
            files: Vec::new(),
            stop_pull: CancellationToken::new(),
        };
        for (i, dest) in config.destinations.iter().enumerate() {
            let m = metrics.destinations[i].clone();
            let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
            let attached = match dest.kind {
                Kind::Queue => {
                    let sink =
                        QueueSink::open(opts, &config.source.slot, &dest.name, hub, m.clone())
                            .await?;
                    tracing::info!(destination = %dest.name, progress = %sink.progress(), "queue destination ready");
                    d.sinks
                        .spawn(async move { (i, sink::drive(sink, rx, m).await) });
                    true
                }
                Kind::Sqlite => d.open_sqlite(config, i, (opts, admin, hub), m, rx).await?,
                Kind::Nats => d.open_nats(dest, i, hub, m, rx).await?,
                Kind::Mssql => d.open_mssql(config, i, (opts, admin, hub), m, rx).await?,
            };
            d.outlets.push(Outlet {
                tx: attached.then_some(tx),
                buffer: Vec::new(),
            });
            d.routes.push(Route {
                name: dest.name.clone(),
                tables: dest.tables.clone(),
            });
        }
        Ok(d)
    }

    /// A destination that failed to open with `e`: detached and probed
    /// (Ok(false): not attached) when the policy says so, else the error.
    fn unavailable_at_open(
        &mut self,
        dest: &crate::config::Destination,
        e: Error,
        m: &crate::metrics::DestinationMetrics,
    ) -> Result<bool, Error> {
        if e.action() != Action::Detach {
            return Err(e);
        }
        tracing::warn!(destination = %dest.name, error = %e, hint = e.cause().hint(), "destination unavailable: detached; the other destinations go on");
        m.errors.fetch_add(1, Relaxed);
        m.detached.store(true, Relaxed);
        self.probes.spawn(probe(dest.clone(), detach_wait(&e, m)));
        Ok(false)
    }

    /// A NATS destination: its sink, unless NATS cannot take messages now
    /// (then it starts detached, and is probed). Returns whether it is
    /// attached.
    async fn open_nats(
        &mut self,
        dest: &crate::config::Destination,
        i: usize,
        hub: &str,
        m: Arc<crate::metrics::DestinationMetrics>,
        rx: mpsc::Receiver<ToSink>,
    ) -> Result<bool, Error> {
        match NatsSink::open(dest, hub).await {
            Ok(sink) => {
                tracing::info!(destination = %dest.name, progress = %sink.progress(), "nats destination ready");
                m.detached.store(false, Relaxed);
                self.sinks
                    .spawn(async move { (i, sink::drive(sink, rx, m).await) });
                Ok(true)
            }
            Err(e) => self.unavailable_at_open(dest, e, &m),
        }
    }

    /// A SQL Server peer: its pull, and its sink unless the server cannot
    /// be reached now (then it starts detached). Returns whether it is
    /// attached. A peer that is not set up gets the setup script when the
    /// worker's login may; otherwise the worker stops with a hint.
    async fn open_mssql(
        &mut self,
        config: &Config,
        i: usize,
        (opts, admin, hub): (&ConnectOptions, &tokio_postgres::Client, &str),
        m: Arc<crate::metrics::DestinationMetrics>,
        rx: mpsc::Receiver<ToSink>,
    ) -> Result<bool, Error> {
        let dest = &config.destinations[i];
        let schema = dest.schema.clone().unwrap_or_else(|| "dbo".into());
        let tables = crate::mssql::hub_tables(admin, dest).await?;
        let script = crate::mssql::setup_of(dest, &tables)?;
        let names: Vec<String> = tables.iter().map(|t| t.peer_name()).collect();
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let pull = crate::mssql::pull::Pull {
            dest: dest.clone(),
            slot: config.source.slot.clone(),
            tables: crate::mssql::pull::peer_tables(&schema, &tables),
            lock: lock.clone(),
            metrics: m.clone(),
        };
        let sink = sink::mssql::MssqlSink::open(
            dest,
            (&config.source.slot, hub),
            &(script, names),
            opts.clone(),
            lock,
            m.clone(),
        )
        .await;
        let mut sink = match sink {
            Ok(sink) => sink,
            Err(e) => return self.unavailable_at_open(dest, e, &m),
        };
        // Behind the hub's record: restored from an older backup.
        let recorded = crate::progress::load(admin, &config.source.slot, &dest.name).await?;
        sink.check_recorded(recorded).await?;
        if sink.progress() != Lsn(0)
            && lacks_a_copy(admin, config, dest, sink.copied_tables().await?).await?
        {
            sink.forget_position().await?;
        }
        self.files.push(Watched {
            index: i,
            name: dest.name.clone(),
            recorded: recorded.unwrap_or_default(),
        });
        let pull = crate::mssql::pull::supervise(opts.clone(), pull, self.stop_pull.clone());
        self.pulls.spawn(async move { (i, pull.await) });
        m.detached.store(false, Relaxed);
        if sink.progress() == Lsn(0) {
            self.needs_copy.push(i);
        }
        tracing::info!(destination = %dest.name, progress = %sink.progress(), "mssql destination ready");
        self.sinks
            .spawn(async move { (i, sink::drive(sink, rx, m).await) });
        Ok(true)
    }

    /// A SQLite peer: its pull, and its sink unless the file is
    /// unavailable (then it starts detached). Returns whether it is attached.
    async fn open_sqlite(
        &mut self,
        config: &Config,
        i: usize,
        (opts, admin, hub): (&ConnectOptions, &tokio_postgres::Client, &str),
        m: Arc<crate::metrics::DestinationMetrics>,
        rx: mpsc::Receiver<ToSink>,
    ) -> Result<bool, Error> {
        let dest = &config.destinations[i];
        let path = sink::sqlite::path_of(dest);
        let pull = crate::pull::supervise(
            opts.clone(),
            dest.name.clone(),
            path.clone(),
            dest.tables.clone(),
            Duration::from_millis(dest.pull_interval_ms.unwrap_or(200)),
            m.clone(),
            self.stop_pull.clone(),
        );
        self.pulls.spawn(async move { (i, pull.await) });
        let recorded = crate::progress::load(admin, &config.source.slot, &dest.name).await?;
        self.files.push(Watched {
            index: i,
            name: dest.name.clone(),
            recorded: recorded.unwrap_or_default(),
        });
        let mut sink =
            match SqliteSink::open(&path, &config.source.slot, &dest.name, hub, m.clone()) {
                Ok(sink) => sink,
                Err(e) => return self.unavailable_at_open(dest, e, &m),
            };
        // Behind the hub's record: restored from an older backup.
        sink.check_recorded(recorded)?;
        // Refused a write again and again: set aside what it refuses.
        let streak = m.broken_streak.load(Relaxed);
        if streak >= dest.max_attempts() {
            sink.isolate(opts.clone(), streak);
        }
        if sink.progress() != Lsn(0)
            && lacks_a_copy(admin, config, dest, sink.copied_tables()?).await?
        {
            sink.forget_position()?;
        }
        m.detached.store(false, Relaxed);
        if sink.progress() == Lsn(0) {
            self.needs_copy.push(i);
        }
        tracing::info!(destination = %dest.name, path = %path.display(), progress = %sink.progress(), "sqlite destination ready");
        self.sinks
            .spawn(async move { (i, sink::drive(sink, rx, m).await) });
        Ok(true)
    }

    /// A sink task ended while the session streams. A peer the policy
    /// detaches is set aside (and probed); anything else ends the session.
    fn sink_ended(
        &mut self,
        done: Result<TaskEnd, tokio::task::JoinError>,
        config: &Config,
        metrics: &Metrics,
    ) -> Result<(), Error> {
        let (i, r) = done.map_err(|j| Error::bug(format!("a destination task failed: {j}")))?;
        let dest = &config.destinations[i];
        match r {
            Err(e) if e.action() == Action::Detach && self.outlets[i].tx.is_some() => {
                tracing::warn!(destination = %dest.name, error = %e, hint = e.cause().hint(), "destination unavailable: detached; the other destinations go on");
                let m = &metrics.destinations[i];
                m.detached.store(true, Relaxed);
                self.outlets[i].tx = None;
                self.outlets[i].buffer.clear();
                self.probes.spawn(probe(dest.clone(), detach_wait(&e, m)));
                Ok(())
            }
            Err(e) => Err(e),
            Ok(()) => Err(Error::bug(format!(
                "destination {} stopped while its channel was open",
                dest.name
            ))),
        }
    }

    /// A pull task ended while the session streams: only an error the
    /// policy stops for ends a pull (see `pull::supervise`).
    fn pull_ended(done: Result<TaskEnd, tokio::task::JoinError>) -> Result<(), Error> {
        match done.map_err(|j| Error::bug(format!("a pull task failed: {j}")))? {
            (_, Err(e)) => Err(e),
            (_, Ok(())) => Ok(()),
        }
    }

    /// Ends the session's tasks: the channels close (the sinks commit whole
    /// transactions and roll back a half-received one), the pulls end
    /// between rounds. Returns the first error a task reported.
    async fn close(mut self) -> Option<Error> {
        self.stop_pull.cancel();
        self.outlets.clear();
        self.probes.abort_all();
        let mut first = None;
        while let Some(done) = self.sinks.join_next().await {
            if let Err(e) = done
                .map_err(|j| Error::bug(format!("a destination task failed: {j}")))
                .and_then(|(_, r)| r)
            {
                first.get_or_insert(e);
            }
        }
        while let Some(done) = self.pulls.join_next().await {
            if let Err(e) = Destinations::pull_ended(done) {
                first.get_or_insert(e);
            }
        }
        first
    }
}

/// Polls what the slot retains on the server, for /metrics, while the
/// session lasts.
fn watch_slot(
    admin: Arc<tokio_postgres::Client>,
    slot: String,
    metrics: Arc<Metrics>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            if let Ok(Some(r)) = admin
                .query_opt(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8
                       FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
            {
                if let Ok(Some(v)) = r.try_get::<_, Option<i64>>(0) {
                    metrics.retained_wal.store(v.max(0) as u64, Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }))
}

/// One session: open (the slot, the destinations, the new peers' copies),
/// stream until shutdown or an error, close.
async fn session(
    config: &Config,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    // Open.
    let opts = ConnectOptions::from_url(&config.source.url, config.source.password.clone())?;
    let admin = Arc::new(crate::hub::connect(&opts, "tributary-worker").await?);
    crate::hub::check_extension(&admin).await?;
    let slot_confirmed = prepare_slot(config, &opts, &admin).await?;
    let hub = crate::hub::identity(&opts, &admin).await?;
    crate::hub::warn_unadopted_restore(&admin).await?;
    let mut dests = Destinations::open(config, metrics, &opts, &admin, &hub).await?;
    let _watch = watch_slot(admin.clone(), config.source.slot.clone(), metrics.clone());
    let positions =
        FilePositions::new(admin, &config.source.slot, std::mem::take(&mut dests.files));
    let copied = copy_new_peers(config, metrics, &opts, &dests).await;
    let streamed = match copied {
        Ok(()) => {
            let from = (slot_confirmed, positions);
            stream(config, metrics, shutdown, &opts, from, &mut dests).await
        }
        Err(e) => Err((e, None)),
    };
    // Close.
    let (result, mut pipe) = match streamed {
        Ok(pipe) => (Ok(()), Some(pipe)),
        Err((e, pipe)) => (Err(e), pipe),
    };
    let task_error = dests.close().await;
    metrics.connected.store(false, Relaxed);
    match (result, task_error, pipe.as_mut()) {
        (Ok(()), None, Some(pipe)) => {
            // The final status: everything the sinks committed.
            pipe.send_status(true).await?;
            tracing::info!(confirmed = %metrics.confirmed(), "stopped");
            Ok(())
        }
        (Ok(()), Some(e), _) | (Err(e), _, _) => Err(e),
        (Ok(()), None, None) => Ok(()),
    }
}

/// New peers get a consistent copy first, joined to the stream.
async fn copy_new_peers(
    config: &Config,
    metrics: &Metrics,
    opts: &ConnectOptions,
    dests: &Destinations,
) -> Result<(), Error> {
    for &i in &dests.needs_copy {
        let d = &config.destinations[i];
        let Some(tx) = &dests.outlets[i].tx else {
            continue;
        };
        tracing::info!(destination = %d.name, "initial copy");
        crate::snapshot::copy(
            opts,
            &config.source.publication,
            d,
            tx,
            &metrics.destinations[i],
        )
        .await?;
    }
    Ok(())
}

/// Streams from the slot (confirmed at `slot_confirmed`; `positions`
/// records the peer files' positions before it moves) until shutdown
/// (then the transaction being received is finished first) or an error.
/// Returns the pipe, for the final status.
async fn stream(
    config: &Config,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
    opts: &ConnectOptions,
    (slot_confirmed, positions): (Lsn, FilePositions),
    dests: &mut Destinations,
) -> Result<Pipe, (Error, Option<Pipe>)> {
    let conn = Connection::connect(opts)
        .await
        .map_err(|e| (e.into(), None))?;
    let stream = conn
        .start_replication(&config.source.slot, Lsn(0), &config.source.publication)
        .await
        .map_err(|e| (e.into(), None))?;
    metrics.connected.store(true, Relaxed);
    metrics.confirmed_lsn.fetch_max(slot_confirmed.0, Relaxed);
    tracing::info!(slot = %config.source.slot, from = %slot_confirmed, "streaming");
    let mut pipe = Pipe {
        stream,
        assembler: Assembler::new(std::env::temp_dir()),
        router: Router::new(dests.routes.clone()),
        outlets: std::mem::take(&mut dests.outlets),
        metrics: metrics.clone(),
        received: slot_confirmed,
        last_end: Lsn(0),
        floor: slot_confirmed,
        idle_end: slot_confirmed,
        positions,
    };
    let r = pipe.run(config, shutdown, dests).await;
    // The sinks' channels close with the pipe's outlets, at close.
    dests.outlets = std::mem::take(&mut pipe.outlets);
    match r {
        Ok(()) => Ok(pipe),
        Err(e) => Err((e, Some(pipe))),
    }
}

struct Pipe {
    stream: Stream,
    assembler: Assembler,
    router: Router,
    outlets: Vec<Outlet>,
    metrics: Arc<Metrics>,
    /// The furthest WAL position received.
    received: Lsn,
    /// End LSN of the last transaction handed to the sinks (0/0: none yet
    /// in this session).
    last_end: Lsn,
    /// Where the slot was confirmed when the session began: never go lower.
    floor: Lsn,
    /// A keepalive's WAL end seen while nothing was half-received.
    idle_end: Lsn,
    /// Records the peer files' committed positions at the hub.
    positions: FilePositions,
}

impl Pipe {
    /// The session's loop: the stream, the status timer, and the
    /// destinations' tasks, each supervised by its own rule.
    async fn run(
        &mut self,
        config: &Config,
        shutdown: &CancellationToken,
        dests: &mut Destinations,
    ) -> Result<(), Error> {
        let mut items = Vec::new();
        let mut status = tokio::time::interval(STATUS_EVERY);
        let mut stopping = false;
        loop {
            if stopping && !self.assembler.in_transaction() {
                return Ok(());
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !stopping => {
                    tracing::info!("shutdown requested: finishing the current transaction");
                    stopping = true;
                }
                Some(done) = dests.sinks.join_next() => {
                    dests.outlets = std::mem::take(&mut self.outlets);
                    let r = dests.sink_ended(done, config, &self.metrics);
                    self.outlets = std::mem::take(&mut dests.outlets);
                    r?;
                }
                Some(done) = dests.pulls.join_next() => Destinations::pull_ended(done)?,
                Some(_) = dests.probes.join_next() => {
                    return Err(Error::Peer {
                        message: "a detached peer is reachable again: restarting the stream so that it catches up".into(),
                        cause: Cause::Connection,
                    });
                }
                _ = status.tick() => self.send_status(false).await?,
                ev = self.stream.next() => match ev? {
                    Event::XLogData { wal_start, wal_end, data } => {
                        self.on_data(wal_start, wal_end, &data, &mut items).await?
                    }
                    Event::Keepalive { wal_end, reply } => {
                        self.on_keepalive(wal_end);
                        if reply {
                            self.send_status(false).await?;
                        }
                    }
                },
            }
        }
    }
    async fn on_data(
        &mut self,
        wal_start: Lsn,
        wal_end: Lsn,
        data: &[u8],
        items: &mut Vec<Item>,
    ) -> Result<(), Error> {
        self.received = self.received.max(wal_start).max(wal_end);
        self.metrics.server_wal_end.fetch_max(wal_end.0, Relaxed);
        self.metrics
            .received_bytes
            .fetch_add(data.len() as u64, Relaxed);
        let replay = self.assembler.feed(data, items)?;
        for item in items.drain(..) {
            self.dispatch(item).await?;
        }
        if let Some(mut replay) = replay {
            tracing::debug!("replaying a streamed transaction from its spill file");
            while let Some(item) = replay.next(&mut self.assembler)? {
                self.dispatch(item).await?;
            }
        }
        Ok(())
    }

    fn on_keepalive(&mut self, wal_end: Lsn) {
        self.received = self.received.max(wal_end);
        self.metrics.server_wal_end.fetch_max(wal_end.0, Relaxed);
        if self.assembler.idle() {
            self.idle_end = self.idle_end.max(wal_end);
        }
    }

    /// Sends to a destination; a detached one gets nothing.
    async fn send(outlet: &mut Outlet, msg: ToSink) -> Result<(), Error> {
        let Some(tx) = &outlet.tx else {
            return Ok(());
        };
        if tx.send(msg).await.is_err() {
            // Its task ended: its error comes through the task set (a peer
            // that detaches), or ends the session.
            outlet.tx = None;
        }
        Ok(())
    }

    async fn dispatch(&mut self, item: Item) -> Result<(), Error> {
        match item {
            Item::Begin {
                commit_lsn,
                commit_time,
                ..
            } => {
                for o in &mut self.outlets {
                    Self::send(
                        o,
                        ToSink::Begin {
                            commit_lsn,
                            commit_time,
                        },
                    )
                    .await?;
                }
            }
            Item::Change(c) => {
                let c = Arc::new(c);
                for i in 0..self.outlets.len() {
                    if self.outlets[i].tx.is_some() && self.router.wants(i, &c) {
                        let o = &mut self.outlets[i];
                        o.buffer.push(c.clone());
                        if o.buffer.len() >= CHANGES_PER_MESSAGE {
                            let batch = std::mem::take(&mut o.buffer);
                            Self::send(o, ToSink::Changes(batch)).await?;
                        }
                    }
                }
            }
            Item::Commit { end_lsn, .. } => {
                for o in &mut self.outlets {
                    if !o.buffer.is_empty() {
                        let batch = std::mem::take(&mut o.buffer);
                        Self::send(o, ToSink::Changes(batch)).await?;
                    }
                    Self::send(o, ToSink::Commit { end_lsn }).await?;
                }
                self.last_end = self.last_end.max(end_lsn);
            }
        }
        Ok(())
    }

    /// What the slot may be confirmed up to now.
    fn confirmable(&self) -> Lsn {
        // Acquire: the committed positions read after this cover it (see
        // `DestinationMetrics::committed_lsn`).
        let durable = self
            .metrics
            .destinations
            .iter()
            .map(|d| Lsn(d.durable_lsn.load(Acquire)))
            .min();
        let mut c = match durable {
            Some(d) => d,
            // No destination: nothing to deliver, everything received is done.
            None => self.last_end,
        };
        if c >= self.last_end && self.assembler.idle() {
            c = c.max(self.idle_end);
        }
        c.max(self.floor)
    }

    /// Confirms the slot up to what is confirmable. Before it moves, the
    /// hub records where each peer file stands: every transaction for a
    /// file below the new position was committed to it, and is then
    /// covered by its record (so a file found below its record later went
    /// back; see [`crate::progress`]). A detached peer's file committed
    /// nothing new: its record stays, as its durable position holds the
    /// slot.
    async fn send_status(&mut self, final_: bool) -> Result<(), Error> {
        let c = self.confirmable();
        if c > self.floor {
            self.positions.record(&self.metrics).await?;
        }
        self.floor = c;
        self.metrics.confirmed_lsn.store(c.0, Relaxed);
        self.stream.send_status(self.received, c, c, false).await?;
        if final_ {
            tracing::debug!(confirmed = %c, "final status sent");
        }
        Ok(())
    }
}
