//! Tributary worker: reads the hub's logical replication slot (pgoutput)
//! and fans committed changes out to queues and peers.
//!
//! ```text
//!  slot (pgoutput, proto 2) ──> pgoutput::Decoder ──> [router] ──> [sinks]
//!                                                     (issue #4, next steps)
//! ```
//!
//! Built so far: the replication client (`source`), the pgoutput decoder
//! (`pgoutput`), LSNs (`lsn`), the configuration (`config`) and the one
//! error type (`error`).

pub mod config;
pub mod error;
pub mod lsn;
pub mod pgoutput;
pub mod source;
