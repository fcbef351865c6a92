//! The front of `sync_apply`: one pass over the batch, as the jsonb datum it
//! arrived in (never printed and parsed again), that checks it and types it.
//!
//! ```text
//!  jsonb array ──iterate──> per change: op, pk, data, version, expect_version,
//!                           changed, ts        (structure: 22023, first bad change)
//!              ──names───> every data key and changed name is a column (42703)
//!              ──types───> every value through its column's input function, as
//!                          jsonb_populate_record reads it, then printed as
//!                          row_json prints it: the canonical JSON text the
//!                          resolver compares    (class 22: names the change)
//! ```
//!
//! Columns of array or composite types are typed by `jsonb_populate_record`
//! itself, one value at a time (their JSON form is not their input syntax).

use crate::api::rowjson;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use std::collections::BTreeMap;
use std::ffi::CStr;
use tributary_core::jsontext;
use tributary_core::resolver::{Op, Text};

/// A JSON value inside the batch, pointing into the jsonb datum.
#[derive(Clone, Copy)]
pub enum J {
    Null,
    Bool(bool),
    Num(pg_sys::Numeric),
    Str(*const u8, usize),
    Obj(*mut pg_sys::JsonbContainer),
    Arr(*mut pg_sys::JsonbContainer),
}

const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;
const JB_CMASK: u32 = 0x0FFF_FFFF;

impl J {
    fn str_bytes<'a>(self) -> Option<&'a [u8]> {
        match self {
            // SAFETY: points into the batch's jsonb, valid for the call.
            J::Str(p, n) => Some(unsafe { std::slice::from_raw_parts(p, n) }),
            _ => None,
        }
    }

