//! Who acts, and who may speak for a peer.
//!
//! ```text
//!  caller (SECURITY INVOKER)      the user table: its privileges apply;
//!                                 user code (triggers, casts, defaults) runs as the caller
//!  state owner (act_as)           tributary.tombstones / conflicts / pending: only their
//!                                 owner writes them, in statements that call no user code
//!  table owner (act_as)           a custom resolver function (it must own it too)
//!  parker (act_as)                the replay of a parked change
//! ```
//!
//! The switch is PostgreSQL's own for such cases (foreign-key checks,
//! REFRESH MATERIALIZED VIEW): `SetUserIdAndSecContext` with a local user
//! change and a restricted operation, undone when the guard drops, also when
//! an error unwinds, and by PostgreSQL itself when a (sub)transaction aborts.
//! No SQL-callable function takes the role to switch to: the engine decides.
//!
//! A peer's name (an origin) is claimed by a role registered for it with
//! `sync_set_peer(name, priority, role)`, by its members, and by superusers;
//! the empty origin (the hub's own writes) by anyone.

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use tributary_core::quote;

/// While alive, the backend acts as another role; dropping it switches back.
pub struct Acting {
    prev_user: Oid,
    prev_context: i32,
}

/// Acts as `role` until the guard drops.
pub fn act_as(role: Oid) -> Acting {
    let (mut prev_user, mut prev_context) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads and sets backend-local state; the guard restores it.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut prev_user, &mut prev_context);
        pg_sys::SetUserIdAndSecContext(
            role,
            prev_context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    Acting {
        prev_user,
        prev_context,
    }
}

impl Drop for Acting {
    fn drop(&mut self) {
        // SAFETY: restores what act_as saved.
        unsafe { pg_sys::SetUserIdAndSecContext(self.prev_user, self.prev_context) };
    }
}

/// The role the current statement runs as.
pub fn caller() -> Oid {
    // SAFETY: reads backend-local state.
    unsafe { pg_sys::GetUserId() }
}

/// The owner of Tributary's state tables (the extension's owner).
pub fn state_owner() -> Oid {
    // SAFETY: catalog lookups by name.
    let rel = unsafe {
        let ns = pg_sys::get_namespace_oid(c"tributary".as_ptr(), false);
        pg_sys::get_relname_relid(c"tombstones".as_ptr(), ns)
    };
    if rel == pg_sys::InvalidOid {
        error!("tributary: tributary.tombstones is missing; reinstall the extension");
    }
    rel_owner(rel)
}

/// Runs `f` as the owner of Tributary's state. `f` must run only statements
/// on tributary.* with built-in functions and bound values.
pub fn as_state_owner<R>(f: impl FnOnce() -> R) -> R {
    let _acting = act_as(state_owner());
    f()
}

/// The owner of a relation.
pub fn rel_owner(rel: Oid) -> Oid {
    // SAFETY: the relation is opened without a lock only to read its owner.
    unsafe {
        let r = pg_sys::RelationIdGetRelation(rel);
        if r.is_null() {
            error!("tributary: relation {} does not exist", rel.to_u32());
        }
        let owner = (*(*r).rd_rel).relowner;
        pg_sys::RelationClose(r);
        owner
    }
}

/// Whether the current role may write as the peer `origin`.
pub fn may_claim(client: &pgrx::spi::SpiClient<'_>, origin: &str) -> bool {
    let user = caller();
    // SAFETY: catalog lookup of the current role.
    if origin.is_empty() || unsafe { pg_sys::superuser_arg(user) } {
        return true;
    }
    // SAFETY: a catalog lookup; without the extension, no peer is known,
    // and against an older release's SQL, none can be checked.
    if unsafe { pg_sys::get_namespace_oid(c"tributary".as_ptr(), true) } == pg_sys::InvalidOid
        || crate::release::sql_behind(client).is_some()
    {
        return false;
    }
    let role: Option<Oid> = client
        .select(
            "SELECT role::oid FROM tributary.peers WHERE name = $1",
            Some(1),
            &[origin.into()],
        )
        .ok()
        .and_then(|t| t.first().get(1).ok().flatten());
    // SAFETY: catalog lookup of role membership.
    role.is_some_and(|r| unsafe { pg_sys::is_member_of_role(user, r) })
}

/// The name of a role, for messages.
pub fn role_name(role: Oid) -> String {
    // SAFETY: returns a palloc'd copy or NULL.
    unsafe {
        let p = pg_sys::GetUserNameFromId(role, true);
        if p.is_null() {
            format!("role {}", role.to_u32())
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// Why a claim is refused, and how to allow it: (detail, hint).
pub fn claim_refusal(origin: &str) -> (String, String) {
    let me = role_name(caller());
    // A role as regrole reads it: quoted only when it must be.
    let plain = me
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !me.starts_with(|c: char| c.is_ascii_digit());
    let role = if plain { me.clone() } else { quote::ident(&me) };
    (
        format!(
            "Role {role} may not speak for peer {}: the peer is registered for another role, or not at all.",
            quote::literal(origin)
        ),
        format!(
            "As an admin: SELECT sync_set_peer({}, <priority>, {}).",
            quote::literal(origin),
            quote::literal(&role)
        ),
    )
}

/// Raises 42501 unless the current role may claim `origin`.
pub fn check_claim(client: &pgrx::spi::SpiClient<'_>, origin: &str, function: &'static str) {
    if may_claim(client, origin) {
        return;
    }
    let (detail, hint) = claim_refusal(origin);
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "permission denied to write as peer {}",
            quote::literal(origin)
        ),
        function,
    )
    .set_detail(detail)
    .set_hint(hint)
    .report(PgLogLevel::ERROR);
}
