//! The scope phase: a scoped session (`tributary.claims` set, as the
//! gateway sets it) writes nothing outside its row filter. Checked around
//! the writes, only when the table has a filter:
//!
//! ```text
//!  after load      (a) every key the batch touches: its hub row, or its
//!                      tombstone's image, is admitted
//!  after park      (c) every parked change (DEFERRED, an insert or update):
//!                      the row it would make (the hub's values, its own over
//!                      them) is admitted
//!  after execute   (b) every row the batch's keys have now is admitted (no
//!                      move out of the filter, no row created outside it;
//!                      the table's own triggers have run)
//!  any refusal: 42501, naming the change and its key; the error aborts the
//!  statement, so nothing of the batch stays applied
//! ```
//!
//! The filter is the table owner's SQL: it runs here as the caller, never
//! as the state owner (only reading the filter's text is done as the owner).

use super::decide::Decisions;
use super::load::Loaded;
use super::request::Request;
use super::{object_text, or_raise, raise, sql};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::collections::BTreeMap;
use tributary_core::resolver::{Op, Outcome};

/// The filter of a scoped session's table, as SQL the checks embed.
pub struct Scope {
    /// "The filter admits the image `x.img`" (jsonb).
    admits_image: String,
    /// "The filter admits the row `r`" (a row of the table).
    admits_row: String,
}

/// The table's filter when the session is scoped, None otherwise.
pub fn read(client: &SpiClient<'_>, tbl: pg_sys::Oid) -> Option<Scope> {
    if crate::api::guc::claims().is_empty() {
        return None;
    }
    let row = crate::privilege::as_state_owner(|| {
        or_raise(client.select(sql::SCOPE, Some(1), &[tbl.into()]))
    });
    if row.is_empty() {
        return None;
    }
    let row = row.first();
    Some(Scope {
        admits_image: or_raise(row.get(1)).unwrap_or_default(),
        admits_row: or_raise(row.get(2)).unwrap_or_default(),
    })
}

/// Which check refused.
#[derive(Clone, Copy)]
enum Check {
    Current,
    Parked,
    Written,
}

/// (a): the keys' rows and tombstone images as the hub holds them.
pub fn check_current(client: &SpiClient<'_>, req: &Request, loaded: &Loaded, s: &Scope) {
    if let Some(k) = first_row_outside(client, req, s) {
        refuse(req, first_change_of(req, k), Check::Current);
    }
    let dead: Vec<usize> = (0..req.keys.text.len())
        .filter(|k| loaded.state(*k).is_some_and(|st| !st.alive))
        .collect();
    let images: Vec<String> = dead
        .iter()
        .filter_map(|k| loaded.state(*k))
        .map(|st| object_text(st.cells.iter().map(|(c, v)| (&**c, &*v.value))))
        .collect();
    if let Some(n) = first_image_outside(client, images, s) {
        refuse(req, first_change_of(req, dead[n]), Check::Current);
    }
}

/// (c): the rows the parked inserts and updates would make.
pub fn check_parked(
    client: &SpiClient<'_>,
    req: &Request,
    loaded: &Loaded,
    d: &Decisions,
    s: &Scope,
) {
    let deferred = Outcome::Deferred.as_str();
    let parked: Vec<usize> = (0..req.changes.len())
        .filter(|i| d.outcomes[*i].outcome == deferred && req.changes[*i].op != Op::Delete)
        .collect();
    let images: Vec<String> = parked
        .iter()
        .map(|i| {
            let mut row: BTreeMap<&str, &str> = BTreeMap::new();
            if let Some(st) = loaded.state(req.keys.of_change[*i]) {
                row.extend(st.cells.iter().map(|(c, v)| (&**c, &*v.value)));
            }
            row.extend(req.changes[*i].values.iter().map(|(c, v)| (&**c, &**v)));
            object_text(row.into_iter())
        })
        .collect();
    if let Some(n) = first_image_outside(client, images, s) {
        refuse(req, parked[n], Check::Parked);
    }
}

/// (b): the rows the batch's keys have after the writes.
pub fn check_written(client: &SpiClient<'_>, req: &Request, s: &Scope) {
    if let Some(k) = first_row_outside(client, req, s) {
        let last = (0..req.changes.len())
            .rev()
            .find(|i| req.keys.of_change[*i] == k)
            .unwrap_or(0);
        refuse(req, last, Check::Written);
    }
}

/// The first key (by number) whose row the filter does not admit.
fn first_row_outside(client: &SpiClient<'_>, req: &Request, s: &Scope) -> Option<usize> {
    let q = sql::rows_outside(&req.table, &s.admits_row);
    let args = super::params::columns(&req.keys.columns);
    first_number(client, &q, &args)
}

/// The first image (by position) the filter does not admit.
fn first_image_outside(client: &SpiClient<'_>, images: Vec<String>, s: &Scope) -> Option<usize> {
    if images.is_empty() {
        return None;
    }
    let q = sql::images_outside(&s.admits_image);
    first_number(client, &q, &[images.into()])
}

fn first_number(
    client: &SpiClient<'_>,
    q: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> Option<usize> {
    let t = or_raise(client.select(q, Some(1), args));
    if t.is_empty() {
        return None;
    }
    let n: Option<i64> = or_raise(t.first().get(1));
    n.map(|n| n as usize - 1)
}

fn first_change_of(req: &Request, key: usize) -> usize {
    req.keys
        .of_change
        .iter()
        .position(|k| *k == key)
        .unwrap_or(0)
}

fn refuse(req: &Request, change: usize, why: Check) -> ! {
    let key = &req.keys.text[req.keys.of_change[change]];
    let what = match why {
        Check::Current => "the hub's row of that key is not one this session's filter admits",
        Check::Parked => "the row it would make (parked for a missing parent) is not one this session's filter admits",
        Check::Written => "the row it leaves is not one this session's filter admits (a move out of the filter, or a row created outside it)",
    };
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        &format!(
            "change #{} is outside the row filter of {}",
            change + 1,
            req.table.name
        ),
        format!(
            "Change #{} (key {key}): {what}. Nothing of the batch was applied.",
            change + 1
        ),
        "The row is outside the filter of this peer (its claims): a peer reads and writes only rows its filter admits; see sync_filters.",
    )
}
