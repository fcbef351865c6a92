//! Tributary's shared logic, with no pgrx, no database and no I/O: what the
//! extension, the worker and the peers must agree on, spelled once.
//!
//! ```text
//!  tracking   the tracking column names, the origin limit, the GUC names
//!  resolver   stamps, the per-column decision, Policy and Outcome
//!  colvers    the packed per-column stamps of sync_colmeta
//!  jsontext   JSON text building (escaping, numbers, object splitting)
//!  pgjson     a value as PostgreSQL prints it -> the JSON to_jsonb gives
//!  quote      SQL identifiers and literals (PostgreSQL, SQLite)
//!  pgtype     built-in PostgreSQL type OIDs the peers map
//!  failpoint  crash points for the fault tests (feature `failpoints`; the
//!             one piece that reads the environment, and only when built so)
//! ```
//!
//! `extension/` (pgrx) and `worker/` (tokio) both depend on this crate;
//! `core/tests/sql_agrees.rs` checks that the SQL files spell the same
//! names and lists.

pub mod colvers;
pub mod failpoint;
pub mod jsontext;
pub mod pgjson;
pub mod pgtype;
pub mod quote;
pub mod resolver;
pub mod tracking;
