//! The SQL API's behaviour: row versions, net changes, origins, paging,
//! key changes, bad input with SQLSTATE/DETAIL/HINT, hostile identifiers
//! and privileges.

use tributary_e2e::*;

/// One change row: tbl, op, pk, data, row_version, origin, changed_columns.
type Change = (
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<String>,
    Option<Vec<String>>,
);

fn changes(c: &mut Client, sql: &str) -> Vec<Change> {
    c.query(
        &format!(
            "SELECT tbl::text, op, pk::text, data::text, row_version, origin, changed_columns FROM ({sql}) s"
        ),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
    .collect()
}

fn version(c: &mut Client) -> i64 {
    c.query_one("SELECT sync_current_version()", &[])
        .unwrap()
        .get(0)
}

#[test]
fn sync_version_counts_revisions_and_works_as_an_etag() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT sync_track('t'); INSERT INTO t VALUES (1, 'a')")
        .unwrap();
    let v = scalar(&mut c, "SELECT sync_version FROM t");
    assert_eq!(v, 1);
    for i in 2..=4 {
        c.batch_execute("UPDATE t SET v = v || 'x'").unwrap();
        let v = scalar(&mut c, "SELECT sync_version FROM t");
        assert_eq!(v, i);
    }
    // ETag: the update with a stale revision changes nothing.
    assert_eq!(
        c.execute(
            "UPDATE t SET v = 'stale' WHERE id = 1 AND sync_version = 3",
            &[]
        )
        .unwrap(),
        0
    );
    assert_eq!(
        c.execute(
            "UPDATE t SET v = 'fresh' WHERE id = 1 AND sync_version = 4",
            &[]
        )
        .unwrap(),
        1
    );
    // The tracking columns cannot be forged.
    c.batch_execute("UPDATE t SET sync_version = 100, sync_xid = 1, sync_origin = 'forged'")
        .unwrap();
    let r = c
        .query_one("SELECT sync_version, sync_origin FROM t", &[])
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 6);
    assert_eq!(r.get::<_, Option<String>>(1), None);
}

