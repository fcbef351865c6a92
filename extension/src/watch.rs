//! `sync_changed_for`: for the gateway's one shared long-poll watcher,
//! which waiting requests (each a claims set) would read a change of which
//! tables in a window. Every rule is `tributary._changes_query`'s; this only
//! decides how often to ask.
//!
//! ```text
//!  per table, once (as the caller: privileges and row-level security apply):
//!    its filter changed since `since` (a diff) ....... every claims set (TB002 awaits them)
//!    row-level security on it ........................ per claims set: the scoped read, as EXISTS
//!    no filter ....................................... one unscoped EXISTS: every claims set, or none
//!    a filter ........................................ the distinct row images that decide
//!                                                      (tributary._changed_images), read and
//!                                                      typed once; per claims set: does the
//!                                                      filter admit one
//!  per claims set:  tributary.claims := it (a GUC nest level, restored at
//!                   the end); one statement runs, ARRAY[<each such table's
//!                   test>], prepared and planned once (plan_cache_mode =
//!                   force_generic_plan, also restored)
//! ```

use crate::api::guc::ClaimsSetting;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::SpiClient;

/// The window asked about, in xids (versions less the offset).
#[derive(Clone, Copy)]
pub struct Window {
    /// [lo, hi)
    pub lo: i64,
    pub hi: i64,
    /// A diff (since > 0): deletes count; a full read (since 0) reads rows only.
    pub diff: bool,
}

/// A (claims set, table) pair: that claims set reads a change of it.
pub struct Changed {
    /// 1-based, as SQL arrays count.
    pub claims_index: i32,
    pub tbl: pg_sys::Oid,
}

/// $1 oid, $2 the window's first xid, $3 a diff: whether the table has a
/// filter, whether it changed since the window's start, and the filter
/// over a row `t` in scope.
const HEAD: &str = "\
SELECT f.filter IS NOT NULL, $3 AND $2 <= f.since_xid, tributary._admits(f, NULL)
  FROM tributary.filters f WHERE f.relid = $1";

/// $1 oid, $2 a diff (1) or a full read (0), $3 scoped: the read's SQL.
const READ: &str = "SELECT tributary._changes_query($1, $2, false, $3)";

/// $1 oid, $2 a diff (1) or a full read (0): the images' SQL.
const IMAGES: &str = "SELECT tributary._changed_images($1, $2)";

