//! Tributary worker: reads the hub's logical replication slot (pgoutput)
//! and fans committed changes out to queues and peers.
//!
//! ```text
//!  slot ──source──> pgoutput ──transaction──> router ──> sink::queue ──> tributary.queue_<name>
//!   ^  (replication     (decode)   (whole txns,   (tables,       (data + progress,
//!   |   protocol)                   spill)         no echo)        one transaction)
//!   └──────── standby status: confirmed = min(durable progress) ── pipeline
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
