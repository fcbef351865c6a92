//! Parked changes, replayed (`sync_retry_pending`, and `sync_apply` for
//! the changes waiting for a row of the table it wrote).
//!
//! ```text
//!  lock   the pending rows, oldest first, as the state owner (SKIP LOCKED:
//!         a concurrent replay takes the others)
//!  each   in a subtransaction of its own, acting as the role that parked it,
//!         with the claims it had (tributary.claims: its row filter applies):
//!         the engine again, for that one change, under its origin
//!           DEFERRED ....... one more attempt; tributary.max_retries make it dead
//!           any outcome .... done: the row goes
//!           an error ....... the same (DEFERRED, the error as its detail); the
//!                            others go on
//! ```
//!
//! A change is replayed with the identity and privileges of whoever parked
//! it, never those of whoever happens to write its parent: a forged or
//! stale change cannot borrow the retrier's privileges, and one peer's bad
//! change cannot fail another peer's sync_apply. A change whose parker is
//! unknown (parked before 0.5.0) or gone becomes a dead letter.

use super::{or_raise, sql, Catch};
use crate::privilege::{self, as_state_owner};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use tributary_core::resolver::Outcome;

thread_local! {
    static REPLAYING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a replay runs the engine now: it parks nothing more and
/// replays nothing in turn.
pub fn replaying() -> bool {
    REPLAYING.with(|r| r.get())
}

struct Replaying;

impl Replaying {
    fn enter() -> Replaying {
        REPLAYING.with(|r| r.set(true));
        Replaying
    }
}

impl Drop for Replaying {
    fn drop(&mut self) {
        REPLAYING.with(|r| r.set(false));
    }
}

/// One replayed change, a row of `_replay_parked`.
pub struct Replayed {
    pub id: i64,
    pub relid: pg_sys::Oid,
    pub pk: String,
    pub outcome: String,
    pub attempts: i32,
    pub detail: Option<String>,
}

struct Parked {
    id: i64,
    relid: pg_sys::Oid,
    pk: String,
    origin: String,
    change: String,
    parker: Option<pg_sys::Oid>,
    attempts: i32,
    /// The parker's tributary.claims ('' for none).
    claims: String,
}

/// Replays the parked changes of `tbl` and of the tables waiting for it
/// (all with None). `waiting_only`: only if some wait for `tbl` (sync_apply's
/// cheap check). Returns what happened to those of tables the caller may read.
pub fn replay(
    client: &mut SpiClient<'_>,
    tbl: Option<pg_sys::Oid>,
    waiting_only: bool,
) -> Vec<Replayed> {
    if replaying() {
        return Vec::new();
    }
    let parked = as_state_owner(|| {
        if waiting_only {
            let waiting: bool = or_raise(
                or_raise(client.select(sql::ANY_WAITING, None, &[tbl.into()]))
                    .first()
                    .get(1),
            )
            .unwrap_or(false);
            if !waiting {
                return Vec::new();
            }
        }
        or_raise(client.update(sql::LOCK_PARKED, None, &[tbl.into()]))
            .map(|r| Parked {
                id: or_raise(r.get(1)).unwrap_or_default(),
                relid: or_raise(r.get(2)).unwrap_or(pg_sys::InvalidOid),
                pk: or_raise(r.get(3)).unwrap_or_default(),
                origin: or_raise(r.get(4)).unwrap_or_default(),
                change: or_raise(r.get(5)).unwrap_or_default(),
                parker: or_raise(r.get(6)),
                attempts: or_raise(r.get(7)).unwrap_or(1),
                claims: or_raise(r.get(8)).unwrap_or_default(),
            })
            .collect::<Vec<_>>()
    });
    let cap = crate::api::guc::MAX_RETRIES.get();
    let retrier = privilege::caller();
    let _replaying = Replaying::enter();
    let mut out = Vec::new();
    for p in parked {
        let (outcome, detail) = replay_one(client, &p);
        let attempts = settle(client, &p, &outcome, detail.as_deref(), cap);
        // SAFETY: an ACL check of the retrier on the table.
        let readable = unsafe {
            pg_sys::pg_class_aclcheck(p.relid, retrier, pg_sys::ACL_SELECT as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK
        };
        if readable {
            out.push(Replayed {
                id: p.id,
                relid: p.relid,
                pk: p.pk,
                outcome: attempts.1,
                attempts: attempts.0,
                detail,
            });
        }
    }
    out
}

/// The change's outcome and detail; a replay that failed is DEFERRED,
/// with the error as its detail.
fn replay_one(client: &mut SpiClient<'_>, p: &Parked) -> (String, Option<String>) {
    let deferred = Outcome::Deferred.as_str().to_string();
    let Some(parker) = p.parker.filter(|r| role_exists(*r)) else {
        return (
            deferred,
            Some(
                "the role that parked it is unknown or no longer exists: replay it by hand".into(),
            ),
        );
    };
    let args = [
        p.relid.into(),
        p.change.clone().into(),
        p.origin.clone().into(),
    ];
    let run = std::panic::AssertUnwindSafe(|| {
        let claims = crate::api::guc::ClaimsSetting::enter();
        claims.set(&p.claims);
        let _acting = privilege::act_as(parker);
        let r = or_raise(client.update(sql::REPLAY, Some(1), &args)).first();
        let outcome: Option<String> = or_raise(r.get(1));
        let detail: Option<String> = or_raise(r.get(2));
        (outcome.unwrap_or_default(), detail)
    });
    match super::in_subtransaction(run, Catch::All) {
        Ok(r) => r,
        Err(e) => {
            let message = match *e {
                pg_sys::panic::CaughtError::PostgresError(ref r)
                | pg_sys::panic::CaughtError::ErrorReport(ref r) => {
                    format!("{}: {}", sqlstate(r.sql_error_code() as i32), r.message())
                }
                pg_sys::panic::CaughtError::RustPanic { ref ereport, .. } => {
                    ereport.message().to_string()
                }
            };
            (deferred, Some(message))
        }
    }
}

/// Records the attempt: the row goes when the change was applied, stays
/// with one more attempt otherwise (dead after `cap`). Returns the
/// attempts and the outcome to report.
fn settle(
    client: &mut SpiClient<'_>,
    p: &Parked,
    outcome: &str,
    detail: Option<&str>,
    cap: i32,
) -> (i32, String) {
    let attempts = p.attempts + 1;
    if outcome != Outcome::Deferred.as_str() {
        as_state_owner(|| or_raise(client.update(sql::UNPARK, None, &[p.id.into()])));
        return (attempts, outcome.to_string());
    }
    let dead = attempts >= cap || p.parker.is_none();
    let args = [p.id.into(), detail.into(), dead.into()];
    as_state_owner(|| or_raise(client.update(sql::RETRIED, None, &args)));
    let outcome = if dead {
        Outcome::DeadLetter.as_str()
    } else {
        outcome
    };
    (attempts, outcome.to_string())
}

fn role_exists(role: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup by oid.
    unsafe {
        pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::AUTHOID as i32,
            role.into(),
            0.into(),
            0.into(),
            0.into(),
        )
    }
}

/// A packed SQLSTATE (MAKE_SQLSTATE) as its five characters.
fn sqlstate(code: i32) -> String {
    (0..5)
        .map(|i| char::from((((code >> (6 * i)) & 0x3F) as u8) + b'0'))
        .collect()
}
