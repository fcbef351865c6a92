//! `sync_claim(name)`: one claim of `tributary.claims`, the verified
//! token's claims that `sync_act_for_peer` sets for a request's
//! transaction. Read by row filters and RLS policies, so once per row: the
//! setting's text is split once per value (`crate::claims`), and each call
//! is a lookup.

use crate::claims::Claims;
use pgrx::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// The claims of the setting's last value seen by this backend.
    static SEEN: RefCell<Option<Claims>> = const { RefCell::new(None) };
}

/// The claim `name`: a JSON string gives its value; a number, boolean,
/// object or array gives its JSON text; absent, null, or no claims give
/// NULL. STABLE (as `current_setting` is), STRICT,
/// PARALLEL SAFE (parallel workers get the leader's setting), not SECURITY
/// DEFINER.
///
/// Trust: the gateway sets the claims from a token it verified, but any
/// session may set its own (`SET tributary.claims`): claims are only as
/// trustworthy as the role reading them. Roles the gateway acts as should
/// be NOLOGIN, so that no one but the gateway speaks as them.
#[pg_extern(
    stable,
    strict,
    parallel_safe,
    sql = r#"
CREATE FUNCTION sync_claim(name text) RETURNS text
STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'sync_claim_wrapper';
COMMENT ON FUNCTION sync_claim(text) IS
  'A claim of the request''s verified token (tributary.claims, set by sync_act_for_peer), for row filters and RLS policies. NULL if absent.';
"#
)]
fn sync_claim(name: &str) -> Option<String> {
    // SAFETY: the setting's variable is a NUL-terminated string owned by
    // guc.c (or NULL), valid for the duration of this call.
    let text = unsafe {
        let p = *crate::api::guc::CLAIMS.as_ptr();
        if p.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy()
    };
    if text.is_empty() {
        return None;
    }
    SEEN.with(|seen| {
        let mut seen = seen.borrow_mut();
        if !seen.as_ref().is_some_and(|c| c.is_of(&text)) {
            *seen = Some(Claims::parse(&text));
        }
        seen.as_ref().and_then(|c| c.get(name)).map(str::to_owned)
    })
}
