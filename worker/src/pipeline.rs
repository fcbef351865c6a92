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
//!   so an idle worker does not hold WAL back.
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
use crate::error::{Context, Error, ErrorKind};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::router::{Route, Router};
use crate::sink::queue::{self, QueueSink};
use crate::sink::sqlite::SqliteSink;
use crate::sink::ToSink;
use crate::source::{ConnectOptions, Connection, Event, Stream};
use crate::transaction::{Assembler, Change, Item};
use std::sync::atomic::Ordering::Relaxed;
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
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        match session(&config, &metrics, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Definite => {
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
            });
        }
        if status == "lost" {
            return Err(Error::Definite {
                message: format!("slot {slot:?} was invalidated: the WAL it needed is gone"),
                hint: "changes were lost for every destination: drop the slot, DELETE FROM tributary.worker_progress WHERE slot = '<slot>', and resync the destinations in full".into(),
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

/// Whether a destination's error detaches it (the others go on) rather
/// than restarting the session: a SQLite peer that is locked or missing.
fn detaches(e: &Error) -> bool {
    matches!(
        e,
        Error::Peer {
            transient: true,
            ..
        }
    )
}

/// Waits until a detached peer file can be opened and written again.
async fn probe(path: std::path::PathBuf, slot: String, name: String) {
    let mut wait = Duration::from_millis(500);
    loop {
        tokio::time::sleep(wait).await;
        let (p, s, n) = (path.clone(), slot.clone(), name.clone());
        let ok = tokio::task::spawn_blocking(move || {
            SqliteSink::open(&p, &s, &n, Default::default())
                .and_then(|sink| sink.check_writable())
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if ok {
            return;
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

async fn session(
    config: &Config,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let opts = ConnectOptions::from_url(&config.source.url, config.source.password.clone())?;
    let admin = queue::connect(&opts, "tributary-worker").await?;
    let slot_confirmed = prepare_slot(config, &opts, &admin).await?;

    // Sinks, each on its own task and connection.
    let mut tasks: JoinSet<(usize, Result<(), Error>)> = JoinSet::new();
    // Detached peers being waited for: when one is back, the session
    // restarts so that it catches up from the slot.
    let mut probes: JoinSet<()> = JoinSet::new();
    let mut outlets = Vec::new();
    let mut routes = Vec::new();
    let mut needs_copy = Vec::new();
    // Ends the peers' pull loops with the session.
    let stop_pull = CancellationToken::new();
    let _stop_pull = stop_pull.clone().drop_guard();
    for (i, d) in config.destinations.iter().enumerate() {
        let m = metrics.destinations[i].clone();
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        match d.kind {
            Kind::Queue => {
                let sink = QueueSink::open(&opts, &config.source.slot, &d.name, m.clone()).await?;
                tracing::info!(destination = %d.name, progress = %sink.progress(), "queue destination ready");
                tasks.spawn(async move {
                    let r = sink.run(rx).await;
                    if r.is_err() {
                        m.errors.fetch_add(1, Relaxed);
                    }
                    (i, r)
                });
            }
            Kind::Sqlite => {
                let path = std::path::PathBuf::from(d.path.clone().unwrap_or_default());
                let pull = crate::inbound::run(
                    opts.clone(),
                    d.name.clone(),
                    path.clone(),
                    std::time::Duration::from_millis(d.pull_interval_ms.unwrap_or(200)),
                    m.clone(),
                    stop_pull.clone(),
                );
                tasks.spawn(async move { (i, pull.await) });
                match SqliteSink::open(&path, &config.source.slot, &d.name, m.clone()) {
                    Ok(mut sink) => {
                        if sink.progress() != Lsn(0) {
                            // A table it takes that it has no copy of (tracked
                            // after its copy), or whose copy is of an older
                            // tracking epoch (untracked and tracked again):
                            // the stream alone cannot bring it up to date.
                            let held = sink.copied_tables()?;
                            let wanted = crate::snapshot::wanted_tables(
                                &admin,
                                &config.source.publication,
                                d,
                            )
                            .await?;
                            if let Some((t, _)) =
                                wanted.iter().find(|(t, e)| held.get(t) != Some(e))
                            {
                                tracing::warn!(destination = %d.name, table = %t, "the peer's copy of this table is missing or of an older epoch: copying it anew");
                                sink.forget_position()?;
                            }
                        }
                        if sink.progress() == Lsn(0) {
                            needs_copy.push(i);
                        }
                        tracing::info!(destination = %d.name, path = %path.display(), progress = %sink.progress(), "sqlite destination ready");
                        tasks.spawn_blocking(move || {
                            let r = sink.run(rx);
                            if r.is_err() {
                                m.errors.fetch_add(1, Relaxed);
                            }
                            (i, r)
                        });
                    }
                    Err(e) if detaches(&e) => {
                        tracing::warn!(destination = %d.name, error = %e, "peer unavailable: detached; the other destinations go on");
                        m.errors.fetch_add(1, Relaxed);
                        probes.spawn(probe(path, config.source.slot.clone(), d.name.clone()));
                        outlets.push(Outlet {
                            tx: None,
                            buffer: Vec::new(),
                        });
                        routes.push(Route {
                            name: d.name.clone(),
                            tables: d.tables.clone(),
                        });
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        outlets.push(Outlet {
            tx: Some(tx),
            buffer: Vec::new(),
        });
        routes.push(Route {
            name: d.name.clone(),
            tables: d.tables.clone(),
        });
    }
    let router = Router::new(routes);

    // What the slot retains on the server, for /metrics: polled on the
    // ordinary connection while the session lasts.
    let watch = {
        let (metrics, slot) = (metrics.clone(), config.source.slot.clone());
        tokio::spawn(async move {
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
        })
    };
    let _abort_watch = AbortOnDrop(watch);

    // New peers get a consistent copy first, joined to the stream.
    for i in needs_copy {
        let d = &config.destinations[i];
        let Some(tx) = &outlets[i].tx else { continue };
        tracing::info!(destination = %d.name, "initial copy");
        crate::snapshot::copy(
            &opts,
            &config.source.publication,
            d,
            tx,
            &metrics.destinations[i],
        )
        .await?;
    }

    let conn = Connection::connect(&opts).await?;
    let mut stream = conn
        .start_replication(&config.source.slot, Lsn(0), &config.source.publication)
        .await?;
    metrics.connected.store(true, Relaxed);
    metrics.confirmed_lsn.fetch_max(slot_confirmed.0, Relaxed);
    tracing::info!(slot = %config.source.slot, from = %slot_confirmed, "streaming");

    let mut pipe = Pipe {
        assembler: Assembler::new(std::env::temp_dir()),
        router,
        outlets,
        metrics: metrics.clone(),
        received: slot_confirmed,
        last_end: Lsn(0),
        floor: slot_confirmed,
        idle_end: slot_confirmed,
    };
    let mut items = Vec::new();
    let mut status = tokio::time::interval(STATUS_EVERY);
    let mut stopping = false;
    let result: Result<(), Error> = loop {
        if stopping && !pipe.assembler.in_transaction() {
            break Ok(());
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !stopping => {
                tracing::info!("shutdown requested: finishing the current transaction");
                stopping = true;
            }
            Some(done) = tasks.join_next() => {
                match done {
                    Ok((i, Err(e))) if detaches(&e) && pipe.outlets[i].tx.is_some() => {
                        let d = &config.destinations[i];
                        tracing::warn!(destination = %d.name, error = %e, "peer unavailable: detached; the other destinations go on");
                        pipe.outlets[i].tx = None;
                        pipe.outlets[i].buffer.clear();
                        probes.spawn(probe(
                            std::path::PathBuf::from(d.path.clone().unwrap_or_default()),
                            config.source.slot.clone(),
                            d.name.clone(),
                        ));
                    }
                    other => break Err(sink_ended(Some(other))),
                }
            }
            Some(_) = probes.join_next() => {
                break Err(Error::Peer {
                    message: "a detached peer is reachable again: restarting the stream so that it catches up".into(),
                    transient: true,
                });
            }
            _ = status.tick() => {
                if let Err(e) = pipe.send_status(&mut stream, false).await {
                    break Err(e);
                }
            }
            ev = stream.next() => {
                let r = match ev {
                    Ok(Event::XLogData { wal_start, wal_end, data }) => {
                        pipe.on_data(wal_start, wal_end, &data, &mut items).await
                    }
                    Ok(Event::Keepalive { wal_end, reply }) => {
                        pipe.on_keepalive(wal_end);
                        if reply { pipe.send_status(&mut stream, false).await } else { Ok(()) }
                    }
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = r {
                    break Err(e);
                }
            }
        }
    };
    // Closing the channels ends the sinks: they commit whole transactions
    // and roll back a half-received one. The pull loops end between rounds.
    stop_pull.cancel();
    let Pipe { outlets, .. } = &mut pipe;
    outlets.clear();
    let mut sink_error = None;
    probes.abort_all();
    while let Some(done) = tasks.join_next().await {
        if let Ok((_, Err(e))) | Err(e) = done.map_err(|j| Error::Definite {
            message: format!("a destination task failed: {j}"),
            hint: "report this as a bug".into(),
        }) {
            sink_error.get_or_insert(e);
        }
    }
    metrics.connected.store(false, Relaxed);
    match (result, sink_error) {
        (Ok(()), None) => {
            // The final status: everything the sinks committed.
            pipe.send_status(&mut stream, true).await?;
            tracing::info!(confirmed = %metrics.confirmed(), "stopped");
            Ok(())
        }
        (Ok(()), Some(e)) => Err(e),
        (Err(e), _) => Err(e),
    }
}

/// How a destination task ended: its index and result.
type TaskEnd = Result<(usize, Result<(), Error>), tokio::task::JoinError>;

fn sink_ended(done: Option<TaskEnd>) -> Error {
    match done {
        Some(Ok((_, Err(e)))) => e,
        Some(Err(j)) => Error::Definite {
            message: format!("a destination task failed: {j}"),
            hint: "report this as a bug".into(),
        },
        _ => Error::Definite {
            message: "a destination stopped unexpectedly".into(),
            hint: "report this as a bug".into(),
        },
    }
}

struct Pipe {
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
}

impl Pipe {
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
        let durable = self
            .metrics
            .destinations
            .iter()
            .map(|d| Lsn(d.durable_lsn.load(Relaxed)))
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

    async fn send_status(&mut self, stream: &mut Stream, final_: bool) -> Result<(), Error> {
        let c = self.confirmable();
        self.floor = c;
        self.metrics.confirmed_lsn.store(c.0, Relaxed);
        stream.send_status(self.received, c, c, false).await?;
        if final_ {
            tracing::debug!(confirmed = %c, "final status sent");
        }
        Ok(())
    }
}