    /// jsonb_typeof's name for the value.
    fn type_name(self) -> &'static str {
        match self {
            J::Null => "null",
            J::Bool(_) => "boolean",
            J::Num(_) => "number",
            J::Str(..) => "string",
            J::Obj(_) => "object",
            J::Arr(_) => "array",
        }
    }

    /// The value as `jsonb::text` prints it.
    pub fn text(self) -> String {
        let mut out = Vec::new();
        self.push_json(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn push_json(self, out: &mut Vec<u8>) {
        match self {
            J::Null => out.extend_from_slice(b"null"),
            J::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            J::Num(n) => push_numeric(n, out),
            J::Str(..) => jsontext::push_string(out, self.str_bytes().unwrap_or_default()),
            J::Obj(c) | J::Arr(c) => unsafe {
                let s = pg_sys::JsonbToCString(std::ptr::null_mut(), c, -1);
                out.extend_from_slice(CStr::from_ptr(s).to_bytes());
                pg_sys::pfree(s.cast());
            },
        }
    }

    /// The text jsonb_populate_record hands a scalar column's input
    /// function: strings unquoted, everything else as JSON text.
    fn input_text(self, out: &mut Vec<u8>) {
        match self {
            J::Str(..) => out.extend_from_slice(self.str_bytes().unwrap_or_default()),
            other => other.push_json(out),
        }
    }
}

fn numeric_text(n: pg_sys::Numeric) -> String {
    let mut out = Vec::with_capacity(16);
    push_numeric(n, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends numeric_out's text of a number.
fn push_numeric(n: pg_sys::Numeric, out: &mut Vec<u8>) {
    unsafe {
        let d = pgrx::direct_function_call_as_datum(
            pg_sys::numeric_out,
            &[Some(pg_sys::Datum::from(n))],
        )
        .expect("numeric_out of a number");
        let c = d.cast_mut_ptr::<std::ffi::c_char>();
        out.extend_from_slice(CStr::from_ptr(c).to_bytes());
        pg_sys::pfree(c.cast());
    }
}

/// The members of an object (key, value) or the elements of an array
/// (empty key, value), nested containers left unopened.
// The jsonb container layout (utils/jsonb.h), which is PostgreSQL's
// on-disk format: a header (count and kind), one JEntry per key and value
// (keys first in an object), then their data. Read here directly: going
// through JsonbIteratorNext crossed the FFI guard for every member.
const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_ISSTRING: u32 = 0x0000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;

/// The members of an object (key, value) or the elements of an array
/// (empty key, value), nested containers left unopened.
unsafe fn members<'a>(c: *mut pg_sys::JsonbContainer) -> Vec<(&'a [u8], J)> {
    unsafe {
        let header = (*c).header;
        let count = (header & JB_CMASK) as usize;
        let object = header & JB_FOBJECT != 0;
        let entries = if object { 2 * count } else { count };
        let children = (c as *const u8).add(std::mem::size_of::<u32>()) as *const u32;
        let base = children.add(entries) as *const u8;
        // Each entry's data: [start, end) from base, and its type.
        let mut spans: Vec<(usize, usize, u32)> = Vec::with_capacity(entries);
        let mut off = 0usize;
        for i in 0..entries {
            let je = children.add(i).read_unaligned();
            let field = (je & JENTRY_OFFLENMASK) as usize;
            let end = if je & JENTRY_HAS_OFF != 0 {
                field
            } else {
                off + field
            };
            spans.push((off, end, je & JENTRY_TYPEMASK));
            off = end;
        }
        let value = |(start, end, kind): (usize, usize, u32)| -> J {
            let aligned = (start + 3) & !3;
            match kind {
                JENTRY_ISSTRING => J::Str(base.add(start), end - start),
                JENTRY_ISNUMERIC => J::Num(base.add(aligned) as pg_sys::Numeric),
                JENTRY_ISBOOL_FALSE => J::Bool(false),
                JENTRY_ISBOOL_TRUE => J::Bool(true),
                JENTRY_ISNULL => J::Null,
                _ => {
                    let inner = base.add(aligned) as *mut pg_sys::JsonbContainer;
                    if (*inner).header & JB_FOBJECT != 0 {
                        J::Obj(inner)
                    } else {
                        J::Arr(inner)
                    }
                }
            }
        };
        if object {
            (0..count)
                .map(|i| {
                    let (ks, ke, _) = spans[i];
                    (
                        std::slice::from_raw_parts(base.add(ks), ke - ks),
                        value(spans[count + i]),
                    )
                })
                .collect()
        } else {
            spans.into_iter().map(|sp| (&[][..], value(sp))).collect()
        }
    }
}

/// A whole number in numeric_out's spelling (no exponent), if it is one:
/// `Err(())` for a fraction or out of the bigint range.
fn whole(text: &str) -> Result<i64, ()> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if !frac.bytes().all(|b| b == b'0') {
        return Err(());
    }
    int.parse::<i64>().map_err(|_| ())
}

/// How a column's values are read.
enum Way {
    /// text, or varchar without a length: the string itself.
    Text,
    /// A scalar type (or a domain over one, or json/jsonb): its input
    /// function, as jsonb_populate_record calls it.
    Input {
        func: pg_sys::FmgrInfo,
        ioparam: pg_sys::Oid,
        /// json / jsonb: the input is the value's JSON text.
        json: bool,
        /// A domain: NULL goes through its checks too.
        domain: bool,
        /// numeric without a typmod: a JSON number is taken as it is.
        numeric: bool,
    },
    /// Arrays and composites: jsonb_populate_record itself.
    Populate,
}

pub struct Column {
    pub name: String,
    /// The name, shared by every map that holds the column's values.
    pub key: Text,
    pub attnum: i16,
    pub typmod: i32,
    /// The type, as SQL spells it (`format_type`), for casts.
    pub type_sql: String,
    /// Values travel to the writing statements as input text and are cast
    /// there; false for arrays and composites, which go through
    /// jsonb_populate_record.
    pub by_input: bool,
    /// A generated column: computed by PostgreSQL, never written, and a
    /// change's value for it is ignored.
    pub generated: bool,
    /// A float type: its JSON numbers are normalised as jsonb prints them
    /// when they are part of a key.
    pub float: bool,
    way: Way,
    render: rowjson::Col,
}

/// The table as sync_apply sees it: its columns but Tributary's own, in
/// column order, and its primary key.
pub struct Table {
    /// `tbl::regclass::text`.
    pub name: String,
    pub columns: Vec<Column>,
    pub by_name: std::collections::HashMap<String, usize, foldhash::fast::RandomState>,
    /// Indexes into `columns`, in the primary key's order.
    pub pk: Vec<usize>,
    /// The same, in the order jsonb keeps object keys (length, then bytes).
    pk_jsonb: Vec<usize>,
}

impl Table {
    /// Reads the columns from the relation's descriptor. `pk` names the key
    /// columns (tributary.tracked.pk_columns).
    pub fn load(oid: pg_sys::Oid, name: String, pk: &[String]) -> Table {
        let mut columns = Vec::new();
        unsafe {
            let mcxt = pg_sys::CurrentMemoryContext;
            let rel = pg_sys::relation_open(oid, pg_sys::AccessShareLock as i32);
            let desc = (*rel).rd_att;
            for i in 0..(*desc).natts as usize {
                let a = &*(*desc).attrs.as_ptr().add(i);
                let name = CStr::from_ptr(a.attname.data.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                if a.attisdropped || tributary_core::tracking::is_tracking_column(&name) {
                    continue;
                }
                let typid = a.atttypid;
                let base = pg_sys::getBaseType(typid);
                let complex = pg_sys::get_element_type(base) != pg_sys::InvalidOid
                    || pg_sys::type_is_rowtype(base);
                let way = if complex {
                    Way::Populate
                } else if typid == pg_sys::TEXTOID
                    || (typid == pg_sys::VARCHAROID && a.atttypmod < 0)
                {
                    Way::Text
                } else {
                    let (mut f, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
                    pg_sys::getTypeInputInfo(typid, &mut f, &mut ioparam);
                    let mut func = std::mem::zeroed::<pg_sys::FmgrInfo>();
                    pg_sys::fmgr_info_cxt(f, &mut func, mcxt);
                    Way::Input {
                        func,
                        ioparam,
                        json: base == pg_sys::JSONOID || base == pg_sys::JSONBOID,
                        domain: base != typid,
                        numeric: typid == pg_sys::NUMERICOID && a.atttypmod < 0,
                    }
                };
                let t = pg_sys::format_type_with_typemod(typid, a.atttypmod);
                let type_sql = CStr::from_ptr(t).to_string_lossy().into_owned();
                columns.push(Column {
                    key: name.as_str().into(),
                    name,
                    attnum: a.attnum,
                    typmod: a.atttypmod,
                    type_sql,
                    by_input: !complex,
                    generated: a.attgenerated != 0,
                    float: base == pg_sys::FLOAT4OID || base == pg_sys::FLOAT8OID,
                    way,
                    render: rowjson::value_col(typid, mcxt),
                });
            }
            pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        }
        let by_name: std::collections::HashMap<String, usize, foldhash::fast::RandomState> =
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect();
        let pk: Vec<usize> = pk.iter().filter_map(|c| by_name.get(c).copied()).collect();
        let mut pk_jsonb = pk.clone();
        pk_jsonb.sort_by(|a, b| {
            let (a, b) = (&columns[*a].name, &columns[*b].name);
            a.len().cmp(&b.len()).then(a.as_bytes().cmp(b.as_bytes()))
        });
        Table {
            name,
            columns,
            by_name,
            pk,
            pk_jsonb,
        }
    }

    /// The key of a row as `jsonb::text` prints the object of its key
    /// columns: keys by length then bytes, numbers as jsonb spells them.
    pub fn key_text<'a>(&self, value: impl Fn(&str) -> Option<&'a str>) -> String {
        let mut out = Vec::with_capacity(16 * self.pk_jsonb.len());
        out.push(b'{');
        for (n, c) in self.pk_jsonb.iter().map(|i| &self.columns[*i]).enumerate() {
            if n > 0 {
                out.extend_from_slice(b", ");
            }
            jsontext::push_string(&mut out, c.name.as_bytes());
            out.extend_from_slice(b": ");
            let v = value(&c.name).unwrap_or("null");
            let b = v.as_bytes();
            let nested = matches!(b.first(), Some(b'{' | b'['));
            let exponent =
                c.float && !b.starts_with(b"\"") && b.iter().any(|x| matches!(x, b'e' | b'E'));
            if nested || exponent {
                out.extend_from_slice(jsonb_normal(v).as_bytes());
            } else {
                out.extend_from_slice(b);
            }
        }
        out.push(b'}');
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Appends the text a column's input function reads for a canonical
    /// JSON value: strings unquoted, numbers and json as they are. False
    /// (nothing appended) for null.
    pub fn input_into(&self, col: usize, canonical: &str, out: &mut Vec<u8>) -> bool {
        if canonical == "null" {
            return false;
        }
        match &self.columns[col].way {
            Way::Input { json: true, .. } | Way::Populate => {
                out.extend_from_slice(canonical.as_bytes())
            }
            _ if canonical.starts_with('"') => jsontext::unquote_into(canonical, out),
            _ => out.extend_from_slice(canonical.as_bytes()),
        }
        true
    }
}

/// A JSON text as jsonb prints it.
fn jsonb_normal(text: &str) -> String {
    let Ok(c) = std::ffi::CString::new(text) else {
        return text.to_string();
    };
    unsafe {
        let d = pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(c.as_ptr().into())])
            .expect("jsonb_in of a key");
        let out =
            pgrx::direct_function_call_as_datum(pg_sys::jsonb_out, &[Some(d)]).expect("jsonb_out");
        CStr::from_ptr(out.cast_mut_ptr::<std::ffi::c_char>())
            .to_string_lossy()
            .into_owned()
    }
}

/// One checked, typed change.
pub struct Parsed {
    pub op: Op,
    pub version: i64,
    pub expect_version: Option<i64>,
    /// Hybrid-clock time in microseconds since the Unix epoch (0: none).
    pub ts: i64,
    /// The key as jsonb text.
    pub key: String,
    /// The key columns' canonical values, in the primary key's order.
    pub pk_values: Vec<Text>,
    /// The canonical JSON text of every key column and every column the
    /// change sets.
    pub values: BTreeMap<Text, Text>,
}

/// The batch: its changes, and the jsonb elements they came from (to print
/// a change again, for an error or a parked change).
pub struct Batch {
    pub changes: Vec<Parsed>,
    elems: Vec<J>,
}

impl Batch {
    /// The change as sent (`jsonb::text`), 1-based.
    pub fn change_text(&self, ord: usize) -> String {
        self.elems[ord - 1].text()
    }
}

fn raise(code: PgSqlErrorCode, message: String, detail: String, hint: String) -> ! {
    ErrorReport::new(code, message, "sync_apply")
        .set_detail(detail)
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!()
}

fn left(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// `%I` of format(): PostgreSQL's quote_ident.
pub fn quote_ident_pg(s: &str) -> String {
    let Ok(c) = std::ffi::CString::new(s) else {
        return s.to_string();
    };
    unsafe {
        CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr()))
            .to_string_lossy()
            .into_owned()
    }
}

