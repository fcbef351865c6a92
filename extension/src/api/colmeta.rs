//! SQL access to the packed per-column versions (`sync_colmeta`, see
//! `colvers.rs`): used by `sync_changes_since` for `changed_columns`, and
//! by people inspecting a row.

use pgrx::pg_sys;
use pgrx::prelude::*;
use tributary_core::colvers;

#[pgrx::pg_schema]
pub mod tributary {
    use pgrx::prelude::*;
    use tributary_core::colvers;

    /// The packed per-column stamps, for inspection. attnum 0 is the
    /// creation entry; an empty origin is local.
    /// IMMUTABLE, STRICT, PARALLEL SAFE, not SECURITY DEFINER.
    #[pg_extern(immutable, strict, parallel_safe)]
    // pgrx generates the SQL from the spelled-out TableIterator type.
    #[allow(clippy::type_complexity)]
    fn colmeta_entries(
        meta: &[u8],
    ) -> TableIterator<
        'static,
        (
            name!(attnum, i16),
            name!(revision, i64),
            name!(xid, i64),
            name!(origin, String),
            name!(ts, i64),
        ),
    > {
        TableIterator::new(
            colvers::decode(meta)
                .into_iter()
                .map(|e| (e.attnum as i16, e.revision, e.xid, e.origin, e.ts))
                .collect::<Vec<_>>(),
        )
    }
}

/// The column list of one calling query, decoded once.
struct Columns {
    attnums_arg: pg_sys::Datum,
    names_arg: pg_sys::Datum,
    attnums: Vec<u16>,
    names: Vec<pg_sys::Datum>,
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_tributary_changed_columns() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `tributary.changed_columns(meta bytea, created_xid bigint, since bigint,
/// attnums smallint[], names text[]) → text[]`: the names of the columns
/// changed at or after xid `since`. IMMUTABLE, PARALLEL SAFE, not strict (a
/// NULL `meta` means no column changed since creation), not SECURITY
/// DEFINER.
///
/// A bare V1 function rather than `#[pg_extern]`: `attnums` and `names` are
/// constants of the calling query, so they are decoded once per query
/// (cached in fn_extra) and the result array is built from the cached
/// name datums; this is on the hot path of every 'U' row read.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn tributary_changed_columns(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let nargs = (*fcinfo).nargs as usize;
        let args = (*fcinfo).args.as_slice(nargs);
        if nargs < 5 || args[1].isnull || args[2].isnull || args[3].isnull || args[4].isnull {
            (*fcinfo).isnull = true;
            return pg_sys::Datum::from(0);
        }
        let flinfo = (*fcinfo).flinfo;
        let mut cols = (*flinfo).fn_extra as *mut Columns;
        if cols.is_null()
            || (*cols).attnums_arg != args[3].value
            || (*cols).names_arg != args[4].value
        {
            let attnums: Vec<u16> = Vec::<i16>::from_datum(args[3].value, false)
                .unwrap_or_default()
                .into_iter()
                .map(|a| a as u16)
                .collect();
            // The name datums are kept as they are (text), in the query's
            // function context, to be put in each result array as is.
            let old = pg_sys::MemoryContextSwitchTo((*flinfo).fn_mcxt);
            let names: Vec<pg_sys::Datum> = Vec::<Option<String>>::from_datum(args[4].value, false)
                .unwrap_or_default()
                .into_iter()
                .map(|n| {
                    let n = n.unwrap_or_default();
                    pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
                        n.as_ptr().cast(),
                        n.len() as i32,
                    ))
                })
                .collect();
            pg_sys::MemoryContextSwitchTo(old);
            let built = Columns {
                attnums_arg: args[3].value,
                names_arg: args[4].value,
                attnums,
                names,
            };
            cols = pgrx::PgMemoryContexts::For((*flinfo).fn_mcxt).leak_and_drop_on_delete(built);
            (*flinfo).fn_extra = cols.cast();
        }
        let cols = &*cols;
        let entries = if args[0].isnull {
            Vec::new()
        } else {
            let v = pg_sys::pg_detoast_datum_packed(args[0].value.cast_mut_ptr());
            colvers::decode(std::slice::from_raw_parts(
                pgrx::varlena::vardata_any(v) as *const u8,
                pgrx::varlena::varsize_any_exhdr(v),
            ))
        };
        let created = args[1].value.value() as i64;
        let since = args[2].value.value() as i64;
        let mut picked: Vec<pg_sys::Datum> =
            colvers::changed_since_xid(&entries, &cols.attnums, since, created)
                .into_iter()
                .filter_map(|i| cols.names.get(i).copied())
                .collect();
        let arr = pg_sys::construct_array(
            picked.as_mut_ptr(),
            picked.len() as i32,
            pg_sys::TEXTOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        );
        pg_sys::Datum::from(arr)
    }
}

extension_sql!(
    r#"
CREATE FUNCTION tributary.changed_columns(meta bytea, created_xid bigint, since bigint, attnums smallint[], names text[])
RETURNS text[] IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'tributary_changed_columns';
"#,
    name = "changed_columns",
    requires = ["schema"]
);
