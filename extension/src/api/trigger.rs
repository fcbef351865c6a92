//! The write path: one BEFORE INSERT OR UPDATE row trigger, in Rust, that
//! stamps the tracking columns inside the same heap tuple.
//!
//! ```text
//!  INSERT:  sync_version = 1, sync_xid = sync_created_xid = top-level xid,
//!           sync_origin = tributary.origin, per-column arrays NULL
//!  UPDATE:  sync_version = OLD + 1, sync_xid = xid, changed columns get
//!           (revision, xid) entries in sync_colmeta (see colvers.rs);
//!           a primary-key change starts a new row identity (created = xid)
//! ```
//!
//! In **apply mode** (set by `sync_apply` through [`ApplyMode`], for the
//! one table it writes) the row is left as the engine stamped it: the
//! resolver's sync_version, sync_origin and sync_colmeta, and the xid.
//!
//! Stamping in-row, rather than in a side table, is what keeps tracked
//! writes near the cost of untracked ones (see bench/write_overhead).
//! Whatever a statement writes into the tracking columns is overwritten:
//! they cannot be forged from SQL.

use pgrx::pg_sys;
use pgrx::prelude::*;
use tributary_core::colvers;

/// The tracking columns, by name, in the order they are replaced.
use tributary_core::tracking::COLUMNS as META_COLUMNS;

thread_local! {
    static APPLY_MODE: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
}

/// While alive, the row trigger of one table leaves the rows sync_apply
/// writes as they are: the engine has stamped every tracking column itself
/// (the resolver's version, origin and column stamps, the transaction's
/// xid). Dropping it, also on error unwinding, ends apply mode, so a
/// session can never stay in it.
pub struct ApplyMode(());

impl ApplyMode {
    pub fn enter(rel: pg_sys::Oid) -> ApplyMode {
        APPLY_MODE.with(|m| m.set(rel));
        ApplyMode(())
    }
}

impl Drop for ApplyMode {
    fn drop(&mut self) {
        APPLY_MODE.with(|m| m.set(pg_sys::InvalidOid));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("tributary.origin is {0} bytes long; at most {max} are allowed", max = tributary_core::tracking::MAX_ORIGIN_BYTES)]
    OriginTooLong(usize),
    #[error("tributary row trigger fired on a table without its tracking column \"{0}\"")]
    MissingColumn(&'static str),
    #[error("tributary row trigger must be a BEFORE INSERT OR UPDATE row trigger")]
    WrongEvent,
}

#[pg_schema]
pub mod tributary {
    use super::TrackError;
    use pgrx::prelude::*;

    /// Stamps sync_version, the xid, the origin and per-column versions.
    /// Volatile, called only as a trigger, not SECURITY DEFINER.
    #[pg_trigger]
    fn row_trigger<'a>(
        trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TrackError> {
        // SAFETY: called by the executor as a row trigger; the trigger data
        // and its tuples are valid for the duration of the call.
        unsafe { super::stamp(trigger.trigger_data()) }
    }
}

/// Attribute numbers (1-based) of the tracking columns.
struct Meta {
    att: [i32; 5],
}

impl Meta {
    const VERSION: usize = 0;
    const CREATED: usize = 2;
    const ORIGIN: usize = 3;
    const COLMETA: usize = 4;

    unsafe fn find(tupdesc: pg_sys::TupleDesc) -> Result<Self, TrackError> {
        let mut att = [0i32; 5];
        let natts = unsafe { (*tupdesc).natts };
        for i in 0..natts {
            let a = unsafe { tupdesc_attr(tupdesc, i) };
            if a.attisdropped {
                continue;
            }
            // SAFETY: attname is a NUL-terminated NameData.
            let name = unsafe { std::ffi::CStr::from_ptr(a.attname.data.as_ptr()) };
            if let Some(k) = META_COLUMNS
                .iter()
                .position(|m| m.as_bytes() == name.to_bytes())
            {
                att[k] = i + 1;
            }
        }
        for (k, a) in att.iter().enumerate() {
            if *a == 0 {
                return Err(TrackError::MissingColumn(META_COLUMNS[k]));
            }
        }
        Ok(Meta { att })
    }

    fn is_meta(&self, attnum: i32) -> bool {
        self.att.contains(&attnum)
    }
}

unsafe fn tupdesc_attr<'a>(
    tupdesc: pg_sys::TupleDesc,
    i: i32,
) -> &'a pg_sys::FormData_pg_attribute {
    // SAFETY: i < natts, and attrs is a trailing array of natts entries.
    unsafe { &*(*tupdesc).attrs.as_ptr().add(i as usize) }
}