struct Raw {
    op: Op,
    /// (column index, value) of each key column.
    pk: Vec<(usize, J)>,
    data: Vec<(&'static [u8], J)>,
    version: i64,
    expect_version: Option<i64>,
    changed: Option<Vec<J>>,
    ts: Option<J>,
}

/// The key's members, exactly the key columns (as many members, each
/// found by name), none null.
fn key_members(pkc: *mut pg_sys::JsonbContainer, t: &Table) -> Result<Vec<(usize, J)>, String> {
    // Exactly the key columns: as many members, each found by name.
    let count = unsafe { (*pkc).header } & JB_CMASK;
    let pk_members = unsafe { members(pkc) };
    let pk: Vec<(usize, J)> = if count as usize == t.pk.len() {
        t.pk.iter()
            .map_while(|i| {
                let name = t.columns[*i].name.as_bytes();
                pk_members
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*i, *v))
            })
            .collect()
    } else {
        Vec::new()
    };
    if pk.len() != t.pk.len() {
        let names: Vec<&str> = t.pk.iter().map(|i| t.columns[*i].name.as_str()).collect();
        return Err(format!(
            "pk is {}; the primary key of {} is ({})",
            J::Obj(pkc).text(),
            t.name,
            names.join(", ")
        ));
    }
    if pk.iter().any(|(_, v)| matches!(v, J::Null)) {
        return Err("a primary key value is null".into());
    }
    Ok(pk)
}

