//! `tributary._changed_for`: the SQL surface of `sync_changed_for`
//! (sql/gateway.sql checks the window, the tables and the claims first, so
//! that its errors keep their SQLSTATEs). The work is `crate::watch`.

use pgrx::prelude::*;

#[pg_schema]
pub mod tributary {
    use pgrx::prelude::*;

    /// For each claims set (1-based) and table, whether a session scoped
    /// with those claims reads a change of the table in the xids [lo, hi)
    /// (a diff when `diff`). VOLATILE (it sets tributary.claims, and
    /// restores it), PARALLEL UNSAFE, STRICT, not SECURITY DEFINER: it reads
    /// as the caller. Executable by anyone: it tells nothing the caller could
    /// not read with claims of its choosing.
    #[pg_extern(
        volatile,
        strict,
        sql = r#"
CREATE FUNCTION tributary._changed_for(lo bigint, hi bigint, diff boolean, tables oid[], claims text[])
RETURNS TABLE (claims_index integer, tbl oid)
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_changed_for_wrapper';
"#
    )]
    fn _changed_for(
        lo: i64,
        hi: i64,
        diff: bool,
        tables: Vec<Option<pg_sys::Oid>>,
        claims: Vec<Option<String>>,
    ) -> TableIterator<'static, (name!(claims_index, i32), name!(tbl, pg_sys::Oid))> {
        let tables: Vec<pg_sys::Oid> = tables.into_iter().flatten().collect();
        let claims: Vec<String> = claims.into_iter().map(Option::unwrap_or_default).collect();
        let changed = Spi::connect_mut(|client| {
            let window = crate::watch::Window { lo, hi, diff };
            crate::watch::changed_for(client, window, &tables, &claims)
        });
        TableIterator::new(changed.into_iter().map(|c| (c.claims_index, c.tbl)))
    }
}