#[test]
fn net_changes_collapse_within_a_window() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, a text, b text); SELECT sync_track('t');
                     INSERT INTO t VALUES (1, 'a', 'b'), (2, 'a', 'b');",
    )
    .unwrap();
    let since = version(&mut c);
    c.batch_execute(
        "INSERT INTO t VALUES (3, 'x', 'y'); UPDATE t SET a = 'z' WHERE id = 3;   -- insert+update: one I
         INSERT INTO t VALUES (4, 'x', 'y'); DELETE FROM t WHERE id = 4;           -- insert+delete: D to ignore
         UPDATE t SET b = 'B' WHERE id = 1; UPDATE t SET b = 'BB' WHERE id = 1;    -- two updates: one U
         DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (2, 'again', 'b');       -- delete+reinsert: live row",
    )
    .unwrap();
    let got = changes(
        &mut c,
        &format!("SELECT * FROM sync_changes_since({since}) ORDER BY pk"),
    );
    let summary: Vec<(&str, &str)> = got.iter().map(|r| (r.1.as_str(), r.2.as_str())).collect();
    assert_eq!(
        summary,
        vec![
            ("U", r#"{"id": 1}"#),
            ("I", r#"{"id": 2}"#),
            ("I", r#"{"id": 3}"#),
            ("D", r#"{"id": 4}"#)
        ]
    );
    let u = &got[0];
    assert_eq!(u.4, 3, "row_version after two updates");
    assert_eq!(
        u.6.as_deref(),
        Some(&["b".to_string()][..]),
        "only b changed"
    );
    assert!(u.3.as_deref().unwrap().contains(r#""b": "BB""#));
    assert!(
        !u.3.as_deref().unwrap().contains("sync_"),
        "tracking columns stay out of data"
    );
    assert!(got[2].3.as_deref().unwrap().contains(r#""a": "z""#));
    assert_eq!(got[3].3, None);
}

#[test]
fn a_key_change_is_a_delete_of_the_old_key_and_an_insert_of_the_new() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT sync_track('t'); INSERT INTO t VALUES (1, 'a')")
        .unwrap();
    let since = version(&mut c);
    c.batch_execute("UPDATE t SET id = 2 WHERE id = 1").unwrap();
    let got = changes(
        &mut c,
        &format!("SELECT * FROM sync_changes_since({since}) ORDER BY pk"),
    );
    let summary: Vec<(&str, &str)> = got.iter().map(|r| (r.1.as_str(), r.2.as_str())).collect();
    assert_eq!(summary, vec![("D", r#"{"id": 1}"#), ("I", r#"{"id": 2}"#)]);
}

#[test]
fn origin_tags_changes_and_skip_origin_filters_them() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT sync_track('t');")
        .unwrap();
    let since = version(&mut c);
    c.batch_execute(
        "SET tributary.origin = 'crm'; INSERT INTO t VALUES (1, 'from crm'); DELETE FROM t WHERE id = 1;
         INSERT INTO t VALUES (2, 'crm row');
         RESET tributary.origin; INSERT INTO t VALUES (3, 'local');",
    )
    .unwrap();
    let all = changes(
        &mut c,
        &format!("SELECT * FROM sync_changes_since({since}) ORDER BY pk"),
    );
    let origins: Vec<(&str, Option<&str>)> =
        all.iter().map(|r| (r.1.as_str(), r.5.as_deref())).collect();
    assert_eq!(
        origins,
        vec![("D", Some("crm")), ("I", Some("crm")), ("I", None)]
    );
    let skipped = changes(
        &mut c,
        &format!("SELECT * FROM sync_changes_since({since}, skip_origin => 'crm')"),
    );
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].2, r#"{"id": 3}"#);
}

#[test]
fn keyset_paging_reads_a_window_exactly_across_tables() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (k text, n int, PRIMARY KEY (k, n));
         SELECT sync_track('a'); SELECT sync_track('b');
         INSERT INTO a SELECT g, 'x' FROM generate_series(1, 37) g;
         INSERT INTO b SELECT 'k' || (g % 3), g FROM generate_series(1, 23) g;",
    )
    .unwrap();
    let since = 1i64;
    let until = version(&mut c);
    c.batch_execute("DELETE FROM a WHERE id IN (5, 6); UPDATE b SET n = n WHERE n = 1")
        .unwrap();
    let since2 = until;
    c.batch_execute("DELETE FROM a WHERE id = 7; INSERT INTO a VALUES (100, 'new')")
        .unwrap();
    let until2 = version(&mut c);
    for (s, u) in [(since, until), (since2, until2), (since, until2)] {
        let whole = changes(
            &mut c,
            &format!("SELECT * FROM sync_changes_since({s}, {u}) ORDER BY tbl::oid, pk"),
        );
        assert!(!whole.is_empty());
        for page in [1, 4, 10, 1000] {
            let mut got = vec![];
            let mut after: Option<(String, String)> = None;
            loop {
                let cont = match &after {
                    None => String::new(),
                    Some((t, p)) => format!(", after_tbl => '{t}', after_pk => '{p}'"),
                };
                let rows = changes(
                    &mut c,
                    &format!(
                        "SELECT * FROM sync_changes_since({s}, {u}, page_size => {page}{cont})"
                    ),
                );
                assert!(rows.len() <= page);
                let done = rows.len() < page;
                if let Some(last) = rows.last() {
                    after = Some((last.0.clone(), last.2.clone()));
                }
                got.extend(rows);
                if done {
                    break;
                }
            }
            assert_eq!(got, whole, "paging by {page} over [{s}, {u})");
        }
    }
}

#[test]
fn bad_input_gets_a_specific_sqlstate_detail_and_hint() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT sync_track('t');
         CREATE TABLE untracked (id int PRIMARY KEY); CREATE TABLE nopk (v text);
         CREATE TABLE clash (id int PRIMARY KEY, sync_version text);
         CREATE VIEW vw AS SELECT 1 AS id;",
    )
    .unwrap();
    let cur = version(&mut c);
    expect_error(&mut c, "SELECT sync_track('nopk')", "TB004");
    expect_error(&mut c, "SELECT sync_track(NULL)", "22004");
    expect_error(&mut c, "SELECT sync_track('vw')", "42809");
    let e = expect_error(&mut c, "SELECT sync_track('clash')", "42701");
    assert!(e.message.contains("sync_version"));
    expect_error(
        &mut c,
        "SELECT * FROM sync_changes_since(0, tables => ARRAY['untracked'::regclass])",
        "TB003",
    );
    expect_error(
        &mut c,
        "SELECT sync_min_valid_version('untracked')",
        "TB003",
    );
    expect_error(&mut c, "SELECT sync_payload('untracked', 0)", "TB003");
    expect_error(&mut c, "SELECT sync_untrack('untracked')", "TB003");
    expect_error(&mut c, "SELECT * FROM sync_changes_since(NULL)", "22004");
    expect_error(&mut c, "SELECT sync_payload('t', NULL)", "22004");
    expect_error(&mut c, "SELECT * FROM sync_changes_since(-1)", "22023");
    expect_error(&mut c, "SELECT sync_payload('t', -5)", "22023");
    let e = expect_error(
        &mut c,
        &format!("SELECT * FROM sync_changes_since({})", cur + 1000),
        "TB001",
    );
    assert!(
        e.detail.unwrap().contains(&(cur + 1000).to_string()),
        "DETAIL names the offending version"
    );
    expect_error(
        &mut c,
        &format!("SELECT * FROM sync_changes_since(1, {})", cur + 1000),
        "TB001",
    );
    expect_error(
        &mut c,
        &format!("SELECT sync_payload('t', {})", cur + 1000),
        "TB001",
    );
    expect_error(&mut c, "SELECT * FROM sync_changes_since(5, 3)", "TB005");
    expect_error(
        &mut c,
        "SELECT * FROM sync_changes_since(1, page_size => 0)",
        "22023",
    );
    expect_error(
        &mut c,
        "SELECT * FROM sync_changes_since(1, page_size => 5, after_tbl => 't')",
        "22023",
    );
    expect_error(
        &mut c,
        "SET tributary.retention = 'forever'; SELECT sync_cleanup()",
        "22023",
    );
    // Nothing was half-done by the failed calls.
    let n = scalar(&mut c, "SELECT count(*) FROM sync_tracked_tables()");
    assert_eq!(n, 1);
    let cols = scalar(&mut c, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'nopk'::regclass AND attname LIKE 'sync_%'");
    assert_eq!(cols, 0, "a refused sync_track leaves the table untouched");
}

#[test]
fn hostile_identifiers_work_end_to_end() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE SCHEMA "we""ird";
           CREATE TABLE "we""ird"."tab'le" ("]" int PRIMARY KEY, "col""q" text, "a b" text);
           SELECT sync_track('"we""ird"."tab''le"');
           SELECT sync_track('"we""ird"."tab''le"');
           INSERT INTO "we""ird"."tab'le" VALUES (1, 'x', 'y'), (2, 'p', 'q');"#,
    )
    .unwrap();
    let since = version(&mut c);
    c.batch_execute(
        r#"UPDATE "we""ird"."tab'le" SET "col""q" = 'changed' WHERE "]" = 1;
           DELETE FROM "we""ird"."tab'le" WHERE "]" = 2;"#,
    )
    .unwrap();
    let got = changes(
        &mut c,
        &format!("SELECT * FROM sync_changes_since({since}) ORDER BY pk"),
    );
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, r#""we""ird"."tab'le""#);
    assert_eq!((got[0].1.as_str(), got[0].2.as_str()), ("U", r#"{"]": 1}"#));
    assert_eq!(got[0].6.as_deref(), Some(&["col\"q".to_string()][..]));
    assert_eq!((got[1].1.as_str(), got[1].2.as_str()), ("D", r#"{"]": 2}"#));
    let p: String = c
        .query_one(
            r#"SELECT sync_payload('"we""ird"."tab''le"', 0)::text"#,
            &[],
        )
        .unwrap()
        .get(0);
    let p: serde_json::Value = serde_json::from_str(&p).unwrap();
    assert_eq!(p["Data"][0]["]"], 1);
    assert_eq!(p["Data"][0]["col\"q"], "changed");
    // The publication the worker reads holds the table.
    let n = scalar(
        &mut c,
        r#"SELECT count(*) FROM pg_publication_tables WHERE pubname = 'tributary' AND schemaname = 'we"ird' AND tablename = 'tab''le'"#,
    );
    assert_eq!(n, 1);
    c.batch_execute(r#"SELECT sync_untrack('"we""ird"."tab''le"')"#)
        .unwrap();
    let n = scalar(
        &mut c,
        r#"SELECT count(*) FROM pg_publication_tables WHERE pubname = 'tributary'"#,
    );
    assert_eq!(n, 0);
}

#[test]
fn readers_need_select_on_the_table_and_admin_functions_are_not_public() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE open_t (id int PRIMARY KEY); CREATE TABLE secret (id int PRIMARY KEY, s text);
         SELECT sync_track('open_t'); SELECT sync_track('secret');
         INSERT INTO open_t VALUES (1); INSERT INTO secret VALUES (1, 'x'), (2, 'y');
         DELETE FROM secret WHERE id = 2;
         CREATE ROLE app LOGIN; GRANT SELECT ON open_t TO app;",
    )
    .unwrap();
    let since = 1i64;
    let mut app = db.connect_as("app");
    let rows = app
        .query(
            "SELECT pk::text FROM sync_changes_since($1, tables => ARRAY['open_t'::regclass])",
            &[&since],
        )
        .unwrap();
    assert_eq!(rows.len(), 1);
    let e = db_error(
        app.query("SELECT * FROM sync_changes_since($1)", &[&since])
            .unwrap_err(),
    );
    assert_eq!(e.code, "42501", "reading an unreadable table is refused");
    let n = scalar(&mut app, "SELECT count(*) FROM tributary.tombstones");
    assert_eq!(n, 0, "tombstones of unreadable tables are hidden");
    for f in [
        "SELECT sync_track('open_t')",
        "SELECT sync_untrack('open_t')",
        "SELECT sync_cleanup()",
    ] {
        let e = db_error(app.batch_execute(f).unwrap_err());
        assert_eq!(e.code, "42501", "{f} must not be executable by PUBLIC");
    }
    let e = db_error(
        app.batch_execute("INSERT INTO tributary.tombstones VALUES (1, '{}', 1, 1)")
            .unwrap_err(),
    );
    assert_eq!(e.code, "42501");
    // SECURITY DEFINER functions pin their search_path.
    let n = scalar(
        &mut c,
        "SELECT count(*) FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
              JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'tributary'
             WHERE p.prosecdef AND NOT coalesce(p.proconfig::text LIKE '%search_path%', false)",
    );
    assert_eq!(n, 0, "every SECURITY DEFINER function sets search_path");
}

#[test]
fn untracked_tables_and_dropped_tables_leave_no_state() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); SELECT sync_track('t'); INSERT INTO t VALUES (1); DELETE FROM t;
         DROP TABLE t;",
    )
    .unwrap();
    let n = scalar(&mut c, "SELECT (SELECT count(*) FROM tributary.tracked) + (SELECT count(*) FROM tributary.tombstones)");
    assert_eq!(n, 0);
    let rows = c.query("SELECT * FROM sync_changes_since(1)", &[]).unwrap();
    assert!(rows.is_empty());
}