/// Checks the structure of one change; the problem, in the order the
/// checks are documented, or the change.
fn structure(elem: J, t: &Table, lww: bool) -> Result<Raw, String> {
    let J::Obj(c) = elem else {
        return Err("it is not a JSON object".into());
    };
    let m = unsafe { members(c) };
    let get = |k: &str| m.iter().find(|(n, _)| *n == k.as_bytes()).map(|(_, v)| *v);
    let op = match get("op").and_then(|o| o.str_bytes()) {
        Some(b"I") => Op::Insert,
        Some(b"U") => Op::Update,
        Some(b"D") => Op::Delete,
        _ => {
            return Err(format!(
                "op is {}; it must be \"I\", \"U\" or \"D\"",
                get("op").map(J::text).unwrap_or_else(|| "missing".into())
            ))
        }
    };
    let Some(J::Obj(pkc)) = get("pk") else {
        return Err("pk is missing or not an object".into());
    };
    let pk = key_members(pkc, t)?;
    let data = match get("data") {
        Some(J::Obj(d)) => unsafe { members(d) },
        Some(_) => return Err("data is not an object".into()),
        None if op != Op::Delete => return Err("data is missing".into()),
        None => Vec::new(),
    };
    let bad_version = |v: Option<J>| {
        format!(
            "version is {}; it must be a whole number >= 1 (the revision the change produces)",
            v.map(J::text).unwrap_or_else(|| "missing".into())
        )
    };
    let version = match get("version") {
        Some(J::Num(n)) => match whole(&numeric_text(n)) {
            Ok(v) if v >= 1 => v,
            _ => return Err(bad_version(get("version"))),
        },
        other => return Err(bad_version(other)),
    };
    let expect_version = match get("expect_version") {
        None => None,
        Some(J::Num(n)) => match whole(&numeric_text(n)) {
            Ok(v) if v != i64::MIN => Some(v),
            _ => return Err("expect_version must be a whole number".into()),
        },
        Some(_) => return Err("expect_version must be a whole number".into()),
    };
    let changed = match get("changed") {
        None => None,
        Some(J::Arr(a)) => Some(unsafe { members(a) }.into_iter().map(|x| x.1).collect()),
        Some(_) => return Err("changed must be an array of column names".into()),
    };
    let ts = get("ts");
    match ts {
        None | Some(J::Str(..)) => {}
        Some(J::Num(n)) => {
            if !matches!(whole(&numeric_text(n)), Ok(v) if v != i64::MIN) {
                return Err("ts must be a whole number (a hybrid-clock value)".into());
            }
        }
        Some(_) => return Err("ts must be a hybrid-clock integer or an RFC 3339 timestamp".into()),
    }
    if lww && ts.is_none() {
        return Err(format!(
            "ts is missing; {} uses the last_writer_wins policy, which orders changes by it",
            t.name
        ));
    }
    Ok(Raw {
        op,
        pk,
        data,
        version,
        expect_version,
        changed,
        ts,
    })
}