/// Binary equality of two non-null datums of one attribute, as
/// `datumIsEqual` does: false positives ("changed" when equal in value)
/// are possible, false negatives are not.
unsafe fn datum_image_equal(
    a: pg_sys::Datum,
    b: pg_sys::Datum,
    attr: &pg_sys::FormData_pg_attribute,
) -> bool {
    if attr.attbyval {
        return a == b;
    }
    unsafe {
        match attr.attlen {
            -1 => {
                let pa = a.cast_mut_ptr::<pg_sys::varlena>();
                let pb = b.cast_mut_ptr::<pg_sys::varlena>();
                let la = pgrx::varlena::varsize_any(pa);
                let lb = pgrx::varlena::varsize_any(pb);
                la == lb
                    && std::slice::from_raw_parts(pa as *const u8, la)
                        == std::slice::from_raw_parts(pb as *const u8, lb)
            }
            -2 => {
                std::ffi::CStr::from_ptr(a.cast_mut_ptr())
                    == std::ffi::CStr::from_ptr(b.cast_mut_ptr())
            }
            n => {
                let n = n as usize;
                std::slice::from_raw_parts(a.cast_mut_ptr::<u8>() as *const u8, n)
                    == std::slice::from_raw_parts(b.cast_mut_ptr::<u8>() as *const u8, n)
            }
        }
    }
}

fn int8(v: i64) -> (pg_sys::Datum, bool) {
    (pg_sys::Datum::from(v), false)
}

fn colmeta_datum(v: Option<Vec<colvers::ColVersion>>) -> Result<(pg_sys::Datum, bool), TrackError> {
    let bytes = match v {
        Some(v) => Some(colvers::encode(&v).map_err(|e| TrackError::OriginTooLong(e.0))?),
        None => None,
    };
    Ok(match bytes.and_then(|b| b.into_datum()) {
        Some(d) => (d, false),
        None => (pg_sys::Datum::from(0), true),
    })
}

unsafe fn text_of(d: pg_sys::Datum, isnull: bool) -> String {
    if isnull {
        String::new()
    } else {
        unsafe { String::from_datum(d, false) }.unwrap_or_default()
    }
}

unsafe fn entries_of(d: pg_sys::Datum, isnull: bool) -> Vec<colvers::ColVersion> {
    unsafe { <&[u8]>::from_datum(d, isnull) }
        .map(colvers::decode)
        .unwrap_or_default()
}

unsafe fn deform(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> (Vec<pg_sys::Datum>, Vec<bool>) {
    let natts = unsafe { (*tupdesc).natts } as usize;
    let mut values = vec![pg_sys::Datum::from(0); natts];
    let mut nulls = vec![true; natts];
    // SAFETY: the arrays have natts entries.
    unsafe { pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr()) };
    (values, nulls)
}

unsafe fn stamp<'a>(
    td: &'a pg_sys::TriggerData,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TrackError> {
    let event = td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    let rel = td.tg_relation;
    let tupdesc = unsafe { (*rel).rd_att };
    if APPLY_MODE.with(|m| m.get()) == unsafe { (*rel).rd_id } {
        let tuple = if event == pg_sys::TRIGGER_EVENT_UPDATE {
            td.tg_newtuple
        } else {
            td.tg_trigtuple
        };
        return Ok(Some(unsafe {
            PgHeapTuple::from_heap_tuple(pgrx::PgTupleDesc::from_pg_unchecked(tupdesc), tuple)
        }));
    }
    let meta = unsafe { Meta::find(tupdesc)? };
    let xid = unsafe { pg_sys::GetTopFullTransactionId() }.value as i64;

    let (origin, origin_name) = unsafe { origin_stamp() };

    let (tuple, stamped): (pg_sys::HeapTuple, [(pg_sys::Datum, bool); 5]) =
        if event == pg_sys::TRIGGER_EVENT_INSERT {
            let null = (pg_sys::Datum::from(0), true);
            (
                td.tg_trigtuple,
                [int8(1), int8(xid), int8(xid), origin, null],
            )
        } else if event == pg_sys::TRIGGER_EVENT_UPDATE {
            let (old, old_null) = unsafe { deform(td.tg_trigtuple, tupdesc) };
            let (new, new_null) = unsafe { deform(td.tg_newtuple, tupdesc) };
            let at = |k: usize| (meta.att[k] - 1) as usize;
            let old_version = if old_null[at(Meta::VERSION)] {
                0
            } else {
                old[at(Meta::VERSION)].value() as i64
            };
            let version = old_version + 1;

            let changed =
                unsafe { changed_attnums(tupdesc, &meta, (&old, &old_null), (&new, &new_null)) };
            if unsafe { key_changed(rel, &changed) } {
                // A new key is a new row identity: its old key gets a tombstone
                // from the BEFORE UPDATE rekey trigger, and the row counts as
                // created now.
                (
                    td.tg_newtuple,
                    [
                        int8(version),
                        int8(xid),
                        int8(xid),
                        origin,
                        (pg_sys::Datum::from(0), true),
                    ],
                )
            } else {
                let created = if old_null[at(Meta::CREATED)] {
                    xid
                } else {
                    old[at(Meta::CREATED)].value() as i64
                };
                let mut entries =
                    unsafe { entries_of(old[at(Meta::COLMETA)], old_null[at(Meta::COLMETA)]) };
                // First update of a row a non-local origin created: keep who
                // created the unchanged columns, as sync_origin is about to change.
                let creator = unsafe { text_of(old[at(Meta::ORIGIN)], old_null[at(Meta::ORIGIN)]) };
                if old_null[at(Meta::COLMETA)] && !creator.is_empty() && !changed.is_empty() {
                    entries.push(colvers::ColVersion {
                        attnum: colvers::CREATION,
                        revision: 1,
                        xid: created,
                        origin: creator,
                        ts: 0,
                    });
                }
                let next = colvers::bump(&entries, &changed, version, xid, &origin_name, clock(td));
                (
                    td.tg_newtuple,
                    [
                        int8(version),
                        int8(xid),
                        int8(created),
                        origin,
                        colmeta_datum(next)?,
                    ],
                )
            }
        } else {
            return Err(TrackError::WrongEvent);
        };

    Ok(Some(unsafe {
        with_stamps(tuple, tupdesc, &meta, &stamped)
    }))
}

