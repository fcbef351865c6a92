//! Array parameters, built the fast way: a column's values are laid out in
//! one allocation and the array built in one `construct_md_array` call
//! (pgrx's element-by-element builder crossed the FFI guard for every
//! element, 7% of sync_apply's time).

use super::batch;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// A text[] parameter under construction: its elements' bytes back to back.
#[derive(Clone, Default)]
pub struct TextCol {
    bytes: Vec<u8>,
    spans: Vec<Option<(usize, usize)>>,
}

impl TextCol {
    /// Appends a column's canonical value as the text its input function
    /// reads (for arrays and composites, their JSON).
    pub fn push_input(&mut self, t: &batch::Table, col: usize, canonical: &str) {
        let start = self.bytes.len();
        let span = t
            .input_into(col, canonical, &mut self.bytes)
            .then_some((start, self.bytes.len()));
        self.spans.push(span);
    }

    pub fn param(&self) -> DatumWithOid<'static> {
        varlena_array(
            self.spans.iter().map(|s| s.map(|(a, b)| &self.bytes[a..b])),
            pg_sys::TEXTOID,
            pg_sys::TEXTARRAYOID,
        )
    }
}

/// The parameters of a statement that takes one text[] per column.
pub fn columns(cols: &[TextCol]) -> Vec<DatumWithOid<'static>> {
    cols.iter().map(TextCol::param).collect()
}

/// A text[] literal of the names.
pub fn text_literal(names: &[String]) -> String {
    let mut out = String::from("{");
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for ch in n.chars() {
            if ch == '"' || ch == '\\' {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// A datum built here, handed to SPI as a parameter.
struct Built(pg_sys::Datum);

impl IntoDatum for Built {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::InvalidOid
    }
}

/// A text[] parameter.
pub fn text_array<'a>(vals: impl Iterator<Item = Option<&'a str>>) -> DatumWithOid<'static> {
    varlena_array(
        vals.map(|v| v.map(str::as_bytes)),
        pg_sys::TEXTOID,
        pg_sys::TEXTARRAYOID,
    )
}

/// A bytea[] parameter.
pub fn bytea_array<'a>(vals: impl Iterator<Item = Option<&'a [u8]>>) -> DatumWithOid<'static> {
    varlena_array(vals, pg_sys::BYTEAOID, pg_sys::BYTEAARRAYOID)
}

/// A text[] or bytea[] parameter, its elements laid out in one allocation
/// and the array built in one call.
fn varlena_array<'a>(
    vals: impl Iterator<Item = Option<&'a [u8]>>,
    elem: pg_sys::Oid,
    array: pg_sys::Oid,
) -> DatumWithOid<'static> {
    let vals: Vec<Option<&[u8]>> = vals.collect();
    let size = |b: &[u8]| (pg_sys::VARHDRSZ + b.len() + 3) & !3;
    let total: usize = vals.iter().map(|v| v.map_or(0, size)).sum();
    // SAFETY: each element is a 4-byte-header varlena in the buffer, int
    // aligned as text and bytea require; construct_md_array copies them.
    unsafe {
        let buf = pg_sys::palloc(total.max(8)) as *mut u8;
        let mut datums = Vec::with_capacity(vals.len());
        let mut nulls = Vec::with_capacity(vals.len());
        let mut off = 0;
        for v in &vals {
            match v {
                Some(b) => {
                    let p = buf.add(off);
                    pgrx::varlena::set_varsize_4b(p.cast(), (pg_sys::VARHDRSZ + b.len()) as i32);
                    std::ptr::copy_nonoverlapping(b.as_ptr(), p.add(pg_sys::VARHDRSZ), b.len());
                    datums.push(pg_sys::Datum::from(p));
                    nulls.push(false);
                    off += size(b);
                }
                None => {
                    datums.push(pg_sys::Datum::from(0usize));
                    nulls.push(true);
                }
            }
        }
        let a = build_array(&mut datums, &mut nulls, elem, -1, false, b'i');
        pg_sys::pfree(buf.cast());
        DatumWithOid::new(Built(a), array)
    }
}

/// An int8[] parameter.
pub fn int8_array(vals: impl Iterator<Item = Option<i64>>) -> DatumWithOid<'static> {
    let (mut datums, mut nulls): (Vec<pg_sys::Datum>, Vec<bool>) = vals
        .map(|v| (pg_sys::Datum::from(v.unwrap_or(0)), v.is_none()))
        .unzip();
    // SAFETY: int8 is pass-by-value on 64-bit platforms, as pgrx requires.
    unsafe {
        let a = build_array(&mut datums, &mut nulls, pg_sys::INT8OID, 8, true, b'd');
        DatumWithOid::new(Built(a), pg_sys::INT8ARRAYOID)
    }
}

unsafe fn build_array(
    datums: &mut [pg_sys::Datum],
    nulls: &mut [bool],
    elem: pg_sys::Oid,
    len: i32,
    byval: bool,
    align: u8,
) -> pg_sys::Datum {
    unsafe {
        if datums.is_empty() {
            return pg_sys::Datum::from(pg_sys::construct_empty_array(elem));
        }
        let mut dims = [datums.len() as i32];
        let mut lbs = [1i32];
        pg_sys::Datum::from(pg_sys::construct_md_array(
            datums.as_mut_ptr(),
            nulls.as_mut_ptr(),
            1,
            dims.as_mut_ptr(),
            lbs.as_mut_ptr(),
            elem,
            len,
            byval,
            align as std::ffi::c_char,
        ))
    }
}
