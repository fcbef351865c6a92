//! Tributary worker: reads the hub's logical replication slot (pgoutput)
//! and fans committed changes out to queues and SQLite peers; pulls the
//! peers' own changes back through the hub's resolver.
//!
//! ```text
//!  slot ──source──> pgoutput ──transaction──> router ──> sink::drive(queue)  ──> tributary.queue_<name>
//!   ^  (replication     (decode)   (whole txns,   (tables,   sink::drive(sqlite) ──> peer.db (tributary-sqlite)
//!   |   protocol)                   spill)         no echo)      (data + progress, one transaction)
//!   └──────── standby status: confirmed = min(durable progress) ── pipeline (session: open, stream, close)
//!
//!  peer.db _tributary_outbox ──pull──> sync_apply(origin => peer) ──> write-back via the stream
//!  new peer: snapshot (exported snapshot of a temporary slot) ──> sink::sqlite
//!  peer files' committed positions ──progress──> worker_progress, before the slot moves past them;
//!    a file below its record (restored from an older backup) is copied anew
//!  any error ──> error::Cause ──> Retry | Detach | Stop          (error.rs: the one policy)
//!  both hub connections: TLS as the URL's sslmode says           (tls.rs, rustls)
//!
//!  remote peers ──HTTPS + JWT──> gateway (gateway/: axum; each request acts as the peer's role)
//!                                  ──> the hub's SQL API; long polls share one watcher
//! ```
//!
//! `pipeline::run(config, metrics, shutdown)` is the whole worker; the
//! binary adds the CLI, logging, signals and the HTTP endpoints (`http`).
//! The modules the binary and the tests use are public; the rest is
//! private to the crate.

pub mod config;
pub mod error;
use tributary_core::failpoint;
pub mod gateway;
pub mod http;
mod hub;
pub mod lsn;
pub mod metrics;
pub mod mssql;
pub mod pgoutput;
pub mod pipeline;
mod progress;
pub mod pull;
mod router;
mod sink;
mod snapshot;
pub mod source;
pub mod standby;
pub mod tls;
pub mod transaction;