/// The names a change writes (`changed`, else the keys of `data`).
fn changed_names(r: &Raw) -> Option<Vec<String>> {
    r.changed.as_ref().map(|c| {
        c.iter()
            .filter(|v| !matches!(v, J::Null))
            .map(|v| match v.str_bytes() {
                Some(b) => String::from_utf8_lossy(b).into_owned(),
                None => v.text(),
            })
            .collect()
    })
}

/// Types one value as jsonb_populate_record would, and prints it as
/// row_json does. `populate` types array and composite values in SQL.
unsafe fn typed(
    col: &mut Column,
    v: J,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    populate: &mut dyn FnMut(&str, &str) -> String,
) -> Text {
    out.clear();
    match &mut col.way {
        Way::Text => {
            buf.clear();
            match v {
                J::Null => return Text::from("null"),
                other => other.input_text(buf),
            }
            jsontext::push_string(out, buf);
        }
        Way::Input {
            func,
            ioparam,
            json,
            domain,
            numeric,
        } => {
            if matches!(v, J::Null) {
                if *domain {
                    unsafe {
                        pg_sys::InputFunctionCall(func, std::ptr::null_mut(), *ioparam, col.typmod)
                    };
                }
                return Text::from("null");
            }
            if let (true, J::Num(n)) = (*numeric, v) {
                // A jsonb number is a numeric already: reading and printing
                // it again would give the same text.
                push_numeric(n, out);
                return Text::from(std::str::from_utf8(out).unwrap_or_default());
            }
            buf.clear();
            if *json {
                v.push_json(buf);
            } else {
                v.input_text(buf);
            }
            buf.push(0);
            let d = unsafe {
                pg_sys::InputFunctionCall(func, buf.as_mut_ptr().cast(), *ioparam, col.typmod)
            };
            unsafe { rowjson::push_value(out, &mut col.render, d) };
        }
        Way::Populate => {
            if matches!(v, J::Null) {
                return Text::from("null");
            }
            return Text::from(populate(&col.name, &v.text()));
        }
    }
    match std::str::from_utf8(out) {
        Ok(s) => Text::from(s),
        Err(_) => Text::from(String::from_utf8_lossy(out).as_ref()),
    }
}

