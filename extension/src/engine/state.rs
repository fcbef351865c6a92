//! Tributary's own state, written outside an apply: closing a conflict.
//! Like every write of tributary.* state, it runs as the state's owner
//! (crate::privilege) after checking the caller's privileges itself.

use super::{check_may_run, or_raise, raise, sql};
use crate::privilege::{self, as_state_owner};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// Marks conflict `id` resolved with `resolution`, for a caller that may
/// run sync_resolve_conflict and UPDATE the conflict's table.
pub fn close_conflict(client: &mut SpiClient<'_>, id: Option<i64>, resolution: Option<String>) {
    crate::release::check_sql_current(client, "sync_resolve_conflict");
    check_may_run(client, &["sync_resolve_conflict"]);
    let Some(id) = id else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "conflict id must not be NULL",
            "Got NULL.".into(),
            "See SELECT id FROM sync_conflicts WHERE status = 'open'.",
        )
    };
    let row = as_state_owner(|| {
        or_raise(client.update(sql::LOCK_CONFLICT, Some(1), &[id.into()])).first()
    });
    let relid: Option<pg_sys::Oid> = or_raise(row.get(1));
    let status: Option<String> = or_raise(row.get(2));
    let caller = privilege::caller();
    // SAFETY: an ACL check of the caller on the conflict's table.
    let may_update = relid.is_some_and(|r| unsafe {
        pg_sys::pg_class_aclcheck(r, caller, pg_sys::ACL_UPDATE as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    });
    if !may_update {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            &format!("permission denied to resolve conflict {id}"),
            format!(
                "Role {} may not UPDATE the table of conflict {id}, or it does not exist.",
                privilege::role_name(caller)
            ),
            "A conflict is resolved by a role that may write its table.",
        )
    }
    if status.as_deref() != Some("open") {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            &format!("conflict {id} is already resolved"),
            "Another transaction resolved it first.".into(),
            "Nothing to do; see sync_conflicts.",
        )
    }
    let args = [id.into(), resolution.into()];
    as_state_owner(|| or_raise(client.update(sql::CLOSE_CONFLICT, None, &args)));
}