/// The origin to stamp, as a text datum (NULL: local) and as a string,
/// straight from the GUC's C string: no allocation unless set. It is the
/// origin of the statement the session ran, not of what that statement's
/// triggers did in turn (a cascade, a user trigger's write, at trigger
/// depth 2 and more): the peer did not make those, so they are local and
/// reach it like any hub change.
pub(crate) unsafe fn origin_stamp() -> ((pg_sys::Datum, bool), String) {
    unsafe {
        let raw = *crate::api::guc::ORIGIN.as_ptr();
        if raw.is_null() || *raw == 0 || nested() {
            ((pg_sys::Datum::from(0), true), String::new())
        } else {
            (
                (pg_sys::Datum::from(pg_sys::cstring_to_text(raw)), false),
                std::ffi::CStr::from_ptr(raw).to_string_lossy().into_owned(),
            )
        }
    }
}

/// The attribute numbers of the data columns an update changes (tracking
/// columns and dropped ones left out), compared as stored images.
unsafe fn changed_attnums(
    tupdesc: pg_sys::TupleDesc,
    meta: &Meta,
    (old, old_null): (&[pg_sys::Datum], &[bool]),
    (new, new_null): (&[pg_sys::Datum], &[bool]),
) -> Vec<u16> {
    let mut changed: Vec<u16> = Vec::new();
    for i in 0..old.len() {
        let attr = unsafe { tupdesc_attr(tupdesc, i as i32) };
        if attr.attisdropped || meta.is_meta(i as i32 + 1) {
            continue;
        }
        let differs = match (old_null[i], new_null[i]) {
            (true, true) => false,
            (false, false) => unsafe { !datum_image_equal(old[i], new[i], attr) },
            _ => true,
        };
        if differs {
            changed.push(i as u16 + 1);
        }
    }
    changed
}

/// Whether any of the `changed` attributes is part of the primary key.
unsafe fn key_changed(rel: pg_sys::Relation, changed: &[u16]) -> bool {
    !changed.is_empty()
        && unsafe {
            let pk = pg_sys::RelationGetIndexAttrBitmap(
                rel,
                pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_PRIMARY_KEY,
            );
            changed.iter().any(|a| {
                pg_sys::bms_is_member(
                    i32::from(*a) - pg_sys::FirstLowInvalidHeapAttributeNumber,
                    pk,
                )
            })
        }
}

/// Whether this trigger fires for a statement run by another trigger (an
/// `ON DELETE CASCADE`, `ON UPDATE SET NULL`, a user trigger's write).
fn nested() -> bool {
    // SAFETY: pg_trigger_depth reads a backend-local counter and takes no
    // arguments.
    let depth = unsafe { pgrx::direct_function_call::<i32>(pg_sys::pg_trigger_depth, &[]) };
    depth.unwrap_or(1) > 1
}

/// The hybrid-clock time of a local write, for tables whose row trigger
/// was created with the argument `lww` (the last_writer_wins policy): the
/// transaction's start, in microseconds since the Unix epoch. 0 otherwise,
/// so that other tables store no clock.
fn clock(td: &pg_sys::TriggerData) -> i64 {
    // SAFETY: tg_trigger and its argument array are valid during the call.
    let lww = unsafe {
        let t = &*td.tg_trigger;
        t.tgnargs > 0 && std::ffi::CStr::from_ptr(*t.tgargs).to_bytes() == b"lww"
    };
    if lww {
        // PostgreSQL timestamps count from 2000-01-01.
        (unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }) + 946_684_800_000_000
    } else {
        0
    }
}

/// A copy of `tuple` with the tracking columns replaced by `stamped`.
unsafe fn with_stamps<'a>(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    meta: &Meta,
    stamped: &[(pg_sys::Datum, bool); 5],
) -> PgHeapTuple<'a, AllocatedByPostgres> {
    let mut cols = meta.att;
    let mut values: Vec<pg_sys::Datum> = stamped.iter().map(|s| s.0).collect();
    let mut nulls: Vec<bool> = stamped.iter().map(|s| s.1).collect();
    unsafe {
        let out = pg_sys::heap_modify_tuple_by_cols(
            tuple,
            tupdesc,
            cols.len() as i32,
            cols.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        PgHeapTuple::from_heap_tuple(pgrx::PgTupleDesc::from_pg_unchecked(tupdesc), out)
    }
}
