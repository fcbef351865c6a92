//! A tracked row as JSON text, fast: the `data` and `pk` columns of
//! `sync_changes_since`.
//!
//! ```text
//!  row (composite datum) ──deform──> per column, by a plan cached in fn_extra:
//!     int2/4/8, bool ........ printed directly
//!     numeric, float ........ output function; NaN/±Infinity quoted (as to_json)
//!     text, varchar ......... escaped from the varlena, no copy
//!     date, timestamp[tz] ... ISO 8601, as to_json (JsonEncodeDateTime)
//!     json, jsonb ........... embedded as is
//!     arrays, composites .... array_to_json / row_to_json
//!     anything else ......... output function, quoted
//! ```
//!
//! Why not `to_jsonb(t)`: printing a jsonb value costs more than twice
//! printing the row's columns (bench/changes_since), and `to_jsonb` looks
//! up every column's type on every row. This builds the text once, with
//! the column plan computed once per query.

use pgrx::pg_sys;
use pgrx::prelude::*;
use tributary_core::jsontext;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int2,
    Int4,
    Int8,
    Bool,
    Number,
    Text,
    DateTime(pg_sys::Oid),
    Embed,
    ArrayToJson,
    RowToJson,
    Quoted,
}

pub(crate) struct Col {
    index: usize,
    key: Vec<u8>,
    pub(crate) kind: Kind,
    out: pg_sys::FmgrInfo,
}

/// What one query needs to print rows of one type: computed on the first
/// row, kept in `fn_extra` (in the query's function memory context).
struct Plan {
    typid: pg_sys::Oid,
    typmod: i32,
    tupdesc: pg_sys::TupleDesc,
    cols: Vec<Col>,
}

pub(crate) fn kind_of(typid: pg_sys::Oid) -> Kind {
    let base = unsafe { pg_sys::getBaseType(typid) };
    match base {
        pg_sys::INT2OID => Kind::Int2,
        pg_sys::INT4OID => Kind::Int4,
        pg_sys::INT8OID => Kind::Int8,
        pg_sys::BOOLOID => Kind::Bool,
        pg_sys::NUMERICOID | pg_sys::FLOAT4OID | pg_sys::FLOAT8OID => Kind::Number,
        pg_sys::TEXTOID | pg_sys::VARCHAROID => Kind::Text,
        pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => Kind::DateTime(base),
        pg_sys::JSONOID | pg_sys::JSONBOID => Kind::Embed,
        _ if unsafe { pg_sys::get_element_type(base) } != pg_sys::InvalidOid => Kind::ArrayToJson,
        _ if unsafe { pg_sys::type_is_rowtype(base) } => Kind::RowToJson,
        _ => Kind::Quoted,
    }
}

unsafe fn cstr_bytes<'a>(c: *const std::ffi::c_char) -> &'a [u8] {
    unsafe { std::ffi::CStr::from_ptr(c) }.to_bytes()
}

/// Builds the plan: every column but Tributary's own, in column order.
unsafe fn build_plan(typid: pg_sys::Oid, typmod: i32, mcxt: pg_sys::MemoryContext) -> Plan {
    let tupdesc = unsafe {
        let old = pg_sys::MemoryContextSwitchTo(mcxt);
        let t = pg_sys::lookup_rowtype_tupdesc_copy(typid, typmod);
        pg_sys::MemoryContextSwitchTo(old);
        t
    };
    let natts = unsafe { (*tupdesc).natts } as usize;
    let attr = |i: usize| unsafe { &*(*tupdesc).attrs.as_ptr().add(i) };
    let name = |i: usize| unsafe { cstr_bytes(attr(i).attname.data.as_ptr()) };
    let indexes: Vec<usize> = (0..natts)
        .filter(|i| {
            !attr(*i).attisdropped
                && !tributary_core::tracking::COLUMNS
                    .iter()
                    .any(|m| m.as_bytes() == name(*i))
        })
        .collect();
    let cols = indexes
        .into_iter()
        .map(|index| {
            let a = attr(index);
            let mut key = Vec::new();
            jsontext::push_string(&mut key, name(index));
            key.extend_from_slice(b": ");
            let mut out = unsafe { std::mem::zeroed::<pg_sys::FmgrInfo>() };
            let (mut func, mut varlena) = (pg_sys::InvalidOid, false);
            unsafe {
                pg_sys::getTypeOutputInfo(a.atttypid, &mut func, &mut varlena);
                pg_sys::fmgr_info_cxt(func, &mut out, mcxt);
            }
            Col {
                index,
                key,
                kind: kind_of(a.atttypid),
                out,
            }
        })
        .collect();
    Plan {
        typid,
        typmod,
        tupdesc,
        cols,
    }
}

/// How to print values of one type as JSON, outside a row: for the values
/// sync_apply reads out of a batch.
pub(crate) unsafe fn value_col(typid: pg_sys::Oid, mcxt: pg_sys::MemoryContext) -> Col {
    let mut out = unsafe { std::mem::zeroed::<pg_sys::FmgrInfo>() };
    let (mut func, mut varlena) = (pg_sys::InvalidOid, false);
    unsafe {
        pg_sys::getTypeOutputInfo(typid, &mut func, &mut varlena);
        pg_sys::fmgr_info_cxt(func, &mut out, mcxt);
    }
    Col {
        index: 0,
        key: Vec::new(),
        kind: kind_of(typid),
        out,
    }
}

unsafe fn push_varlena(out: &mut Vec<u8>, value: pg_sys::Datum, escape: bool) {
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(value.cast_mut_ptr());
        let bytes = std::slice::from_raw_parts(
            pgrx::varlena::vardata_any(v) as *const u8,
            pgrx::varlena::varsize_any_exhdr(v),
        );
        if escape {
            jsontext::push_string(out, bytes);
        } else {
            out.extend_from_slice(bytes);
        }
    }
}