/// What a table's answer depends on.
enum Probe {
    Nobody,
    Everyone,
    /// A boolean SQL expression that says for the claims set in effect
    /// (over the window's parameters $1..$3 and, when it has one, the
    /// parameter it was given for its images), and that argument.
    PerClaims(String, Option<DatumWithOid<'static>>),
}

/// Which of `claims` (JSON object texts) read a change of which of
/// `tables` in `window`.
pub fn changed_for(
    client: &mut SpiClient<'_>,
    window: Window,
    tables: &[pg_sys::Oid],
    claims: &[String],
) -> Vec<Changed> {
    let Window { lo, hi, .. } = window;
    let mut out = Vec::new();
    let mut seen = Vec::new();
    // One statement for the tables whose answer depends on the claims:
    // ARRAY[<table 1's>, ...], run once per claims set.
    let mut pieces: Vec<(pg_sys::Oid, String)> = Vec::new();
    let mut types = [pg_sys::INT8OID, pg_sys::INT8OID, pg_sys::TEXTOID]
        .map(PgOid::from)
        .to_vec();
    let mut args: Vec<DatumWithOid<'static>> = vec![
        lo.into(),
        hi.into(),
        DatumWithOid::null_oid(pg_sys::TEXTOID),
    ];
    for &rel in tables {
        if seen.contains(&rel) {
            continue;
        }
        seen.push(rel);
        match probe(client, rel, window, types.len() + 1) {
            Probe::Nobody => {}
            Probe::Everyone => out.extend((1..=claims.len()).map(|i| Changed {
                claims_index: i as i32,
                tbl: rel,
            })),
            Probe::PerClaims(sql, arg) => {
                if let Some(arg) = arg {
                    types.push(PgOid::from(arg.oid()));
                    args.push(arg);
                }
                pieces.push((rel, sql));
            }
        }
    }
    if pieces.is_empty() || claims.is_empty() {
        return out;
    }
    let q = format!(
        "SELECT ARRAY[{}]::boolean[]",
        pieces
            .iter()
            .map(|(_, p)| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let setting = ClaimsSetting::enter();
    setting.generic_plans();
    let stmt = or_raise(client.prepare(&q, &types));
    for (i, c) in claims.iter().enumerate() {
        setting.set(c);
        let hits: Vec<Option<bool>> = or_raise(
            or_raise(client.select(&stmt, Some(1), &args))
                .first()
                .get(1),
        )
        .unwrap_or_default();
        for (hit, (rel, _)) in hits.iter().zip(&pieces) {
            if *hit == Some(true) {
                out.push(Changed {
                    claims_index: i as i32 + 1,
                    tbl: *rel,
                });
            }
        }
    }
    drop(setting);
    out
}

/// How `rel`'s answer is found; `param`: the parameter number its images
/// would take.
fn probe(client: &SpiClient<'_>, rel: pg_sys::Oid, window: Window, param: usize) -> Probe {
    let Window { lo, hi, diff } = window;
    let head = or_raise(client.select(HEAD, Some(1), &[rel.into(), lo.into(), diff.into()]));
    let (filtered, changed, admits) = if head.is_empty() {
        (false, false, String::new())
    } else {
        let h = head.first();
        (
            or_raise(h.get::<bool>(1)).unwrap_or(false),
            or_raise(h.get::<bool>(2)).unwrap_or(false),
            or_raise(h.get::<String>(3)).unwrap_or_default(),
        )
    };
    if changed {
        return Probe::Everyone;
    }
    let flag = i64::from(diff);
    if rls_applies(rel) {
        let q = text(client, READ, &[rel.into(), flag.into(), true.into()]);
        return Probe::PerClaims(format!("EXISTS ({q})"), None);
    }
    if !filtered {
        let q = text(client, READ, &[rel.into(), flag.into(), false.into()]);
        let window_args = [
            lo.into(),
            hi.into(),
            DatumWithOid::null_oid(pg_sys::TEXTOID),
        ];
        let any: Option<bool> = or_raise(
            or_raise(client.select(&format!("SELECT EXISTS ({q})"), Some(1), &window_args))
                .first()
                .get(1),
        );
        return if any == Some(true) {
            Probe::Everyone
        } else {
            Probe::Nobody
        };
    }
    let q = text(client, IMAGES, &[rel.into(), flag.into()]);
    let images = or_raise(client.select(&q, Some(1), &[lo.into(), hi.into()])).first();
    let array_type = or_raise(images.column_type_oid(1));
    // The images stay in the SPI connection's memory until it ends: as
    // long as the statement that reads them is run.
    let Some(images) = or_raise(images.get_datum_by_ordinal(1)) else {
        return Probe::Nobody;
    };
    // SAFETY: an array of the table's row type, alive until the SPI
    // connection ends (nothing frees a tuple table before).
    let arg = unsafe { DatumWithOid::new(images, array_type.value()) };
    Probe::PerClaims(
        format!("EXISTS (SELECT 1 FROM unnest(${param}) AS t WHERE {admits})"),
        Some(arg),
    )
}

/// Whether row-level security applies to the caller's reads of `rel`, so
/// that what it reads may depend on the claims even without a filter.
fn rls_applies(rel: pg_sys::Oid) -> bool {
    // SAFETY: a catalog check for the current role; noError.
    let r = unsafe { pg_sys::check_enable_rls(rel, pg_sys::InvalidOid, true) };
    r == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
}

fn text(client: &SpiClient<'_>, q: &str, args: &[DatumWithOid<'_>]) -> String {
    or_raise(
        or_raise(client.select(q, Some(1), args))
            .first()
            .get::<String>(1),
    )
    .unwrap_or_default()
}

fn or_raise<T>(r: pgrx::spi::SpiResult<T>) -> T {
    r.unwrap_or_else(|e| pgrx::error!("tributary: internal query failed: {e}"))
}