/// Checks and types the batch. Raises, naming the first bad change, for
/// bad structure (22023), unknown columns (42703) and values of the wrong
/// type (their own class-22 SQLSTATE); nothing has been written then.
pub fn parse(
    changes: pg_sys::Datum,
    t: &mut Table,
    lww: bool,
    populate: &mut dyn FnMut(&str, &str) -> String,
) -> Batch {
    let root = unsafe {
        let jb = pg_sys::pg_detoast_datum(changes.cast_mut_ptr()) as *mut pg_sys::Jsonb;
        &mut (*jb).root as *mut pg_sys::JsonbContainer
    };
    let header = unsafe { (*root).header };
    if header & JB_FARRAY == 0 || header & JB_FSCALAR != 0 {
        let got = if header & JB_FOBJECT != 0 {
            "object"
        } else {
            unsafe { members(root) }
                .first()
                .map(|m| m.1.type_name())
                .unwrap_or("null")
        };
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "changes must be a JSON array".into(),
            format!("Got {got}."),
            "Pass [{\"op\":\"U\",\"pk\":{...},\"data\":{...},\"version\":N}, ...].".into(),
        );
    }
    let elems: Vec<J> = unsafe { members(root) }.into_iter().map(|m| m.1).collect();
    // Structure, for the whole batch before anything else; then names;
    // then types, in order.
    let raws = check_structure(&elems, t, lww);
    check_names(&raws, t);
    let changes = type_checked(&raws, &elems, t, populate);
    Batch { changes, elems }
}

/// Each change's structure; raises (22023) naming the first malformed one.
fn check_structure(elems: &[J], t: &Table, lww: bool) -> Vec<Raw> {
    let mut raws = Vec::with_capacity(elems.len());
    for (i, e) in elems.iter().enumerate() {
        match structure(*e, t, lww) {
            Ok(r) => raws.push(r),
            Err(problem) => raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("change #{} is malformed: {problem}", i + 1),
                format!("Change #{}: {}.", i + 1, left(&e.text(), 500)),
                "Each change is {\"op\":\"I\"|\"U\"|\"D\", \"pk\":{key columns}, \"data\":{columns}, \"version\":N}; nothing of the batch was applied.".into(),
            ),
        }
    }
    raws
}

