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

#[pg_test]
fn row_json_equals_to_jsonb_for_every_common_type() {
    Spi::run(
        r#"CREATE TYPE mood AS ENUM ('ok');
           CREATE TYPE pair AS (a int, b text);
           CREATE TABLE t_types (id int PRIMARY KEY, "q""t" text, v varchar(10), c char(3), n numeric,
               f4 real, f8 float8, i2 int2, i8 int8, b bool, ts timestamp, tz timestamptz, d date,
               tm time, iv interval, u uuid, by bytea, j json, jb jsonb, arr int[], tarr text[],
               m mood, p pair, nul text, inf float8, nan numeric);
           INSERT INTO t_types VALUES (1, E'a"b\\\n\t\u0001', 'v', 'c', 1.50, 1.5, -2.25e100, -3,
               9223372036854775807, false, '2026-01-02 03:04:05.5', '2026-01-02 03:04:05+02',
               '2026-01-02', '03:04:05', '1 day', '2b40a5ac-bc5a-4d9f-b367-87c4727b5cdc', '\x00ff',
               '{"k": [1, "x"]}', '{"k": {"z": null}}', '{1,NULL,3}', '{"a b",NULL}', 'ok', ROW(1, 'x'),
               NULL, 'Infinity', 'NaN');
           SELECT sync_track('t_types');"#,
    )
    .unwrap();
    assert_eq!(
        one::<bool>(
            "SELECT tributary.row_json(t)::jsonb = to_jsonb(t) - '{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[] FROM t_types t"
        ),
        Some(true)
    );
    assert_eq!(
        one::<String>("SELECT tributary.row_json(t)::text FROM t_types t").map(|s| s.starts_with(r#"{"id": 1, "q\"t": "a\"b\\\n\t\u0001""#)),
        Some(true),
        "columns in table order, strings escaped"
    );
}

#[pg_test]
fn changed_columns_lists_the_columns_changed_in_the_window() {
    // One entry: attnum 3 changed at revision 2 by xid 100, locally; the
    // row was created by xid 50. (In a pg_test every write shares one xid,
    // so the entry is spelled out: 19 bytes, little-endian.)
    let meta = "decode('0300' || '0200000000000000' || '6400000000000000' || '00', 'hex')";
    let names = "'{1,2,3}'::int2[], '{id,a,b}'::text[]";
    let cc = |since: i64| {
        one::<Vec<String>>(&format!("SELECT tributary.changed_columns({meta}, 50, {since}, {names})")).unwrap()
    };
    assert_eq!(cc(60), vec!["b"]);
    assert_eq!(cc(100), vec!["b"], "the window start is included");
    assert!(cc(101).is_empty());
    assert_eq!(cc(50), vec!["id", "a", "b"], "from creation on, every column changed");
    assert_eq!(
        one::<Vec<String>>(&format!("SELECT tributary.changed_columns(NULL, 50, 50, {names})")).unwrap(),
        vec!["id", "a", "b"],
        "a row never updated changed every column at creation"
    );
}
