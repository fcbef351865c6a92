//! Tributary: commit-safe change tracking for PostgreSQL.
//!
//! ```text
//!  INSERT/UPDATE ──> zzz_tributary_track (Rust, BEFORE ROW) ── stamps sync_version, sync_xid,
//!                                                             per-column versions, origin
//!  DELETE / key change ──> tributary._on_delete (Rust, BEFORE ROW) ──> tributary.tombstones
//!  UPDATE of a filtered table's filter columns ──> tributary._on_move ──> tributary.moves
//!  TRUNCATE ──> tributary._on_truncate ──> raises tributary.tracked.min_valid
//!
//!  reader: v := sync_current_version()            -- xmin horizon of its snapshot
//!          sync_changes_since(last, v)            -- net changes stamped in [last, v)
//! ```
//!
//! This file holds only the module list and the order of the SQL files; see
//! `docs/architecture.md` for the version design.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod api;
mod claims;
mod engine;
mod filter;
mod payload;
mod privilege;
mod release;
mod watch;

// Order of the install script: schema and tables first, then the Rust
// functions pgrx generates, then the SQL API that refers to them.
extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../../sql/tracking.sql",
    name = "tracking",
    requires = [
        "schema",
        api::trigger::tributary::row_trigger,
        api::tombstone::tributary::_on_delete
    ]
);
extension_sql_file!(
    "../../sql/pull.sql",
    name = "pull",
    requires = ["tracking", api::payload::tributary::payload_item]
);
extension_sql_file!(
    "../../sql/apply.sql",
    name = "apply",
    requires = [
        "pull",
        api::apply::tributary::_apply,
        api::apply::tributary::_replay_parked,
        api::apply::tributary::_close_conflict
    ]
);
extension_sql_file!(
    "../../sql/queue.sql",
    name = "queue",
    requires = ["tracking"]
);
extension_sql_file!(
    "../../sql/gateway.sql",
    name = "gateway",
    requires = ["pull", "apply"]
);
extension_sql_file!(
    "../../sql/filter.sql",
    name = "filter",
    requires = [
        "gateway",
        api::filter::tributary::_check_filter_text,
        api::filter::tributary::_store_filter,
        api::moves::tributary::_on_move,
        api::watch::tributary::_changed_for
    ]
);
extension_sql_file!("../../sql/grants.sql", name = "grants", finalize);

/// Called once per backend when the library is loaded.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    api::guc::init();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("pg_tests.rs");
}

/// Hooks for `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["wal_level = 'logical'"]
    }
}
