//! Where rows were: `tributary._on_move`, the AFTER UPDATE row trigger of a
//! table with a row filter (`zzz_tributary_moves`, installed by
//! `tributary._install_triggers` for the columns the filter reads, with a
//! WHEN that any of them changed). TG_ARGV: the number of key columns, the
//! key columns, the filter's columns.
//!
//! ```text
//!  as the caller:       the key (OLD's, when NEW's is the same) and the filter
//!                       columns' old values, as jsonb (converting them may run the
//!                       casts of the table's own types), OLD's sync_created_xid
//!  skipped when         the key changed (the old key got a tombstone with its
//!                       image; the new one starts afresh), or the row was created
//!                       in this transaction (nobody saw what it was)
//!  as the state owner:  INSERT INTO tributary.moves (relid, key, xid, before)
//!                       ON CONFLICT DO NOTHING: the first such update of a row in
//!                       a transaction keeps the values the transaction found
//! ```
//!
//! Only the trigger manager calls it, with real rows of the table it is
//! attached to. Plans are kept per backend, as the delete trigger's are.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tributary_core::quote;

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("tributary move trigger must be an AFTER UPDATE row trigger with its key and filter columns")]
    WrongEvent,
    #[error("tributary move trigger: {0}")]
    Trigger(#[from] pgrx::PgTriggerError),
}

#[pg_schema]
pub mod tributary {
    use super::MoveError;
    use pgrx::prelude::*;

    /// Volatile, called only as a trigger, not SECURITY DEFINER.
    #[pg_trigger]
    fn _on_move<'a>(
        trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, MoveError> {
        super::record(trigger)?;
        Ok(None)
    }
}

/// $1 OLD, $2 NEW (the table's row type): the key (as the pull API builds
/// it) and the filter columns' old values, when the key is the same and
/// OLD was not created by this transaction. Run as the caller. Built for
/// the trigger's columns: only they are converted, not the whole row.
fn image_sql(keys: &[String], filter: &[String]) -> String {
    let object = |cols: &[String]| {
        let pairs: Vec<String> = cols
            .iter()
            .map(|c| format!("{}, ($1).{}", quote::literal(c), quote::ident(c)))
            .collect();
        format!("jsonb_build_object({})", pairs.join(", "))
    };
    let same: Vec<String> = keys
        .iter()
        .map(|c| format!("($1).{0} IS NOT DISTINCT FROM ($2).{0}", quote::ident(c)))
        .collect();
    format!(
        "SELECT {}, {} WHERE {} AND ($1).sync_created_xid IS DISTINCT FROM pg_current_xact_id()::text::bigint",
        object(keys),
        object(filter),
        same.join(" AND ")
    )
}

/// $1 relid, $2 key, $3 the values before. Run as the state owner.
const STORE: &str = "\
INSERT INTO tributary.moves (relid, pk, xid, before)
VALUES ($1, $2, pg_current_xact_id()::text::bigint, coalesce($3, '{}'))
ON CONFLICT DO NOTHING";

/// The plans, kept for the backend: the image's per trigger (it names the
/// trigger's columns; a new filter or key makes a new trigger), the store's
/// once.
#[derive(Default)]
struct Plans {
    store: Option<Rc<OwnedPreparedStatement>>,
    images: HashMap<pg_sys::Oid, Rc<OwnedPreparedStatement>>,
}

thread_local! {
    static PLANS: RefCell<Plans> = RefCell::new(Plans::default());
}

fn image_plan(
    client: &pgrx::spi::SpiClient<'_>,
    trigger: pg_sys::Oid,
    reltype: pg_sys::Oid,
    (keys, filter): (&[String], &[String]),
) -> pgrx::spi::SpiResult<Rc<OwnedPreparedStatement>> {
    if let Some(p) = PLANS.with(|p| p.borrow().images.get(&trigger).cloned()) {
        return Ok(p);
    }
    let args = [reltype, reltype].map(PgOid::from);
    let plan = Rc::new(client.prepare(&image_sql(keys, filter), &args)?.keep());
    PLANS.with(|p| p.borrow_mut().images.insert(trigger, plan.clone()));
    Ok(plan)
}

fn store_plan(
    client: &pgrx::spi::SpiClient<'_>,
) -> pgrx::spi::SpiResult<Rc<OwnedPreparedStatement>> {
    if let Some(p) = PLANS.with(|p| p.borrow().store.clone()) {
        return Ok(p);
    }
    let args = [pg_sys::OIDOID, pg_sys::JSONBOID, pg_sys::JSONBOID].map(PgOid::from);
    let plan = Rc::new(client.prepare_mut(STORE, &args)?.keep());
    PLANS.with(|p| p.borrow_mut().store = Some(plan.clone()));
    Ok(plan)
}

/// The key columns and the filter's, from TG_ARGV.
fn columns(trigger: &pgrx::PgTrigger<'_>) -> Result<(Vec<String>, Vec<String>), MoveError> {
    let mut args = trigger.extra_args()?;
    let n: usize = args
        .first()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 1 && *n < args.len())
        .ok_or(MoveError::WrongEvent)?;
    let filter = args.split_off(n + 1);
    args.remove(0);
    Ok((args, filter))
}

fn record(trigger: &pgrx::PgTrigger<'_>) -> Result<(), MoveError> {
    if !matches!(trigger.when()?, pgrx::PgTriggerWhen::After)
        || !matches!(trigger.level(), pgrx::PgTriggerLevel::Row)
        || !matches!(trigger.op()?, pgrx::PgTriggerOperation::Update)
    {
        return Err(MoveError::WrongEvent);
    }
    let (keys, filter) = columns(trigger)?;
    let td = trigger.trigger_data();
    // SAFETY: called by the executor as an AFTER UPDATE row trigger: the
    // relation and both tuples are valid for the call; the copies are palloc'd.
    let (trigger_oid, relid, reltype, old, new) = unsafe {
        let rel = td.tg_relation;
        (
            (*td.tg_trigger).tgoid,
            (*rel).rd_id,
            (*(*rel).rd_rel).reltype,
            pg_sys::heap_copy_tuple_as_datum(td.tg_trigtuple, (*rel).rd_att),
            pg_sys::heap_copy_tuple_as_datum(td.tg_newtuple, (*rel).rd_att),
        )
    };
    Spi::connect_mut(|client| {
        // SAFETY: both images are datums of the table's row type.
        let args = unsafe {
            [
                DatumWithOid::new(old, reltype),
                DatumWithOid::new(new, reltype),
            ]
        };
        let image_plan = image_plan(client, trigger_oid, reltype, (&keys, &filter))?;
        let rows = client.select(&*image_plan, Some(1), &args)?;
        if rows.is_empty() {
            return Ok(());
        }
        let row = rows.first();
        let datum = |n: usize| -> pgrx::spi::SpiResult<DatumWithOid<'_>> {
            Ok(match row.get_datum_by_ordinal(n)? {
                // SAFETY: a jsonb datum, alive until the SPI connection ends.
                Some(d) => unsafe { DatumWithOid::new(d, pg_sys::JSONBOID) },
                None => DatumWithOid::null_oid(pg_sys::JSONBOID),
            })
        };
        let store = [relid.into(), datum(1)?, datum(2)?];
        let store_plan = store_plan(client)?;
        crate::privilege::as_state_owner(|| client.update(&*store_plan, None, &store))?;
        Ok::<_, pgrx::spi::SpiError>(())
    })
    .unwrap_or_else(|e| pgrx::error!("tributary: recording where a row was failed: {e}"));
    Ok(())
}
