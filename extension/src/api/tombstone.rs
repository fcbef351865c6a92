//! The delete path: `tributary._on_delete`, a BEFORE row trigger that keeps
//! a tombstone for a deleted row, and for the old key of a row whose key
//! changed. TG_ARGV holds the primary key column names, then, on a table
//! with a row filter, an empty string: before a tombstone of the key is
//! overwritten, its image goes to tributary.moves (`tributary._keep_tombstones`),
//! so that where the key's earlier incarnation was stays known.
//!
//! ```text
//!  as the caller:       the row's image, key and stamps (to_jsonb may run the
//!                       casts of the table's own types: the deleter's code, run
//!                       with the deleter's privileges, as any trigger of theirs)
//!  as the state owner:  the upsert into tributary.tombstones, of those values,
//!                       bound (crate::privilege): nobody else may write it;
//!                       with a row filter, the overwritten image kept first
//! ```
//!
//! A BEFORE row trigger, fired inside the statement that deletes: one that
//! a trigger runs (an ON DELETE CASCADE) fires it at depth 2, so its
//! tombstone is the hub's own, not the origin's. (An AFTER row trigger of a
//! cascade fires later, at the outer statement's depth, and could not tell.)
//! Only the trigger manager calls it, with a row really being deleted from
//! the table it is attached to: its values cannot be forged from SQL.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Debug, thiserror::Error)]
pub enum TombstoneError {
    #[error("tributary delete trigger must be a BEFORE DELETE or UPDATE row trigger")]
    WrongEvent,
    #[error("tributary delete trigger: {0}")]
    Trigger(#[from] pgrx::PgTriggerError),
}

#[pg_schema]
pub mod tributary {
    use super::TombstoneError;
    use pgrx::prelude::*;

