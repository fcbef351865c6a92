//! Phase 5: the writes, set-based, in this order:
//!
//! ```text
//!  park        the parked changes into tributary.pending (unless retrying),
//!              with the caller as the role their replay acts as
//!  in apply mode (the row trigger leaves the engine's stamps as they are):
//!    insert    new keys, a plain INSERT in a subtransaction: if another
//!              transaction inserted one of them after the load, 40001
//!              (retry), never half-applied; any other unique violation is
//!              the table's own, reported as it is
//!    update    the locked rows, found by their ctid
//!    delete    under the peer's tributary.origin (the statement triggers
//!              tag it for the worker's echo guard)
//!    tombstones
//!  conflicts   logged; their ids go into the outcomes
//! ```
//!
//! (The changes parked for want of a row of this table are retried after
//! the scope check, by `super::apply`.)

use super::decide::ConflictRow;
use super::plan::{Rows, WritePlan};
use super::request::Request;
use super::{in_subtransaction, or_raise, params, raise, sql, Catch, Clock, OutcomeRow};
use crate::api::trigger::ApplyMode;
use crate::privilege::{self, as_state_owner};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// Writes the plan; returns the outcomes, with the conflicts' ids.
pub fn execute(
    client: &mut SpiClient<'_>,
    req: &Request,
    plan: WritePlan,
    clock: &Clock,
) -> Vec<OutcomeRow> {
    // Tributary's own state is written as its owner (crate::privilege),
    // by statements that call no user code; the user table as the caller.
    if let Some(parked) = plan.parked {
        let args = [
            parked.into(),
            req.tbl.into(),
            req.origin.clone().into(),
            privilege::caller().into(),
            req.claims.clone().into(),
        ];
        as_state_owner(|| or_raise(client.update(sql::PARK, None, &args)));
    }
    let apply_mode = ApplyMode::enter(req.tbl);
    insert(client, req, &plan.inserts, plan.xid);
    update(client, req, plan.updates, plan.xid);
    clock.tick("written");
    delete(client, req, &plan.deletes);
    if !plan.tombstones.is_empty() {
        let args = [
            format!("[{}]", plan.tombstones.join(",")).into(),
            req.tbl.into(),
        ];
        as_state_owner(|| {
            or_raise(client.update(sql::KEEP_TOMBSTONES, None, &args));
            or_raise(client.update(sql::STORE_TOMBSTONES, None, &args))
        });
    }
    drop(apply_mode);
    clock.tick("deleted");
    let mut outcomes = plan.outcomes;
    log_conflicts(client, req, &plan.conflicts, &mut outcomes);
    outcomes
}

/// Inserts the new keys' rows, in a subtransaction.
fn insert(client: &mut SpiClient<'_>, req: &Request, rows: &Rows, xid: i64) {
    if rows.is_empty() {
        return;
    }
    let sql = sql::insert_rows(&req.table);
    let args = rows.args(xid);
    let inserted = in_subtransaction(
        std::panic::AssertUnwindSafe(|| or_raise(client.update(&sql, None, &args)).len()),
        Catch::Only(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION),
    );
    let done = match inserted {
        Ok(n) => n,
        Err(e) => {
            // Which unique index: a key of this batch that exists now was
            // inserted meanwhile; anything else is the table's own
            // constraint, reported as it is.
            let keys: Vec<_> = req.table.pk.iter().map(|p| rows.cols[*p].param()).collect();
            let count = sql::count_rows(&req.table);
            let taken: i64 =
                or_raise(or_raise(client.select(&count, None, &keys)).first().get(1)).unwrap_or(0);
            if taken == 0 {
                e.rethrow()
            }
            0
        }
    };
    if done != rows.len() {
        raise(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            "could not apply the batch: another transaction inserted one of its keys meanwhile",
            format!(
                "A new row of {} already existed when written.",
                req.table.name
            ),
            "Retry the batch: nothing of it was applied.",
        );
    }
}

/// Updates the rows locked by the load, by their address, not their key.
fn update(client: &mut SpiClient<'_>, req: &Request, mut rows: Rows, xid: i64) {
    if rows.is_empty() {
        return;
    }
    let expected = rows.len();
    let ctids = std::mem::take(&mut rows.ctid);
    let mut args = rows.args(xid);
    args.push(ctids.into());
    let done = or_raise(client.update(&sql::update_rows(&req.table), None, &args)).len();
    if done != expected {
        pgrx::error!(
            "tributary: updated {done} of {expected} rows of {} that were locked for the batch",
            req.table.name
        );
    }
}

/// Deletes the rows of keys that died. The delete runs under the peer's
/// tributary.origin, so that the statement triggers tag it for the
/// worker's echo guard (a pgoutput delete carries only the key); the
/// caller's setting comes back after.
fn delete(client: &mut SpiClient<'_>, req: &Request, keys: &[String]) {
    if keys.is_empty() {
        return;
    }
    let swap = or_raise(client.update(sql::SWAP_ORIGIN, None, &[req.origin.clone().into()]));
    let prev: String = or_raise(swap.first().get(1)).unwrap_or_default();
    let sql = sql::delete_rows(&req.table.name, &req.pk_columns);
    or_raise(client.update(&sql, None, &[format!("[{}]", keys.join(",")).into()]));
    or_raise(client.update(sql::RESTORE_ORIGIN, None, &[prev.into()]));
}

/// Logs the conflicts, and puts their ids into the outcomes.
fn log_conflicts(
    client: &mut SpiClient<'_>,
    req: &Request,
    conflicts: &[ConflictRow],
    outcomes: &mut [OutcomeRow],
) {
    if conflicts.is_empty() {
        return;
    }
    let text = |f: fn(&ConflictRow) -> Option<&str>| params::text_array(conflicts.iter().map(f));
    let columns: Vec<String> = conflicts
        .iter()
        .map(|c| params::text_literal(&c.columns))
        .collect();
    let args = [
        req.tbl.into(),
        req.origin.clone().into(),
        text(|c| Some(&c.pk)),
        params::text_array(columns.iter().map(|c| Some(c.as_str()))),
        text(|c| c.local.as_deref()),
        text(|c| c.remote.as_deref()),
        params::int8_array(conflicts.iter().map(|c| c.local_version)),
        params::int8_array(conflicts.iter().map(|c| Some(c.remote_version))),
        text(|c| Some(c.remote_op)),
        text(|c| Some(c.interim)),
        text(|c| Some(&c.detail)),
    ];
    let ids = as_state_owner(|| or_raise(client.update(sql::LOG_CONFLICTS, None, &args)));
    for (c, r) in conflicts.iter().zip(ids) {
        outcomes[c.change].conflict_id = or_raise(r.get(1));
    }
}
