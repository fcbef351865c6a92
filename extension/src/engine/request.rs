//! Phase 1: the call, checked, and the batch, typed.
//!
//! ```text
//!  the SQL is this library's release ..... 55000 (ALTER EXTENSION UPDATE)
//!  caller may execute sync_apply ......... 42501
//!  the table is tracked .................. (tributary._tracked's error)
//!  origin: not NULL (22004), 1..255 bytes (22023), one the caller may
//!    speak for (42501, crate::privilege); changes not NULL (22023)
//!  the table's policy (a custom resolver its owner owns: 42501) and the
//!    peers' priorities; the session's claims, and the table's row filter
//!    when they are set (scope.rs)
//!  the batch, checked and typed in one pass (batch.rs: 22023, 42703, class 22)
//!  keys numbered by first appearance: the engine's state lives in vectors
//!  by that number, and rows are written in that order
//! ```

use super::batch;
use super::params::TextCol;
use super::{or_raise, raise, sql, Map};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};
use tributary_core::jsontext;
use tributary_core::quote;
use tributary_core::resolver::{Change, Policy, Priorities, Text};
use tributary_core::tracking::{check_origin, MAX_ORIGIN_BYTES};

/// A checked call: the table, the origin, the rules, the typed batch.
pub struct Request {
    pub tbl: pg_sys::Oid,
    pub origin: String,
    /// Run by `_retry_pending`: changes are not parked again, nor retried.
    pub retrying: bool,
    pub prio: Priorities,
    /// The custom policy's function, when the table has one.
    pub custom_fn: Option<String>,
    /// The columns (with their input functions) and the key.
    pub table: batch::Table,
    /// Column name -> attnum, keyed by the interned names the engine's maps
    /// share.
    pub attnum: Map<Text, u16>,
    /// The key columns' names (tributary.tracked.pk_columns).
    pub pk_columns: Vec<String>,
    /// The batch as sent, to print a parked change again.
    pub batch: batch::Batch,
    /// The session's tributary.claims ('' for none): parked changes keep
    /// them, and replay under them.
    pub claims: String,
    /// The table's row filter, when the session is scoped.
    pub scope: Option<super::scope::Scope>,
    /// The changes, typed, in batch order.
    pub changes: Vec<Change>,
    pub keys: Keys,
}

/// The batch's keys, numbered by first appearance.
pub struct Keys {
    /// Each key as jsonb text, by number.
    pub text: Vec<String>,
    /// Each change's key number.
    pub of_change: Vec<usize>,
    /// The key columns' input texts, by number: the load's parameters.
    pub columns: Vec<TextCol>,
}

/// The row of `sql::HEAD`.
struct Head {
    name: String,
    pk_columns: Vec<String>,
    retrying: bool,
}

impl Head {
    fn read(t: SpiTupleTable<'_>) -> Head {
        let t = t.first();
        Head {
            name: or_raise(t.get(1)).unwrap_or_default(),
            pk_columns: or_raise(t.get(2)).unwrap_or_default(),
            retrying: super::replay::replaying(),
        }
    }
}

/// Checks the call and types the batch, in the order of the checks above;
/// nothing has been written when one fails.
pub fn read(
    client: &mut SpiClient<'_>,
    tbl: pg_sys::Oid,
    changes: Option<pg_sys::Datum>,
    origin: Option<&str>,
) -> Request {
    crate::release::check_sql_current(client, "sync_apply");
    super::check_may_run(client, &["sync_apply"]);
    // sync_apply checked that the table is tracked, with its own SQLSTATE.
    let tbl_arg = if tbl == pg_sys::InvalidOid {
        pgrx::datum::DatumWithOid::null_oid(pg_sys::REGCLASSOID)
    } else {
        tbl.into()
    };
    let head = Head::read(or_raise(client.select(sql::HEAD, None, &[tbl_arg])));
    let origin = checked_origin(origin);
    crate::privilege::check_claim(client, origin, "sync_apply");
    let Some(changes) = changes else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "changes must be a JSON array",
            "Got NULL.".into(),
            "Pass [{\"op\":\"U\",\"pk\":{...},\"data\":{...},\"version\":N}, ...].",
        )
    };
    let (prio, custom_fn) = load_priorities(client, tbl);
    let scope = super::scope::read(client, tbl);
    let mut table = batch::Table::load(tbl, head.name, &head.pk_columns);
    let lww = prio.policy == Policy::LastWriterWins;
    let mut batch = type_batch(client, &mut table, changes, lww);
    let keys = number_keys(&table, &batch.changes);
    let origin_t: Text = origin.into();
    let latest = latest_ts();
    let changes = std::mem::take(&mut batch.changes)
        .into_iter()
        .map(|p| Change {
            op: p.op,
            version: p.version,
            origin: origin_t.clone(),
            values: p.values,
            expect_version: p.expect_version,
            ts: p.ts.min(latest),
        })
        .collect();
    let attnum = table
        .columns
        .iter()
        .map(|c| (c.key.clone(), c.attnum as u16))
        .collect();
    Request {
        tbl,
        origin: origin.to_string(),
        retrying: head.retrying,
        prio,
        custom_fn,
        table,
        attnum,
        pk_columns: head.pk_columns,
        batch,
        claims: crate::api::guc::claims(),
        scope,
        changes,
        keys,
    }
}