    /// Volatile, called only as a trigger, not SECURITY DEFINER.
    #[pg_trigger]
    fn _on_delete<'a>(
        trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TombstoneError> {
        super::tombstone(trigger)?;
        match trigger.op()? {
            pgrx::PgTriggerOperation::Delete => Ok(trigger.old()),
            pgrx::PgTriggerOperation::Update => Ok(trigger.new()),
            _ => Err(TombstoneError::WrongEvent),
        }
    }
}

/// $1 the deleted row (the table's row type), $2 the key columns: the key,
/// the image without Tributary's columns, the tombstone's revision and the
/// row's stamps. Run as the caller.
const IMAGE: &str = "\
SELECT (SELECT jsonb_object_agg(c, i.img -> c) FROM unnest($2::text[]) AS c),
       i.img - '{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[],
       coalesce((i.img ->> 'sync_version')::bigint, 0) + 1,
       ($1).sync_colmeta, ($1).sync_origin, ($1).sync_created_xid
  FROM (SELECT to_jsonb($1) AS img) AS i";

/// $1 relid, $2 key, $3 revision, $4 origin, $5 image, $6 colmeta,
/// $7 row origin, $8 created xid. Run as the state owner.
const STORE: &str = "\
INSERT INTO tributary.tombstones AS t
       (relid, pk, xid, version, origin, deleted_at, data, colmeta, row_origin, created_xid)
VALUES ($1, $2, pg_current_xact_id()::text::bigint, $3, $4, now(), $5, $6, $7, $8)
ON CONFLICT (relid, pk) DO UPDATE
    SET xid = excluded.xid, version = excluded.version, origin = excluded.origin,
        deleted_at = excluded.deleted_at, data = excluded.data, colmeta = excluded.colmeta,
        row_origin = excluded.row_origin, created_xid = excluded.created_xid";

/// $1 relid, $2 key. Run as the state owner, before STORE, on a table
/// with a row filter.
const KEEP: &str = "SELECT tributary._keep_tombstones($1, ARRAY[$2])";

/// The statements' plans, kept for the backend: parsing and planning two
/// statements per deleted row cost five times the old PL/pgSQL trigger
/// (bench/delete_overhead). IMAGE takes the table's row type, so it has a
/// plan per table; PostgreSQL revalidates kept plans after DDL.
#[derive(Default)]
struct Plans {
    store: Option<Rc<OwnedPreparedStatement>>,
    keep: Option<Rc<OwnedPreparedStatement>>,
    images: HashMap<pg_sys::Oid, Rc<OwnedPreparedStatement>>,
}

thread_local! {
    static PLANS: RefCell<Plans> = RefCell::new(Plans::default());
}

fn image_plan(
    client: &pgrx::spi::SpiClient<'_>,
    reltype: pg_sys::Oid,
) -> pgrx::spi::SpiResult<Rc<OwnedPreparedStatement>> {
    if let Some(p) = PLANS.with(|p| p.borrow().images.get(&reltype).cloned()) {
        return Ok(p);
    }
    let args = [PgOid::from(reltype), PgOid::from(pg_sys::TEXTARRAYOID)];
    let plan = Rc::new(client.prepare(IMAGE, &args)?.keep());
    PLANS.with(|p| p.borrow_mut().images.insert(reltype, plan.clone()));
    Ok(plan)
}

fn store_plan(
    client: &pgrx::spi::SpiClient<'_>,
) -> pgrx::spi::SpiResult<Rc<OwnedPreparedStatement>> {
    if let Some(p) = PLANS.with(|p| p.borrow().store.clone()) {
        return Ok(p);
    }
    let args = [
        pg_sys::OIDOID,
        pg_sys::JSONBOID,
        pg_sys::INT8OID,
        pg_sys::TEXTOID,
        pg_sys::JSONBOID,
        pg_sys::BYTEAOID,
        pg_sys::TEXTOID,
        pg_sys::INT8OID,
    ]
    .map(PgOid::from);
    let plan = Rc::new(client.prepare_mut(STORE, &args)?.keep());
    PLANS.with(|p| p.borrow_mut().store = Some(plan.clone()));
    Ok(plan)
}

fn keep_plan(
    client: &pgrx::spi::SpiClient<'_>,
) -> pgrx::spi::SpiResult<Rc<OwnedPreparedStatement>> {
    if let Some(p) = PLANS.with(|p| p.borrow().keep.clone()) {
        return Ok(p);
    }
    let args = [pg_sys::OIDOID, pg_sys::JSONBOID].map(PgOid::from);
    let plan = Rc::new(client.prepare_mut(KEEP, &args)?.keep());
    PLANS.with(|p| p.borrow_mut().keep = Some(plan.clone()));
    Ok(plan)
}

fn tombstone(trigger: &pgrx::PgTrigger<'_>) -> Result<(), TombstoneError> {
    if !matches!(trigger.when()?, pgrx::PgTriggerWhen::Before)
        || !matches!(trigger.level(), pgrx::PgTriggerLevel::Row)
    {
        return Err(TombstoneError::WrongEvent);
    }
    let mut keys = trigger.extra_args()?;
    let filtered = keys.last().is_some_and(|k| k.is_empty());
    if filtered {
        keys.pop();
    }
    let td = trigger.trigger_data();
    // SAFETY: called by the executor as a row trigger: the relation and the
    // old tuple are valid for the call; the copy is palloc'd.
    let (relid, reltype, image) = unsafe {
        let rel = td.tg_relation;
        (
            (*rel).rd_id,
            (*(*rel).rd_rel).reltype,
            pg_sys::heap_copy_tuple_as_datum(td.tg_trigtuple, (*rel).rd_att),
        )
    };
    // SAFETY: reads the session's origin setting.
    let (_, origin) = unsafe { crate::api::trigger::origin_stamp() };
    let origin = (!origin.is_empty()).then_some(origin);
    Spi::connect_mut(|client| {
        // SAFETY: the image is a datum of the table's row type.
        let args = unsafe { [DatumWithOid::new(image, reltype), keys.into()] };
        let image_plan = image_plan(client, reltype)?;
        let row = client.select(&*image_plan, Some(1), &args)?.first();
        let datum = |n: usize, oid: pg_sys::Oid| -> pgrx::spi::SpiResult<DatumWithOid<'_>> {
            Ok(match row.get_datum_by_ordinal(n)? {
                // SAFETY: a datum of that column's type, alive until the
                // SPI connection ends.
                Some(d) => unsafe { DatumWithOid::new(d, oid) },
                None => DatumWithOid::null_oid(oid),
            })
        };
        let store = [
            relid.into(),
            datum(1, pg_sys::JSONBOID)?,
            datum(3, pg_sys::INT8OID)?,
            origin.into(),
            datum(2, pg_sys::JSONBOID)?,
            datum(4, pg_sys::BYTEAOID)?,
            datum(5, pg_sys::TEXTOID)?,
            datum(6, pg_sys::INT8OID)?,
        ];
        let store_plan = store_plan(client)?;
        let keep = if filtered {
            Some((
                keep_plan(client)?,
                [relid.into(), datum(1, pg_sys::JSONBOID)?],
            ))
        } else {
            None
        };
        crate::privilege::as_state_owner(|| {
            if let Some((plan, args)) = &keep {
                client.update(&**plan, None, args)?;
            }
            client.update(&*store_plan, None, &store)
        })?;
        Ok::<_, pgrx::spi::SpiError>(())
    })
    .unwrap_or_else(|e| pgrx::error!("tributary: storing a tombstone failed: {e}"));
    Ok(())
}
