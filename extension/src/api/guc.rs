//! Session settings.
//!
//! - `tributary.origin`: the origin stamped on every change this session
//!   makes. Empty (the default) means a local change. The worker and
//!   `sync_apply` set it so that a peer's own writes are not echoed back.
//!   Only to a peer the session's role may speak for (see
//!   `crate::privilege`): a check hook refuses any other with 42501, so a
//!   local session cannot hide its writes from a peer by taking its name.
//! - `tributary.claims`: the claims of the token the current request was
//!   verified with, as a JSON object's text; empty (the default) means
//!   none. `sync_act_for_peer` sets it for the request's transaction and
//!   `sync_claim(name)` reads it (`crate::api::claims`). A check hook
//!   refuses anything but an object with 22023. Any session may set its
//!   own: claims are as trustworthy as the role that reads them.
//! - `tributary.peer`: the peer a scoped session acts for, set with the
//!   claims by `sync_act_for_peer`. It only narrows what the session sees
//!   (a scoped session sees that peer's conflicts alone), so any session
//!   may set its own.
//! - `tributary.retention`: how long tombstones are kept by `sync_cleanup()`,
//!   as an interval (default `7 days`).
//! - `tributary.max_retries`: attempts before a parked change becomes a dead
//!   letter (default 10).
//! - `tributary.max_clock_skew`: how far past the hub's clock a peer's `ts`
//!   may be (default 5 minutes); a later one is clamped to it, so a peer
//!   with a clock in the future cannot win every last-writer-wins conflict.
//!   Superuser-only, so a peer's session cannot widen it.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static ORIGIN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static CLAIMS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static PEER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static MAX_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(10);
/// Seconds.
pub static MAX_CLOCK_SKEW: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static RETENTION: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"7 days"));

pub fn init() {
    // SAFETY: the hook is a pg_guard'ed extern "C-unwind" function with
    // the signature PostgreSQL expects.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"tributary.origin",
            c"Origin tag stamped on the changes this session makes.",
            c"Empty means a local change. Only a peer the session's role may speak for (sync_set_peer's role) can be named.",
            &ORIGIN,
            GucContext::Userset,
            GucFlags::default(),
            Some(check_origin),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"tributary.claims",
            c"Claims of the verified token of the current request (a JSON object), read with sync_claim(name).",
            c"Set by sync_act_for_peer for the request's transaction. Any session may set its own: claims are as trustworthy as the role.",
            &CLAIMS,
            GucContext::Userset,
            GucFlags::default(),
            Some(check_claims),
            None,
            None,
        );
    }
    GucRegistry::define_string_guc(
        c"tributary.peer",
        c"The peer a scoped session acts for (set by sync_act_for_peer with tributary.claims).",
        c"It only narrows what the session sees: a scoped session sees the conflicts of this peer alone.",
        &PEER,
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
}

/// The check hook of `tributary.origin`: a non-empty value only for a role
/// that may claim it. Outside a transaction (a configuration file) nothing
/// can be checked, so only the empty value is taken; a parallel worker
/// takes what its leader checked.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_origin(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    use pgrx::pg_sys;
    // SAFETY: PostgreSQL passes a valid pointer to the new value (which may
    // be NULL); the error strings are palloc'd as guc.c expects.
    unsafe {
        let v = *newval;
        if v.is_null()
            || *v == 0
            || pg_sys::ParallelWorkerNumber >= 0
            || pg_sys::InitializingParallelWorker
        {
            return true;
        }
        let origin = std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned();
        let (detail, hint) = if !pg_sys::IsTransactionState() {
            (
                "tributary.origin is checked against the peers registered in the database; it cannot be set in a configuration file.".to_string(),
                "Set it in the session (SET tributary.origin = ...), as a role that may speak for the peer.".to_string(),
            )
        } else {
            let refusal = pgrx::Spi::connect(|c| {
                if crate::privilege::may_claim(c, &origin) {
                    None
                } else if let Some(installed) = crate::release::sql_behind(c) {
                    Some((
                        format!("The extension's SQL in this database is {installed}, its library {}: peers cannot be checked.", crate::release::LIBRARY),
                        "Run ALTER EXTENSION tributary UPDATE in this database.".to_string(),
                    ))
                } else {
                    Some(crate::privilege::claim_refusal(&origin))
                }
            });
            match refusal {
                None => return true,
                Some(r) => r,
            }
        };
        pg_sys::GUC_check_errcode(pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as i32);
        pg_sys::GUC_check_errdetail_string = palloc_str(&detail);
        pg_sys::GUC_check_errhint_string = palloc_str(&hint);
        false
    }
}

/// The check hook of `tributary.claims`: empty, or a JSON object's text
/// (see `crate::claims::check`).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_claims(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    use pgrx::pg_sys;
    // SAFETY: PostgreSQL passes a valid pointer to the new value (which may
    // be NULL); the error strings are palloc'd as guc.c expects.
    unsafe {
        let v = *newval;
        if v.is_null() {
            return true;
        }
        let text = std::ffi::CStr::from_ptr(v).to_string_lossy();
        let Err(bad) = crate::claims::check(&text) else {
            return true;
        };
        pg_sys::GUC_check_errcode(pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32);
        pg_sys::GUC_check_errdetail_string = palloc_str(&format!(
            "tributary.claims must be empty or a JSON object; {bad}."
        ));
        pg_sys::GUC_check_errhint_string = palloc_str(
            "Let sync_act_for_peer(peer, claims jsonb) set it, or SET tributary.claims = '{\"tenant\": \"t1\"}'; '' for none.",
        );
        false
    }
}

unsafe fn palloc_str(s: &str) -> *mut std::ffi::c_char {
    let c = std::ffi::CString::new(s.replace('\0', "")).unwrap_or_default();
    // SAFETY: copies into the current memory context.
    unsafe { pgrx::pg_sys::pstrdup(c.as_ptr()) }
}

/// The session's `tributary.claims` now ('' for none).
pub fn claims() -> String {
    CLAIMS
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// While alive, `tributary.claims` may be given other values; dropping it
/// restores the one it had, as a function's `SET` clause does (a GUC nest
/// level). An error unwinding past it leaves that to the (sub)transaction's
/// abort, which pops the level itself.
pub struct ClaimsSetting {
    level: i32,
}

impl ClaimsSetting {
    pub fn enter() -> ClaimsSetting {
        // SAFETY: opens a GUC nest level, closed by Drop or by the abort.
        ClaimsSetting {
            level: unsafe { pgrx::pg_sys::NewGUCNestLevel() },
        }
    }

    /// Sets the claims (checked by the setting's hook: 22023 for anything
    /// but '' or a JSON object).
    pub fn set(&self, claims: &str) {
        self.set_option(c"tributary.claims", claims)
    }

    /// Until the drop, statements prepared in this backend run their
    /// generic plan: one prepared for many claims sets is not planned again
    /// for each (a custom plan would be).
    pub fn generic_plans(&self) {
        self.set_option(c"plan_cache_mode", "force_generic_plan")
    }

    fn set_option(&self, name: &std::ffi::CStr, value: &str) {
        use pgrx::pg_sys;
        let value = CString::new(value.replace('\0', "")).unwrap_or_default();
        // SAFETY: both strings are NUL-terminated for the call; an error
        // is raised as an ERROR (elevel 0 with a session source).
        unsafe {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
    }
}

impl Drop for ClaimsSetting {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: closes the level opened by enter, restoring the value.
            unsafe { pgrx::pg_sys::AtEOXact_GUC(true, self.level) };
        }
    }
}