unsafe fn push_output(
    out: &mut Vec<u8>,
    col: &mut Col,
    value: pg_sys::Datum,
    how: fn(&mut Vec<u8>, &[u8]),
) {
    unsafe {
        let c = pg_sys::OutputFunctionCall(&mut col.out, value);
        how(out, cstr_bytes(c));
        pg_sys::pfree(c.cast());
    }
}

pub(crate) unsafe fn push_value(out: &mut Vec<u8>, col: &mut Col, value: pg_sys::Datum) {
    use std::io::Write;
    unsafe {
        match col.kind {
            Kind::Int2 => write!(out, "{}", value.value() as i16).unwrap(),
            Kind::Int4 => write!(out, "{}", value.value() as i32).unwrap(),
            Kind::Int8 => write!(out, "{}", value.value() as i64).unwrap(),
            Kind::Bool => out.extend_from_slice(if value.value() != 0 {
                b"true"
            } else {
                b"false"
            }),
            Kind::Text => push_varlena(out, value, true),
            Kind::Number => push_output(out, col, value, jsontext::push_number),
            Kind::Embed => push_output(out, col, value, |o, b| o.extend_from_slice(b)),
            Kind::Quoted => push_output(out, col, value, jsontext::push_string),
            Kind::DateTime(typid) => {
                let c = pg_sys::JsonEncodeDateTime(
                    std::ptr::null_mut(),
                    value,
                    typid,
                    std::ptr::null(),
                );
                jsontext::push_string(out, cstr_bytes(c));
                pg_sys::pfree(c.cast());
            }
            Kind::ArrayToJson | Kind::RowToJson => {
                // Both read their argument's type from the datum itself.
                let f = if matches!(col.kind, Kind::ArrayToJson) {
                    pg_sys::array_to_json
                } else {
                    pg_sys::row_to_json
                };
                let d = pgrx::direct_function_call_as_datum(f, &[Some(value)])
                    .expect("json of a non-null value");
                push_varlena(out, d, false);
            }
        }
    }
}

/// `anyelement` takes any value: only a row may be read as a tuple. Checked
/// on the first call of a query (the argument's type is the same for every
/// call after it).
unsafe fn refuse_non_row(flinfo: *mut pg_sys::FmgrInfo) {
    let typid = unsafe { pg_sys::get_fn_expr_argtype(flinfo, 0) };
    if typid == pg_sys::InvalidOid || !unsafe { pg_sys::type_is_rowtype(typid) } {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            "tributary.row_json takes a row",
            "tributary.row_json",
        )
        .set_detail(if typid == pg_sys::InvalidOid {
            "Its argument's type is unknown (a direct call).".to_string()
        } else {
            // SAFETY: format_type_be returns a palloc'd string for a valid type.
            let name = unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be(typid)) };
            format!("Its argument is of type {}.", name.to_string_lossy())
        })
        .set_hint("Pass a whole row, e.g. tributary.row_json(t.*) FROM some_table t.")
        .report(PgLogLevel::ERROR);
    }
}

#[pg_schema]
pub mod tributary {
    use super::*;

    /// The row as a JSON object of every column but Tributary's own.
    /// STABLE (dates print in the session's time zone), PARALLEL SAFE,
    /// STRICT, not SECURITY DEFINER.
    #[pg_extern(
        stable,
        strict,
        parallel_safe,
        sql = r#"
CREATE FUNCTION tributary.row_json("row" anyelement) RETURNS json
STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'row_json_wrapper';
"#
    )]
    fn row_json(row: pgrx::AnyElement, fcinfo: pg_sys::FunctionCallInfo) -> Vec<u8> {
        unsafe {
            let flinfo = (*fcinfo).flinfo;
            if (*flinfo).fn_extra.is_null() {
                refuse_non_row(flinfo);
            }
            let td =
                pg_sys::pg_detoast_datum(row.datum().cast_mut_ptr()) as pg_sys::HeapTupleHeader;
            let typid = (*td).t_choice.t_datum.datum_typeid;
            let typmod = (*td).t_choice.t_datum.datum_typmod;

            let mut plan = (*flinfo).fn_extra as *mut Plan;
            if plan.is_null() || (*plan).typid != typid || (*plan).typmod != typmod {
                let built = build_plan(typid, typmod, (*flinfo).fn_mcxt);
                plan =
                    pgrx::PgMemoryContexts::For((*flinfo).fn_mcxt).leak_and_drop_on_delete(built);
                (*flinfo).fn_extra = plan.cast();
            }
            let plan = &mut *plan;

            let natts = (*plan.tupdesc).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![true; natts];
            let mut tuple = pg_sys::HeapTupleData {
                t_len: pgrx::varlena::varsize_any(td.cast()) as u32,
                t_self: std::mem::zeroed(),
                t_tableOid: pg_sys::InvalidOid,
                t_data: td,
            };
            pg_sys::heap_deform_tuple(
                &mut tuple,
                plan.tupdesc,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );

            let mut out = Vec::with_capacity(64 + 24 * plan.cols.len());
            out.push(b'{');
            for (n, col) in plan.cols.iter_mut().enumerate() {
                if n > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(&col.key);
                if nulls[col.index] {
                    out.extend_from_slice(b"null");
                } else {
                    push_value(&mut out, col, values[col.index]);
                }
            }
            out.push(b'}');
            // A bytea-shaped varlena holding JSON text, declared `json` in
            // SQL: the layout is the same, and the text is valid by construction.
            out
        }
    }
}