/// Every key of data and every name in changed is a column; raises
/// (42703) naming the first change that names another.
fn check_names(raws: &[Raw], t: &Table) {
    for (i, r) in raws.iter().enumerate() {
        let known = |k: &[u8]| std::str::from_utf8(k).is_ok_and(|k| t.by_name.contains_key(k));
        if r.data.iter().all(|(k, _)| known(k)) && r.changed.is_none() {
            continue;
        }
        let names = r
            .data
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .chain(changed_names(r).unwrap_or_default());
        for k in names {
            if t.by_name.contains_key(&k) {
                continue;
            }
            let meta = tributary_core::tracking::is_tracking_column(&k);
            let cols: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "change #{} names an unknown column {}",
                    i + 1,
                    quote_ident_pg(&k)
                ),
                format!(
                    "{} has no column {}{}.",
                    t.name,
                    quote_ident_pg(&k),
                    if meta {
                        " that a peer may write: Tributary maintains it"
                    } else {
                        ""
                    }
                ),
                format!(
                    "Columns of {}: {}. Nothing of the batch was applied.",
                    t.name,
                    cols.join(", ")
                ),
            );
        }
    }
}

/// Types every change; the first value that does not fit raises its own
/// class-22 SQLSTATE, naming its change.
fn type_checked(
    raws: &[Raw],
    elems: &[J],
    t: &mut Table,
    populate: &mut dyn FnMut(&str, &str) -> String,
) -> Vec<Parsed> {
    let current = std::sync::atomic::AtomicUsize::new(0);
    let tbl_name = t.name.clone();
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        type_all(raws, t, &current, populate)
    }))
    .catch_others(|e| {
        let report = match &e {
            pg_sys::panic::CaughtError::PostgresError(r)
            | pg_sys::panic::CaughtError::ErrorReport(r) => Some(r),
            _ => None,
        };
        let Some(r) = report else { e.rethrow() };
        let code = r.sql_error_code();
        let class = |c: PgSqlErrorCode| (c as i32) & 0xfff;
        if class(code) != class(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION) {
            e.rethrow()
        }
        let i = current.load(std::sync::atomic::Ordering::Relaxed);
        raise(
            code,
            format!("change #{} has a value of the wrong type", i + 1),
            format!("{} (change: {}).", r.message(), left(&elems[i].text(), 500)),
            format!(
                "Send values that fit the columns of {tbl_name}, e.g. numbers for numeric columns."
            ),
        )
    })
    .execute()
}

/// Buffers reused for every change of a batch.
struct Scratch {
    buf: Vec<u8>,
    text_buf: Vec<u8>,
    /// Per column: the value the change gives, if any.
    given: Vec<Option<J>>,
    /// The columns the change sets.
    sets: Vec<usize>,
}

fn type_all(
    raws: &[Raw],
    t: &mut Table,
    current: &std::sync::atomic::AtomicUsize,
    populate: &mut dyn FnMut(&str, &str) -> String,
) -> Vec<Parsed> {
    let mut out = Vec::with_capacity(raws.len());
    let mut s = Scratch {
        buf: Vec::with_capacity(64),
        text_buf: Vec::with_capacity(64),
        given: vec![None; t.columns.len()],
        sets: Vec::with_capacity(t.columns.len()),
    };
    // Each change's values are read in a context reset after it.
    let cx = unsafe {
        pg_sys::AllocSetContextCreateExtended(
            pg_sys::CurrentMemoryContext,
            c"tributary batch values".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        )
    };
    for (i, r) in raws.iter().enumerate() {
        current.store(i, std::sync::atomic::Ordering::Relaxed);
        given_and_sets(r, t, &mut s);
        let old = unsafe { pg_sys::MemoryContextSwitchTo(cx) };
        let (values, key_values) = type_values(r, t, &mut s, populate);
        let ts = match r.ts {
            Some(J::Num(n)) => whole(&numeric_text(n)).unwrap_or(0),
            Some(v @ J::Str(..)) => unsafe { timestamp_micros(v, &mut s.buf) },
            _ => 0,
        };
        unsafe {
            pg_sys::MemoryContextSwitchTo(old);
            pg_sys::MemoryContextReset(cx);
        }
        out.push(parsed(r, t, values, &key_values, ts));
    }
    unsafe { pg_sys::MemoryContextDelete(cx) };
    out
}

