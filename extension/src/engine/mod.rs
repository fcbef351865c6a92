//! The engine behind `sync_apply` (`tributary._apply`, api/apply.rs), in
//! phases: each a type, and a function that makes it from the previous.
//!
//! ```text
//!  tbl, changes (jsonb), origin
//!   │ request::read     caller may apply; table tracked; origin; policy and
//!   │                   peers; the batch checked and typed in one pass
//!   ▼                   (batch.rs); keys numbered by first appearance
//!  Request
//!   │ load::load        the table's apply lock (one applier at a time); per
//!   ▼                   key: its live row (FOR UPDATE, with its ctid), its tombstone
//!  Loaded
//!   │ decide::decide    every change in order, in memory (tributary_core::
//!   │                   resolver; duplicates of a key see each other's effect)
//!   │ park::orphans     keys whose parent row is missing: DEFERRED, kept as loaded
//!   ▼
//!  Decisions
//!   │ scope::check_*    a scoped session (tributary.claims set) on a table with a
//!   │                   row filter: the keys' rows (after load), the parked rows
//!   │                   (after park) and the written rows (after execute) must
//!   │                   be admitted, or 42501 and nothing applied
//!   │ plan::plan        what changed, as statement parameters: one text array
//!   ▼                   per column, stamps, colmeta; deletes, tombstones, conflicts
//!  WritePlan
//!   │ execute::execute  park; in apply mode: INSERT new keys (subtransaction:
//!   │                   a key inserted meanwhile is 40001), UPDATE by ctid,
//!   │                   DELETE, tombstones; log conflicts
//!   │ replay::replay    retry the changes parked for want of a row of this table
//!   ▼
//!  Applied: one OutcomeRow per change, and the keys' texts
//! ```
//!
//! Values are compared as canonical JSON text (what `row_json` prints), and
//! travel to the writing statements as their input text, one text array per
//! column, cast by the statement. All SQL text is in `sql`; the parameter
//! arrays are built in `params`. Phase timings are logged at DEBUG1.

mod batch;
mod decide;
mod execute;
mod load;
mod params;
mod park;
mod plan;
pub mod replay;
mod request;
mod scope;
mod sql;
mod state;

pub use state::close_conflict;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use tributary_core::jsontext;

/// Hash maps keyed by the batch's keys: foldhash (fast, seeded per
/// process) instead of SipHash, which was a tenth of the engine's own time.
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One change's result, a row of `_apply`'s result.
pub struct OutcomeRow {
    /// The change's key, by number (see `Applied::keys`).
    pub key: usize,
    pub outcome: &'static str,
    pub row_version: Option<i64>,
    pub conflict_id: Option<i64>,
    pub detail: String,
}

/// The engine's result: an outcome per change, in batch order.
pub struct Applied {
    pub outcomes: Vec<OutcomeRow>,
    /// Each key's jsonb text, by number.
    pub keys: Vec<String>,
}

/// Applies a batch of changes to the table `tbl` (`changes` and `origin`
/// as the call received them; NULL is None).
pub fn apply(
    client: &mut SpiClient<'_>,
    tbl: pg_sys::Oid,
    changes: Option<pg_sys::Datum>,
    origin: Option<&str>,
) -> Applied {
    let clock = Clock(std::time::Instant::now());
    let req = request::read(client, tbl, changes, origin);
    clock.tick("typed");
    let loaded = load::load(client, &req, &clock);
    clock.tick("loaded");
    if let Some(s) = &req.scope {
        scope::check_current(client, &req, &loaded, s);
    }
    let mut decisions = decide::decide(client, &req, &loaded);
    clock.tick("decided");
    park::orphans(client, &req, &loaded, &mut decisions);
    clock.tick("fk");
    if let Some(s) = &req.scope {
        scope::check_parked(client, &req, &loaded, &decisions, s);
    }
    let plan = plan::plan(&req, &loaded, decisions);
    clock.tick("built");
    let outcomes = execute::execute(client, &req, plan, &clock);
    if let Some(s) = &req.scope {
        scope::check_written(client, &req, s);
    }
    if !req.retrying {
        replay::replay(client, Some(req.tbl), true);
    }
    clock.tick("done");
    Applied {
        outcomes,
        keys: req.keys.text,
    }
}

/// Raises 42501 unless the caller may execute one of the API `functions`:
/// the internal functions behind them are callable by anyone, but act only
/// for those.
pub fn check_may_run(client: &SpiClient<'_>, functions: &[&str]) {
    let names: Vec<String> = functions.iter().map(|f| f.to_string()).collect();
    let allowed: Option<bool> = or_raise(
        or_raise(client.select(sql::CALLER_MAY_RUN, None, &[names.into()]))
            .first()
            .get(1),
    );
    if allowed != Some(true) {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for function {}", functions[0]),
            function_name!(),
        )
        .set_detail(format!(
            "Tributary's internal functions act only for roles that may execute {}.",
            functions.join(" or ")
        ))
        .set_hint(format!(
            "GRANT EXECUTE ON FUNCTION {} TO the role.",
            functions[0]
        ))
        .report(PgLogLevel::ERROR);
    }
}

/// Phase timings, at DEBUG1 (SET client_min_messages = debug1 to see them).
struct Clock(std::time::Instant);

impl Clock {
    fn tick(&self, phase: &str) {
        pgrx::debug1!(
            "tributary: sync_apply {} after {:?}",
            phase,
            self.0.elapsed()
        )
    }
}

/// The value of an SPI call; its failure raises.
fn or_raise<T>(r: pgrx::spi::SpiResult<T>) -> T {
    r.unwrap_or_else(|e| pgrx::error!("tributary: internal query failed: {e}"))
}

/// Raises an error of sync_apply's with its SQLSTATE, DETAIL and HINT.
fn raise(code: PgSqlErrorCode, message: &str, detail: String, hint: &str) -> ! {
    ErrorReport::new(code, message.to_string(), "sync_apply")
        .set_detail(detail)
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!()
}

/// A JSON object text from canonical value texts.
fn object_text<'a>(cells: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = Vec::new();
    out.push(b'{');
    for (i, (k, v)) in cells.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        jsontext::push_string(&mut out, k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'}');
    String::from_utf8_lossy(&out).into_owned()
}

/// Which errors `in_subtransaction` hands back; the others propagate.
pub(crate) enum Catch {
    Only(PgSqlErrorCode),
    All,
}

/// Runs `f` in a subtransaction. An error `catch` names rolls the
/// subtransaction back and is returned; any other error propagates.
pub(crate) fn in_subtransaction<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe,
    catch: Catch,
) -> Result<R, Box<pg_sys::panic::CaughtError>> {
    use pg_sys::panic::CaughtError;
    // SAFETY: the PL/pgSQL pattern for an exception block: begin, and on
    // error roll back, restoring the memory context and resource owner.
    let (cxt, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
    }
    let restore = move || unsafe {
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
    };
    PgTryBuilder::new(move || {
        let r = f();
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        restore();
        Ok(r)
    })
    .catch_others(move |e| {
        unsafe {
            pg_sys::MemoryContextSwitchTo(cxt);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        restore();
        let wanted = match catch {
            Catch::All => true,
            Catch::Only(code) => matches!(
                &e,
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r)
                    if r.sql_error_code() == code
            ),
        };
        if wanted {
            Err(Box::new(e))
        } else {
            e.rethrow()
        }
    })
    .execute()
}
