//! The SQL-facing surface written in Rust: the row trigger on the write
//! path, the JSON serializer and changed-columns decoder of the read path,
//! the entry point of sync_apply's engine (`crate::engine`), the GUCs,
//! `sync_claim` and the payload items' splice; the row filters' store and
//! move trigger, and `sync_changed_for`'s engine. The rest of the SQL API is
//! plain SQL in `sql/`.

pub mod apply;
pub mod claims;
pub mod colmeta;
pub mod filter;
pub mod guc;
pub mod moves;
pub mod payload;
pub mod rowjson;
pub mod tombstone;
pub mod trigger;
pub mod watch;