/// Which value the change gives each column, and which columns it sets.
fn given_and_sets(r: &Raw, t: &Table, s: &mut Scratch) {
    s.given.iter_mut().for_each(|g| *g = None);
    for (k, v) in &r.data {
        if let Some(c) = t.by_name.get(std::str::from_utf8(k).unwrap_or_default()) {
            s.given[*c] = Some(*v);
        }
    }
    for (c, v) in &r.pk {
        s.given[*c] = Some(*v);
    }
    s.sets.clear();
    match &r.changed {
        Some(_) => s.sets.extend(
            changed_names(r)
                .unwrap_or_default()
                .iter()
                .filter_map(|n| t.by_name.get(n.as_str()).copied()),
        ),
        None => s.sets.extend(r.data.iter().filter_map(|(k, _)| {
            t.by_name
                .get(std::str::from_utf8(k).unwrap_or_default())
                .copied()
        })),
    }
}

/// Types every column the change gives (and, for a domain that may refuse
/// NULL, those it does not), as jsonb_populate_record does. Returns the
/// values it writes, by name, and the key's values, by column.
fn type_values(
    r: &Raw,
    t: &mut Table,
    s: &mut Scratch,
    populate: &mut dyn FnMut(&str, &str) -> String,
) -> (BTreeMap<Text, Text>, Vec<(usize, Text)>) {
    let mut values = BTreeMap::new();
    let mut key_values: Vec<(usize, Text)> = Vec::with_capacity(t.pk.len());
    for c in 0..s.given.len() {
        let v = s.given[c];
        let is_pk = t.pk.contains(&c);
        let keep = r.op != Op::Delete && (is_pk || s.sets.contains(&c)) && !t.columns[c].generated;
        // Every column is read (a domain may refuse NULL), as
        // jsonb_populate_record does; the kept ones are printed.
        if v.is_none() && !keep {
            if let Way::Input { domain: true, .. } = t.columns[c].way {
                unsafe {
                    typed(
                        &mut t.columns[c],
                        J::Null,
                        &mut s.buf,
                        &mut s.text_buf,
                        populate,
                    )
                };
            }
            continue;
        }
        let text = unsafe {
            typed(
                &mut t.columns[c],
                v.unwrap_or(J::Null),
                &mut s.buf,
                &mut s.text_buf,
                populate,
            )
        };
        if is_pk {
            key_values.push((c, text.clone()));
        }
        if keep {
            values.insert(t.columns[c].key.clone(), text);
        }
    }
    (values, key_values)
}

/// A typed change.
fn parsed(
    r: &Raw,
    t: &Table,
    values: BTreeMap<Text, Text>,
    key_values: &[(usize, Text)],
    ts: i64,
) -> Parsed {
    let key = t.key_text(|name| {
        key_values
            .iter()
            .find(|(c, _)| t.columns[*c].name == name)
            .map(|(_, v)| &**v)
    });
    let pk_values =
        t.pk.iter()
            .map(|p| {
                key_values
                    .iter()
                    .find(|(c, _)| c == p)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| Text::from("null"))
            })
            .collect();
    Parsed {
        pk_values,
        op: r.op,
        version: r.version,
        expect_version: r.expect_version,
        ts,
        key,
        values,
    }
}

/// An RFC 3339 `ts` as microseconds since the Unix epoch.
unsafe fn timestamp_micros(s: J, buf: &mut Vec<u8>) -> i64 {
    buf.clear();
    s.input_text(buf);
    buf.push(0);
    let d = unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::timestamptz_in,
            &[
                Some(pg_sys::Datum::from(buf.as_ptr())),
                Some(pg_sys::Datum::from(pg_sys::InvalidOid)),
                Some(pg_sys::Datum::from(-1i32)),
            ],
        )
        .expect("timestamptz_in")
    };
    let micros = d.value() as i64;
    if micros == i64::MIN || micros == i64::MAX {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
            "ts must be a finite timestamp",
            "sync_apply",
        )
        .report(PgLogLevel::ERROR);
    }
    // PostgreSQL counts from 2000-01-01.
    micros + 946_684_800_000_000
}