/// The latest change time (µs since the Unix epoch) a peer may claim: the
/// hub's clock plus `tributary.max_clock_skew`. Later claims are clamped.
fn latest_ts() -> i64 {
    // SAFETY: reads the system clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() } + 946_684_800_000_000;
    now.saturating_add(i64::from(crate::api::guc::MAX_CLOCK_SKEW.get()) * 1_000_000)
}

fn checked_origin(origin: Option<&str>) -> &str {
    let Some(origin) = origin else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "origin must not be NULL",
            "sync_apply needs the name of the peer the changes come from.".into(),
            "Pass the peer's name, e.g. sync_apply('customers', $1, 'CRM'); it is stamped on the writes so they are not echoed back.",
        )
    };
    if check_origin(origin).is_err() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            &format!("origin must be a peer name of 1 to {MAX_ORIGIN_BYTES} bytes"),
            format!(
                "origin = {}.",
                quote::literal(&origin.chars().take(80).collect::<String>())
            ),
            "Pass the peer's name, e.g. 'CRM'.",
        )
    }
    origin
}

/// The table's rules, and the custom resolver's name when it has one.
fn load_priorities(client: &SpiClient<'_>, tbl: pg_sys::Oid) -> (Priorities, Option<String>) {
    let mut p = Priorities::default();
    // No row: the default policy.
    let row = or_raise(client.select(sql::POLICY, None, &[tbl.into()])).first();
    let policy: Option<String> = row.get(1).unwrap_or(None);
    let resolver: Option<String> = row.get(2).unwrap_or(None);
    let owned: Option<bool> = row.get(3).unwrap_or(None);
    if let (Some(f), Some(false)) = (&resolver, owned) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            &format!("the custom resolver {f} is not owned by the table's owner"),
            "A custom resolver runs as the owner of its table, and only a function that owner owns is run.".into(),
            "As the table's owner: ALTER FUNCTION ... OWNER TO the table's owner, or sync_set_policy(tbl, 'custom', a function you own).",
        )
    }
    p.policy = policy
        .as_deref()
        .and_then(Policy::parse)
        .unwrap_or_default();
    for r in or_raise(client.select(sql::PEERS, None, &[])) {
        let name: String = or_raise(r.get(1)).unwrap_or_default();
        let priority: i32 = or_raise(r.get(2)).unwrap_or(i32::MAX);
        p.peers.insert(name, priority);
    }
    (p, resolver)
}

/// The batch, checked and typed in one pass; array and composite values
/// are typed by jsonb_populate_record, one at a time.
fn type_batch(
    client: &SpiClient<'_>,
    table: &mut batch::Table,
    changes: pg_sys::Datum,
    lww: bool,
) -> batch::Batch {
    let populate_sql = sql::populate_value(&table.name);
    let mut populate = |col: &str, json: &str| -> String {
        let args = [col.to_string().into(), json.to_string().into()];
        let row: Option<String> = or_raise(
            or_raise(client.select(&populate_sql, None, &args))
                .first()
                .get(1),
        );
        jsontext::split_object(row.as_deref().unwrap_or("{}"))
            .unwrap_or_default()
            .into_iter()
            .find(|(k, _)| k == col)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| "null".into())
    };
    batch::parse(changes, table, lww, &mut populate)
}

/// Numbers the keys by first appearance, and gathers their key columns'
/// input texts.
fn number_keys(table: &batch::Table, changes: &[batch::Parsed]) -> Keys {
    let mut keys = Keys {
        text: Vec::new(),
        of_change: Vec::with_capacity(changes.len()),
        columns: vec![TextCol::default(); table.pk.len()],
    };
    let mut seen: Map<&str, usize> =
        Map::with_capacity_and_hasher(changes.len(), Default::default());
    for p in changes {
        let next = keys.text.len();
        let k = *seen.entry(p.key.as_str()).or_insert(next);
        keys.of_change.push(k);
        if k < next {
            continue;
        }
        keys.text.push(p.key.clone());
        for (n, (col, v)) in table.pk.iter().zip(&p.pk_values).enumerate() {
            keys.columns[n].push_input(table, *col, v);
        }
    }
    keys
}
