//! Session settings.
//!
//! - `tributary.origin`: the origin stamped on every change this session
//!   makes. Empty (the default) means a local change. The worker and
//!   `sync_apply` set it so that a peer's own writes are not echoed back.
//! - `tributary.retention`: how long tombstones are kept by `sync_cleanup()`,
//!   as an interval (default `7 days`).
//! - `tributary.max_retries`: attempts before a parked change becomes a dead
//!   letter (default 10).
//! - `tributary.max_clock_skew`: how far past the hub's clock a peer's `ts`
//!   may be (default 5 minutes); a later one is clamped to it, so a peer
//!   with a clock in the future cannot win every last-writer-wins conflict.
//!   Superuser-only, so a peer's session cannot widen it.
//! - `tributary.retrying`: internal, set by `sync_retry_pending`.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static ORIGIN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static MAX_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static RETRYING: GucSetting<bool> = GucSetting::<bool>::new(false);
/// Seconds.
pub static MAX_CLOCK_SKEW: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static RETENTION: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"7 days"));

pub fn init() {
    GucRegistry::define_string_guc(
        c"tributary.origin",
        c"Origin tag stamped on the changes this session makes.",
        c"Empty means a local change. Peers and the worker set it so their writes are not echoed back to them.",
        &ORIGIN,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"tributary.retention",
        c"How long sync_cleanup() keeps tombstones (an interval).",
        c"A reader whose version is older than the purged tombstones is told to resync in full.",
        &RETENTION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tributary.max_retries",
        c"Attempts after which a parked change (DEFERRED) becomes a dead letter.",
        c"Parked changes wait for a missing foreign-key parent; see sync_pending.",
        &MAX_RETRIES,
        1,
        1_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tributary.max_clock_skew",
        c"How far past the hub's clock a peer's change time (ts) may be; later ones are clamped to it.",
        c"Bounds what a peer with a clock in the future can claim under last_writer_wins.",
        &MAX_CLOCK_SKEW,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"tributary.retrying",
        c"Internal: set while sync_retry_pending replays parked changes.",
        c"",
        &RETRYING,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL,
    );
}
