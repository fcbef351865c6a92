//! SQL access to the packed per-column versions (`sync_colmeta`, see
//! `colvers.rs`): used by `sync_changes_since` for `changed_columns`, and
//! by people inspecting a row.

#[pgrx::pg_schema]
pub mod tributary {
    use crate::colvers;
    use pgrx::prelude::*;

    /// The names of the columns changed at or after xid `since`.
    /// IMMUTABLE, PARALLEL SAFE, not strict (a NULL `meta` means no column
    /// changed since creation), not SECURITY DEFINER.
    #[pg_extern(immutable, parallel_safe)]
    fn changed_columns<'a>(
        meta: Option<&[u8]>,
        created_xid: i64,
        since: i64,
        attnums: Array<'a, i16>,
        names: Array<'a, &'a str>,
    ) -> Vec<String> {
        let entries = meta.map(colvers::decode).unwrap_or_default();
        let atts: Vec<u16> = attnums.iter().map(|a| a.unwrap_or(0) as u16).collect();
        let names: Vec<&str> = names.iter().map(|n| n.unwrap_or("")).collect();
        colvers::changed_since_xid(&entries, &atts, since, created_xid)
            .into_iter()
            .filter_map(|i| names.get(i).map(|n| n.to_string()))
            .collect()
    }

    /// The packed per-column versions as JSON, for inspection:
    /// `[{"attnum": 3, "revision": 5, "xid": 812}, …]`.
    /// IMMUTABLE, STRICT, PARALLEL SAFE, not SECURITY DEFINER.
    #[pg_extern(immutable, strict, parallel_safe)]
    fn colmeta_entries(
        meta: &[u8],
    ) -> TableIterator<'static, (name!(attnum, i16), name!(revision, i64), name!(xid, i64))> {
        TableIterator::new(
            colvers::decode(meta)
                .into_iter()
                .map(|e| (e.attnum as i16, e.revision, e.xid))
                .collect::<Vec<_>>(),
        )
    }
}
