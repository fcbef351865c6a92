//! `tributary._apply`: the SQL surface of the engine behind `sync_apply`
//! (sql/apply.sql). The engine itself, in phases, is `crate::engine`.

use crate::engine;
use pgrx::prelude::*;

/// A key as jsonb text, returned as jsonb.
pub struct KeyJson(String);

impl IntoDatum for KeyJson {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let c = std::ffi::CString::new(self.0).ok()?;
        unsafe { pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(c.as_ptr().into())]) }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

pgrx::impl_sql_translatable!(KeyJson, "jsonb");

// SAFETY: returns the datum into_datum built, or NULL.
unsafe impl pgrx::callconv::BoxRet for KeyJson {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        match self.into_datum() {
            Some(d) => unsafe { fcinfo.return_raw_datum(d) },
            None => fcinfo.return_null(),
        }
    }
}

#[pg_schema]
pub mod tributary {
    use super::*;

    /// The engine behind `sync_apply` (sql/apply.sql, which checks that the
    /// table is tracked first). VOLATILE, not strict, not SECURITY
    /// DEFINER (the caller's privileges on the table apply; internal tables
    /// are guarded by row-level security). Executable by anyone, it acts
    /// only for roles that may run sync_apply.
    #[pg_extern(
        volatile,
        sql = r#"
CREATE FUNCTION tributary._apply(tbl regclass, changes jsonb, origin text)
RETURNS TABLE (pk jsonb, outcome text, row_version bigint, conflict_id bigint, detail text)
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', '_apply_wrapper';
"#
    )]
    // pgrx generates the SQL from the spelled-out TableIterator type, so it
    // cannot hide behind an alias.
    #[allow(clippy::type_complexity)]
    fn _apply(
        tbl: Option<pg_sys::Oid>,
        fcinfo: pg_sys::FunctionCallInfo,
    ) -> TableIterator<
        'static,
        (
            name!(pk, KeyJson),
            name!(outcome, &'static str),
            name!(row_version, Option<i64>),
            name!(conflict_id, Option<i64>),
            name!(detail, String),
        ),
    > {
        // `changes` (jsonb) and `origin` are read from the call frame: the
        // batch is read as the jsonb datum it is, never printed and parsed
        // again.
        let (changes, origin) = unsafe {
            let args = (*fcinfo).args.as_slice((*fcinfo).nargs as usize);
            let origin = String::from_datum(args[2].value, args[2].isnull);
            ((!args[1].isnull).then_some(args[1].value), origin)
        };
        let tbl = tbl.unwrap_or(pg_sys::InvalidOid);
        let applied =
            Spi::connect_mut(|client| engine::apply(client, tbl, changes, origin.as_deref()));
        let keys = applied.keys;
        TableIterator::new(applied.outcomes.into_iter().map(move |o| {
            (
                KeyJson(keys[o.key].clone()),
                o.outcome,
                o.row_version,
                o.conflict_id,
                o.detail,
            )
        }))
    }

    /// The engine behind `sync_retry_pending` (sql/apply.sql): replays the
    /// parked changes of `tbl` and of the tables waiting for it (all with
    /// NULL), each as the role that parked it (engine::replay). Executable
    /// by anyone, it acts only for roles that may run sync_retry_pending or
    /// sync_apply; it reports the changes of tables the caller may read.
    #[pg_extern(
        volatile,
        sql = r#"
CREATE FUNCTION tributary._replay_parked(tbl regclass)
RETURNS TABLE (id bigint, tbl_name regclass, pk jsonb, outcome text, attempts integer, detail text)
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', '_replay_parked_wrapper';
"#
    )]
    #[allow(clippy::type_complexity)]
    fn _replay_parked(
        tbl: Option<pg_sys::Oid>,
    ) -> TableIterator<
        'static,
        (
            name!(id, i64),
            name!(tbl_name, pg_sys::Oid),
            name!(pk, KeyJson),
            name!(outcome, String),
            name!(attempts, i32),
            name!(detail, Option<String>),
        ),
    > {
        let replayed = Spi::connect_mut(|client| {
            crate::release::check_sql_current(client, "sync_retry_pending");
            engine::check_may_run(client, &["sync_retry_pending", "sync_apply"]);
            engine::replay::replay(client, tbl, false)
        });
        TableIterator::new(replayed.into_iter().map(|r| {
            (
                r.id,
                r.relid,
                KeyJson(r.pk),
                r.outcome,
                r.attempts,
                r.detail,
            )
        }))
    }

    /// Marks a conflict resolved, for `sync_resolve_conflict` (which applies
    /// the resolution after it, in the same transaction): only for roles
    /// that may run it and UPDATE the conflict's table. Locks the conflict,
    /// so two resolutions of one conflict cannot both apply.
    #[pg_extern(
        volatile,
        sql = r#"
CREATE FUNCTION tributary._close_conflict(id bigint, resolution text) RETURNS void
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', '_close_conflict_wrapper';
"#
    )]
    fn _close_conflict(id: Option<i64>, resolution: Option<String>) {
        Spi::connect_mut(|client| engine::close_conflict(client, id, resolution))
    }
}
