// In-backend tests (`cargo pgrx test`), included into the extension crate
// under `#[cfg(any(test, feature = "pg_test"))]`. The cross-connection
// guarantees are tested in tests/ against a throwaway cluster.

use pgrx::prelude::*;

fn setup(table: &str) {
    Spi::run(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, a text, b int); SELECT sync_track('{table}')"
    ))
    .unwrap();
}

fn one<T: pgrx::IntoDatum + pgrx::FromDatum>(sql: &str) -> Option<T> {
    Spi::get_one::<T>(sql).unwrap()
}

#[pg_test]
fn insert_stamps_revision_one_and_the_top_level_xid() {
    setup("t_ins");
    Spi::run("INSERT INTO t_ins VALUES (1, 'x', 1)").unwrap();
    assert_eq!(one::<i64>("SELECT sync_version FROM t_ins"), Some(1));
    assert_eq!(
        one::<bool>("SELECT sync_xid = pg_current_xact_id()::text::bigint AND sync_created_xid = sync_xid FROM t_ins"),
        Some(true)
    );
    assert_eq!(one::<bool>("SELECT sync_colmeta IS NULL AND sync_origin IS NULL FROM t_ins"), Some(true));
}

#[pg_test]
fn a_write_inside_a_savepoint_is_stamped_with_the_top_level_xid() {
    setup("t_sp");
    let top = one::<i64>("SELECT pg_current_xact_id()::text::bigint").unwrap();
    // SPI refuses SAVEPOINT; a PL/pgSQL EXCEPTION block is a subtransaction.
    Spi::run("DO $$ BEGIN BEGIN INSERT INTO t_sp VALUES (1, 'x', 1); EXCEPTION WHEN others THEN RAISE; END; END $$")
        .unwrap();
    assert_eq!(one::<i64>("SELECT sync_xid FROM t_sp"), Some(top));
}

#[pg_test]
fn update_bumps_the_revision_and_records_only_changed_columns() {
    setup("t_upd");
    Spi::run("INSERT INTO t_upd VALUES (1, 'x', 1)").unwrap();
    Spi::run("UPDATE t_upd SET b = 2").unwrap();
    Spi::run("UPDATE t_upd SET b = 3, a = 'x'").unwrap(); // a is rewritten with the same value
    assert_eq!(one::<i64>("SELECT sync_version FROM t_upd"), Some(3));
    let entries = one::<String>(
        "SELECT string_agg(attnum || ':' || revision, ',' ORDER BY attnum) FROM t_upd, tributary.colmeta_entries(sync_colmeta)",
    );
    assert_eq!(entries.as_deref(), Some("3:3"), "only b (attnum 3) changed, last at revision 3");
}

#[pg_test]
fn a_no_op_update_is_still_a_revision() {
    setup("t_noop");
    Spi::run("INSERT INTO t_noop VALUES (1, 'x', 1); UPDATE t_noop SET a = a").unwrap();
    assert_eq!(one::<i64>("SELECT sync_version FROM t_noop"), Some(2));
    assert_eq!(one::<bool>("SELECT sync_colmeta IS NULL FROM t_noop"), Some(true));
}

#[pg_test]
fn origin_guc_tags_the_row() {
    setup("t_org");
    Spi::run("SET LOCAL tributary.origin = 'erp'; INSERT INTO t_org VALUES (1, 'x', 1)").unwrap();
    assert_eq!(one::<String>("SELECT sync_origin FROM t_org").as_deref(), Some("erp"));
    Spi::run("SET LOCAL tributary.origin = ''; UPDATE t_org SET b = 5").unwrap();
    assert_eq!(one::<String>("SELECT sync_origin FROM t_org"), None, "empty origin means local");
}

#[pg_test]
fn delete_writes_a_tombstone_with_the_next_revision() {
    setup("t_del");
    Spi::run("INSERT INTO t_del VALUES (7, 'x', 1); UPDATE t_del SET b = 2; DELETE FROM t_del").unwrap();
    assert_eq!(
        one::<String>("SELECT pk::text || ' v' || version FROM tributary.tombstones WHERE relid = 't_del'::regclass")
            .as_deref(),
        Some(r#"{"id": 7} v3"#)
    );
}

#[pg_test]
fn current_version_is_the_snapshot_xmin() {
    assert_eq!(
        one::<bool>("SELECT sync_current_version() = pg_snapshot_xmin(pg_current_snapshot())::text::bigint"),
        Some(true)
    );
    // Our own open transaction holds the horizon: our writes are not final yet.
    let mine = one::<i64>("SELECT pg_current_xact_id()::text::bigint").unwrap();
    assert!(one::<i64>("SELECT sync_current_version()").unwrap() <= mine);
}

#[pg_test(error = "table t_nopk has no primary key")]
fn tracking_a_table_without_a_primary_key_is_refused() {
    Spi::run("CREATE TABLE t_nopk (a int); SELECT sync_track('t_nopk')").unwrap();
}

#[pg_test(error = "version is from the future")]
fn a_future_version_is_refused() {
    setup("t_fut");
    Spi::run("SELECT * FROM sync_changes_since(sync_current_version() + 100)").unwrap();
}
