//! Tributary worker: reads the hub's logical replication slot (pgoutput)
//! and fans committed changes out to queues and SQLite peers; pulls the
//! peers' own changes back through the hub's resolver.
//!
//! ```text
//!  slot ──source──> pgoutput ──transaction──> router ──> sink::queue  ──> tributary.queue_<name>
//!   ^  (replication     (decode)   (whole txns,   (tables,   sink::sqlite ──> peer.db
//!   |   protocol)                   spill)         no echo)      (data + progress, one transaction)
//!   └──────── standby status: confirmed = min(durable progress) ── pipeline
//!
//!  peer.db _tributary_outbox ──inbound──> sync_apply(origin => peer) ──> write-back via the stream
//!  new peer: snapshot (exported snapshot of a temporary slot) ──> sink::sqlite
//! ```
//!
//! `pipeline::run(config, metrics, shutdown)` is the whole worker; the
//! binary adds the CLI, logging, signals and the HTTP endpoints (`http`).

pub mod config;
pub mod error;
pub mod failpoint;
pub mod http;
pub mod inbound;
pub mod lsn;
pub mod metrics;
pub mod pgoutput;
pub mod pipeline;
pub mod router;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod transaction;
pub mod value;
