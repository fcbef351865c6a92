//! The SQL surface of row filters that `sql/filter.sql` calls: the text
//! check, and the store of a filter, written as the state's owner.
//!
//! ```text
//!  sync_set_filter (PL/pgSQL, as the caller: tracked, owner, probe view, columns)
//!    └─> tributary._store_filter(tbl, filter, columns)
//!          caller may run sync_set_filter, owns the table (or is a superuser)
//!          as the state owner: tributary.filters upserted (since_xid = this xid,
//!            when it changed), the table's moves dropped (they were the old
//!            filter's); the table's triggers made again (tributary._install_triggers)
//! ```
//!
//! The filter itself (user SQL) never runs here: only its text is stored.

use crate::privilege::{self, as_state_owner};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// $1 oid, $2 the filter (NULL: removed), $3 its columns. A new row, or a
/// changed filter, gets this transaction's xid; removing a filter that is
/// not there records nothing. The moves of a changed filter go.
const STORE: &str = "\
WITH stored AS (
    INSERT INTO tributary.filters AS f (relid, filter, columns, since_xid)
    SELECT $1::regclass, $2, CASE WHEN $2 IS NOT NULL THEN $3 END, pg_current_xact_id()::text::bigint
     WHERE $2 IS NOT NULL OR EXISTS (SELECT 1 FROM tributary.filters x WHERE x.relid = $1 AND x.filter IS NOT NULL)
    ON CONFLICT (relid) DO UPDATE
       SET filter = excluded.filter, columns = excluded.columns, since_xid = excluded.since_xid, updated_at = now()
     WHERE f.filter IS DISTINCT FROM excluded.filter OR f.columns IS DISTINCT FROM excluded.columns
    RETURNING f.relid)
DELETE FROM tributary.moves m USING stored s WHERE m.relid = s.relid";

/// $1 oid: the table's key, when it is tracked.
const TRACKED_KEY: &str = "SELECT pk_columns FROM tributary.tracked WHERE relid = $1 AND active";

/// $1 oid, $2 its key: the tracking triggers, with or without the filter's.
const INSTALL: &str = "SELECT tributary._install_triggers($1::regclass, $2)";

#[pg_schema]
pub mod tributary {
    use pgrx::prelude::*;

    /// Raises 22023 unless `filter` can only be one expression
    /// (`crate::filter::check_text`). IMMUTABLE, STRICT, PARALLEL SAFE, not
    /// SECURITY DEFINER.
    #[pg_extern(
        immutable,
        strict,
        parallel_safe,
        sql = r#"
CREATE FUNCTION tributary._check_filter_text(filter text) RETURNS void
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', '_check_filter_text_wrapper';
"#
    )]
    fn _check_filter_text(filter: &str) {
        super::check_or_raise(filter)
    }

    /// Stores a table's row filter for `sync_set_filter` (sql/filter.sql,
    /// which checked the expression as the caller). VOLATILE, not strict,
    /// PARALLEL UNSAFE, not SECURITY DEFINER: executable by anyone, it acts
    /// only for roles that may run sync_set_filter and own the table, and
    /// writes as the state's owner.
    #[pg_extern(
        volatile,
        sql = r#"
CREATE FUNCTION tributary._store_filter(tbl regclass, filter text, columns text[]) RETURNS void
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_store_filter_wrapper';
"#
    )]
    fn _store_filter(
        tbl: Option<pg_sys::Oid>,
        filter: Option<String>,
        columns: Option<Vec<Option<String>>>,
    ) {
        let columns: Vec<String> = columns.unwrap_or_default().into_iter().flatten().collect();
        Spi::connect_mut(|client| {
            super::store(client, tbl.unwrap_or(pg_sys::InvalidOid), filter, columns)
        })
    }
}

/// Raises 22023 with a hint unless the text is one expression.
pub fn check_or_raise(filter: &str) {
    if let Err(bad) = crate::filter::check_text(filter) {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("a row filter must be one expression: {bad}"),
            "sync_set_filter",
        )
        .set_detail(format!(
            "filter = {}.",
            tributary_core::quote::literal(&filter.chars().take(200).collect::<String>())
        ))
        .set_hint(format!(
            "Write a single expression, without {}, e.g. tenant_id::text = sync_claim('tenant').",
            crate::filter::REFUSED.join(" ")
        ))
        .report(PgLogLevel::ERROR);
    }
}

fn raise(code: PgSqlErrorCode, message: String, detail: String, hint: &str) -> ! {
    ErrorReport::new(code, message, "sync_set_filter")
        .set_detail(detail)
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!()
}

fn store(
    client: &mut pgrx::spi::SpiClient<'_>,
    tbl: pg_sys::Oid,
    filter: Option<String>,
    columns: Vec<String>,
) {
    crate::release::check_sql_current(client, "sync_set_filter");
    crate::engine::check_may_run(client, &["sync_set_filter"]);
    let caller = privilege::caller();
    // SAFETY: a catalog check of role membership (ownership, as ALTER TABLE checks it).
    let owns = tbl != pg_sys::InvalidOid
        && unsafe { pg_sys::has_privs_of_role(caller, privilege::rel_owner(tbl)) };
    if !owns {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "only the owner of a table may set its row filter".into(),
            format!(
                "Role {} does not own the table (oid {}).",
                privilege::role_name(caller),
                tbl.to_u32()
            ),
            "Run sync_set_filter as the table's owner (or a superuser).",
        )
    }
    let key: Option<Vec<String>> = client
        .select(TRACKED_KEY, Some(1), &[tbl.into()])
        .and_then(|t| t.first().get(1))
        .unwrap_or_else(|e| pgrx::error!("tributary: internal query failed: {e}"));
    let Some(key) = key else {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table with oid {} is not tracked", tbl.to_u32()),
            "A row filter belongs to a tracked table.".into(),
            "Run SELECT sync_track(...) first.",
        )
    };
    if let Some(f) = &filter {
        check_or_raise(f);
    }
    as_state_owner(|| {
        let args = [tbl.into(), filter.into(), columns.into()];
        client
            .update(STORE, None, &args)
            .and_then(|_| client.update(INSTALL, None, &[tbl.into(), key.into()]))
            .unwrap_or_else(|e| pgrx::error!("tributary: storing a row filter failed: {e}"));
    });
}
