//! The edge client (`tributary-edge`) against a real cluster, a real
//! gateway and real files: `init` makes the file a worker-attached peer
//! would have, `status` reads it, and each failure has its exit code.

use serde_json::{json, Value};
use std::path::Path;
use tributary_e2e::edge::*;
use tributary_e2e::gateway::*;
use tributary_e2e::peer::*;
use tributary_e2e::worker::*;
use tributary_e2e::*;

/// A hub with typed and hostile tables, its gateway role, and the peer
/// `dev1` (role `device`) that may read all of them.
fn hub(cluster: &Cluster) -> Db<'_> {
    let db = cluster.db();
    db.connect()
        .batch_execute(
            r#"CREATE TABLE items (id int PRIMARY KEY, v text, n numeric, at timestamptz, tags int[], doc jsonb,
                                   ok boolean, raw bytea, f float8, twice int GENERATED ALWAYS AS (id * 2) STORED);
               CREATE TABLE "tab'le" ("]" int PRIMARY KEY, """" text);
               CREATE SCHEMA sales; CREATE TABLE sales.orders (id int PRIMARY KEY, item int);
               CREATE TABLE marker (id serial PRIMARY KEY);
               SELECT sync_track('items'), sync_track('"tab''le"'), sync_track('sales.orders'), sync_track('marker');"#,
        )
        .unwrap();
    setup_gateway_role(&db);
    add_peer(
        &db,
        "dev1",
        "device",
        &["items", r#""tab'le""#, "sales.orders", "marker"],
    );
    db.connect()
        .batch_execute("GRANT USAGE ON SCHEMA sales TO device")
        .unwrap();
    db
}

/// A temporary directory with `edge.db` in it, made a peer of the gateway
/// `g` by `tributary-edge init` with `tok`.
fn init_device(g: &GatewayProc, tok: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("edge.db");
    let r = edge(
        &["init", "--hub", &g.base, "--db", e.to_str().unwrap()],
        Some(tok),
    );
    assert_eq!(r.code, 0, "{r:?}");
    (dir, e)
}

/// The file's tables, indexes and triggers, as SQLite keeps their DDL.
fn layout(path: &Path) -> Vec<(String, String, Option<String>)> {
    let c = lite(path);
    let mut st = c
        .prepare(
            "SELECT type, name, sql FROM sqlite_master
              WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
        )
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn status(path: &Path) -> Value {
    let r = edge(&["status", "--db", path.to_str().unwrap(), "--json"], None);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn init_makes_the_file_a_worker_attached_peer_has_and_status_reads_it() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let g = GatewayProc::start(&cluster, &db, "");
    let tok = token("dev1", json!({}), 300);
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("edge.db");
    let es = e.to_str().unwrap();
    let r = edge(&["init", "--hub", &g.base, "--db", es], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("4 tables"), "{}", r.stdout);

    // A worker-attached peer of the same tables: the same layout, table
    // for table, trigger for trigger (generated columns included).
    let w = dir.path().join("attached.db");
    setup_worker_role(&db, &[]);
    let mut wp = WorkerProc::start(
        &tributary_e2e::worker::config(&cluster, &db, "w", &sqlite_dest("w1", &w)),
        &[],
    );
    caught_up(&mut wp, &mut db.connect(), &w);
    wp.sigterm(std::time::Duration::from_secs(30));
    assert_eq!(layout(&e), layout(&w));
    assert!(layout(&e)
        .iter()
        .any(|(t, n, _)| t == "trigger" && n == "_tributary_i_tab'le"));

    // status: nothing pulled or unsent yet; an app's edit is unsent.
    let s = status(&e);
    assert_eq!(s["hub"], g.base.as_str());
    assert_eq!(s["errors"], 0);
    let tables: Vec<(&str, &str)> = s["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap(),
                t["hub_table"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tables,
        [
            ("items", "\"public\".\"items\""),
            ("marker", "\"public\".\"marker\""),
            ("sales.orders", "\"sales\".\"orders\""),
            ("tab'le", "\"public\".\"tab'le\"")
        ]
    );
    assert!(s["tables"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["unsent"] == 0 && t["version"].is_null() && t["synced_at"].is_null()));
    lite(&e)
        .execute(r#"INSERT INTO "tab'le" ("]", """") VALUES (1, 'x')"#, [])
        .unwrap();
    let s = status(&e);
    assert_eq!(s["tables"][3]["unsent"], 1, "{s:#}");

    // init again: the same file, nothing lost; the hub's new column added.
    db.connect()
        .batch_execute(r#"ALTER TABLE "tab'le" ADD COLUMN added int"#)
        .unwrap();
    let r = edge(&["init", "--hub", &g.base, "--db", es], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    let cols: Vec<String> = rows(&e, r#"SELECT name FROM pragma_table_info('tab''le')"#)
        .into_iter()
        .map(|r| match &r[0] {
            rusqlite::types::Value::Text(s) => s.clone(),
            v => panic!("{v:?}"),
        })
        .collect();
    assert_eq!(cols, ["]", "\"", "added"]);
    assert_eq!(status(&e)["tables"][3]["unsent"], 1);
    // The human form says the same.
    let r = edge(&["status", "--db", es], None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("tab'le") && r.stdout.contains("never"),
        "{}",
        r.stdout
    );
}

#[test]
fn each_failure_has_its_words_and_exit_code() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let g = GatewayProc::start(&cluster, &db, "");
    let dir = tempfile::tempdir().unwrap();
    let e = dir.path().join("edge.db");
    let es = e.to_str().unwrap();
    let init =
        |hub: &str, path: &str, tok: Option<&str>| edge(&["init", "--hub", hub, "--db", path], tok);
    let ok = token("dev1", json!({}), 300);

    // 2: usage. No token; a hub that is not a URL.
    let r = init(&g.base, es, None);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("TRIBUTARY_EDGE_TOKEN"), "{}", r.stderr);
    assert_eq!(init("gw:1", es, Some(&ok)).code, 2);

    // 3: the hub unreachable (nothing listens there), with a hint that the
    // file keeps working.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let r = init(&closed, es, Some(&ok));
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("unreachable") && r.stderr.contains("HINT"),
        "{}",
        r.stderr
    );

    // 4: an expired token, one signed with another key, an unknown peer.
    let expired = token("dev1", json!({}), -120);
    let r = init(&g.base, es, Some(&expired));
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("HTTP 401") && r.stderr.contains("new token"),
        "{}",
        r.stderr
    );
    let forged = token_with(
        json!({"sub": "dev1", "exp": 4_000_000_000u64}),
        json!({}),
        "another-secret-another-secret-another",
    );
    assert_eq!(init(&g.base, es, Some(&forged)).code, 4);
    assert_eq!(
        init(&g.base, es, Some(&token("nobody", json!({}), 300))).code,
        4
    );
    assert!(!e.exists(), "no file is made before the hub answered");

    // 5: not a Tributary peer: a text file, an app's own SQLite file that
    // was never initialized, a file that is not there.
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a database, it is a note ".repeat(100)).unwrap();
    let r = init(&g.base, text.to_str().unwrap(), Some(&ok));
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("not a SQLite database"), "{}", r.stderr);
    let app = dir.path().join("app.db");
    lite(&app)
        .execute_batch("CREATE TABLE mine (a int)")
        .unwrap();
    for p in [&app, &dir.path().join("missing.db"), &text] {
        let r = edge(&["status", "--db", p.to_str().unwrap()], None);
        assert_eq!(r.code, 5, "{p:?}: {r:?}");
        assert!(
            r.stderr.contains("not a Tributary peer file"),
            "{}",
            r.stderr
        );
    }
    assert!(!dir.path().join("missing.db").exists());

    // A file made for one gateway is not taken over by another (2).
    assert_eq!(init(&g.base, es, Some(&ok)).code, 0);
    let r = init("http://127.0.0.1:1", es, Some(&ok));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains(&g.base), "{}", r.stderr);
}

/// Every row of `table` in a file, as SQLite holds it, by key.
fn file_rows(path: &Path, table: &str) -> Vec<Vec<rusqlite::types::Value>> {
    rows(
        path,
        &format!(
            "SELECT * FROM {} ORDER BY 1",
            tributary_core::quote::ident(table)
        ),
    )
}

#[test]
fn sync_brings_the_hubs_rows_as_the_worker_stores_them_and_sends_the_apps_edits_once() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    c.batch_execute(
        r#"INSERT INTO items (id, v, n, at, tags, doc, ok, raw, f) VALUES
             (1, 'plain', 12.50, '2024-01-02 03:04:05.25+00', '{1,NULL,3}', '{"a": [1, 2], "b": null}', true, '\x00ff', 1.5),
             (2, 'tab''le " ] é😀', 'NaN', '2024-06-30 23:59:59+02', '{}', '"just a string"', false, NULL, '-Infinity'),
             (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
           INSERT INTO "tab'le" VALUES (1, 'one'), (2, 'two');
           INSERT INTO sales.orders SELECT g, g % 7 FROM generate_series(1, 2500) g;"#,
    )
    .unwrap();
    let g = GatewayProc::start(&cluster, &db, "");
    let tok = token("dev1", json!({}), 300);
    let (dir, e) = init_device(&g, &tok);
    let es = e.to_str().unwrap();
    let r = edge(&["sync", "--db", es], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("pulled sales.orders: 2500 changes"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("of a full download"), "{}", r.stderr);

    // A worker-attached peer of the same hub holds the same values, row
    // for row, type for type.
    let w = dir.path().join("attached.db");
    setup_worker_role(&db, &[]);
    let mut wp = WorkerProc::start(
        &tributary_e2e::worker::config(&cluster, &db, "w", &sqlite_dest("w1", &w)),
        &[],
    );
    caught_up(&mut wp, &mut c, &w);
    for t in ["items", "tab'le", "sales.orders"] {
        assert_eq!(file_rows(&e, t), file_rows(&w, t), "{t}");
    }
    assert_eq!(file_rows(&e, "sales.orders").len(), 2500);
    // (The worker's initial copy once stored every true as 0: it reads
    // bool::text, which prints true, not t.)
    assert_eq!(
        rows(&w, "SELECT ok FROM items WHERE id = 1"),
        [[rusqlite::types::Value::Integer(1)]]
    );
    let revisions = |p: &Path| {
        rows(
            p,
            "SELECT tbl, pk, version FROM _tributary_versions WHERE tbl <> 'marker' ORDER BY 1, 2",
        )
    };
    assert_eq!(revisions(&e), revisions(&w));

    // The app's edits reach the hub, tagged with the peer, once.
    lite(&e)
        .execute_batch(
            r#"UPDATE items SET v = 'edited at the edge' WHERE id = 1;
               DELETE FROM "tab'le" WHERE "]" = 2;
               INSERT INTO "tab'le" ("]", """") VALUES (3, 'new at the edge');"#,
        )
        .unwrap();
    let r = edge(&["push", "--db", es], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("pushed 3 edits; 0 to look at"),
        "{}",
        r.stdout
    );
    assert_eq!(outbox_len(&e), 0);
    let hub_rows = |c: &mut Client| -> Vec<(i32, String, Option<String>)> {
        c.query(
            r#"SELECT "]", """", sync_origin FROM "tab'le" ORDER BY 1"#,
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    assert_eq!(
        hub_rows(&mut c),
        [
            (1, "one".to_string(), None),
            (3, "new at the edge".to_string(), Some("dev1".to_string()))
        ]
    );
    let v1: String = c
        .query_one("SELECT v FROM items WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(v1, "edited at the edge");
    // Pushing again sends nothing; the hub's own change comes with a pull,
    // and the peer's own edits come back once with the hub's revision.
    let r = edge(&["push", "--db", es], Some(&tok));
    assert!(r.stdout.contains("pushed 0 edits"), "{r:?}");
    c.batch_execute("UPDATE sales.orders SET item = 99 WHERE id = 2500")
        .unwrap();
    let r = edge(&["pull", "--db", es, "--table", "sales.orders"], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("pulled sales.orders: 1 changes"),
        "{}",
        r.stdout
    );
    let r = edge(&["sync", "--db", es], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    caught_up(&mut wp, &mut c, &w);
    for t in ["items", "tab'le", "sales.orders"] {
        assert_eq!(file_rows(&e, t), file_rows(&w, t), "{t}");
    }
    assert_eq!(outbox_len(&e), 0, "what came back made no new edits");
    let s = status(&e);
    assert!(s["tables"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["version"].is_i64() && t["synced_at"].is_string() && t["unsent"] == 0));
    let r = edge(&["pull", "--db", es, "--table", "nope"], Some(&tok));
    assert_eq!(r.code, 2, "{r:?}");
}

#[test]
fn an_edge_file_holds_only_its_tenants_rows_and_a_refused_edit_is_set_aside() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, tenant text NOT NULL, amount int CHECK (amount >= 0));
         CREATE INDEX ON orders (tenant);
         SELECT sync_track('orders');
         SELECT sync_set_filter('orders', $$tenant = sync_claim('tenant')$$);
         GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO device;
         INSERT INTO orders VALUES (1, 'a', 10), (2, 'b', 20), (3, 'a', 30);",
    )
    .unwrap();
    let g = GatewayProc::start(&cluster, &db, "");
    let tok = token("dev1", json!({"tenant": "a"}), 300);
    let (_dir, e) = init_device(&g, &tok);
    let es = e.to_str().unwrap();
    let ids = || -> Vec<i64> {
        rows(&e, "SELECT id FROM orders ORDER BY id")
            .into_iter()
            .map(|r| match r[0] {
                rusqlite::types::Value::Integer(i) => i,
                ref v => panic!("{v:?}"),
            })
            .collect()
    };
    let sync = || {
        let r = edge(&["sync", "--db", es], Some(&tok));
        assert_eq!(r.code, 0, "{r:?}");
        r
    };
    sync();
    assert_eq!(ids(), [1, 3]);
    // A move out of the filter removes the row from the file; a move in
    // brings it whole.
    c.batch_execute(
        "UPDATE orders SET tenant = 'b' WHERE id = 3; UPDATE orders SET tenant = 'a' WHERE id = 2",
    )
    .unwrap();
    sync();
    assert_eq!(ids(), [1, 2]);
    // An edit the hub refuses (a CHECK) is set aside with its SQLSTATE and
    // the hub's row written back; the good edit of the same push lands.
    lite(&e)
        .execute_batch("UPDATE orders SET amount = -5 WHERE id = 1; UPDATE orders SET amount = 21 WHERE id = 2;")
        .unwrap();
    let r = sync();
    assert!(
        r.stdout.contains("pushed 2 edits; 1 to look at"),
        "{}",
        r.stdout
    );
    let amount = |c: &mut Client, id: i32| -> i32 {
        c.query_one("SELECT amount FROM orders WHERE id = $1", &[&id])
            .unwrap()
            .get(0)
    };
    assert_eq!((amount(&mut c, 1), amount(&mut c, 2)), (10, 21));
    let errs = rows(&e, "SELECT tbl, outcome, detail FROM _tributary_errors");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0][1], rusqlite::types::Value::Text("REJECTED".into()));
    match &errs[0][2] {
        rusqlite::types::Value::Text(d) => assert!(d.contains("23514"), "{d}"),
        v => panic!("{v:?}"),
    }
    assert_eq!(
        rows(&e, "SELECT amount FROM orders WHERE id = 1"),
        [[rusqlite::types::Value::Integer(10)]],
        "the hub's row is written back"
    );
    assert_eq!(status(&e)["errors"], 1);
}

#[test]
fn a_crash_mid_pull_resumes_from_its_last_page_and_a_repeated_push_has_no_second_effect() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    c.batch_execute("INSERT INTO sales.orders SELECT g, g % 7 FROM generate_series(1, 2500) g")
        .unwrap();
    let g = GatewayProc::start(&cluster, &db, "");
    let tok = token("dev1", json!({}), 300);
    let (_dir, e) = init_device(&g, &tok);
    let es = e.to_str().unwrap();
    let pull = [
        "pull",
        "--db",
        es,
        "--table",
        "sales.orders",
        "--page-size",
        "1000",
    ];
    // Killed (abort, as kill -9) after its first page committed.
    let r = edge_with(
        &pull,
        Some(&tok),
        &[("TRIBUTARY_FAILPOINT", "edge.pull.after_page:1")],
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("failpoint"), "{}", r.stderr);
    let state = rows(
        &e,
        "SELECT version IS NULL, next IS NOT NULL, rows_done FROM _tributary_pulls WHERE tbl = 'sales.orders'",
    );
    use rusqlite::types::Value::Integer as I;
    assert_eq!(
        state,
        [[I(1), I(1), I(1000)]],
        "one page in, the window not done"
    );
    assert_eq!(file_rows(&e, "sales.orders").len(), 1000);
    // Another change meanwhile: the resumed window does not hold it, the
    // next pull does.
    c.batch_execute("UPDATE sales.orders SET item = 100 WHERE id = 1")
        .unwrap();
    let r = edge(&pull, Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("2500 rows of a full download"),
        "{}",
        r.stderr
    );
    assert_eq!(file_rows(&e, "sales.orders").len(), 2500);
    assert_eq!(edge(&pull, Some(&tok)).code, 0);
    let hub_orders: Vec<(i64, i64)> = c
        .query(
            "SELECT id::int8, item::int8 FROM sales.orders ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let file_orders: Vec<(i64, i64)> = file_rows(&e, "sales.orders")
        .into_iter()
        .map(|r| match (&r[0], &r[1]) {
            (I(a), I(b)) => (*a, *b),
            v => panic!("{v:?}"),
        })
        .collect();
    assert_eq!(file_orders, hub_orders);

    // A push killed after the hub applied it, before the file recorded
    // that: sent again, it changes nothing more at the hub.
    lite(&e)
        .execute("UPDATE \"sales.orders\" SET item = 42 WHERE id = 7", [])
        .unwrap();
    let r = edge_with(
        &["push", "--db", es],
        Some(&tok),
        &[("TRIBUTARY_FAILPOINT", "edge.push.after_hub:1")],
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert_eq!(outbox_len(&e), 1, "the file did not record the push");
    let revision = |c: &mut Client| -> (i32, i64) {
        let r = c
            .query_one(
                "SELECT item, sync_version FROM sales.orders WHERE id = 7",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let applied = revision(&mut c);
    assert_eq!(applied.0, 42);
    let r = edge(&["push", "--db", es], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(outbox_len(&e), 0);
    assert_eq!(revision(&mut c), applied, "no second effect");
    assert_eq!(status(&e)["errors"], 0);

    // An edit made while a push is in flight (the hub has applied the
    // push, the file has not recorded it yet) is not lost: it stays in
    // the outbox and goes with the next push.
    lite(&e)
        .execute("UPDATE \"sales.orders\" SET item = 43 WHERE id = 7", [])
        .unwrap();
    std::thread::scope(|s| {
        let push = s.spawn(|| {
            edge_with(
                &["push", "--db", es],
                Some(&tok),
                &[("TRIBUTARY_FAILPOINT", "edge.push.after_hub:1:sleep=3000")],
            )
        });
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while revision(&mut c).0 != 43 {
            assert!(
                std::time::Instant::now() < end,
                "the push never reached the hub"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        lite(&e)
            .execute("UPDATE \"sales.orders\" SET item = 44 WHERE id = 7", [])
            .unwrap();
        let r = push.join().unwrap();
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stderr.contains("pausing"), "{}", r.stderr);
    });
    assert_eq!(revision(&mut c).0, 43);
    assert_eq!(outbox_len(&e), 1, "the edit made meanwhile waits");
    let r = edge(&["sync", "--db", es], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(outbox_len(&e), 0);
    assert_eq!(revision(&mut c).0, 44);
    assert_eq!(
        rows(&e, "SELECT item FROM \"sales.orders\" WHERE id = 7"),
        [[I(44)]]
    );
    assert_eq!(
        status(&e)["errors"],
        0,
        "{:?}",
        rows(&e, "SELECT * FROM _tributary_errors")
    );
}

#[test]
fn purge_refuses_unsent_edits_unless_forced_and_the_next_pull_is_full() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    c.batch_execute(r#"INSERT INTO "tab'le" VALUES (1, 'one'), (2, 'two')"#)
        .unwrap();
    let g = GatewayProc::start(&cluster, &db, "");
    let tok = token("dev1", json!({}), 300);
    let (_dir, e) = init_device(&g, &tok);
    let es = e.to_str().unwrap();
    assert_eq!(edge(&["sync", "--db", es], Some(&tok)).code, 0);
    assert_eq!(file_rows(&e, "tab'le").len(), 2);
    let purge = |args: &[&str]| {
        let mut a = vec!["purge", "--db", es, "--table", "tab'le"];
        a.extend_from_slice(args);
        edge(&a, None)
    };

    // An unsent edit: refused, nothing touched.
    lite(&e)
        .execute(r#"UPDATE "tab'le" SET """" = 'mine' WHERE "]" = 1"#, [])
        .unwrap();
    let r = purge(&[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("1 unsent edits") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(file_rows(&e, "tab'le").len(), 2);
    assert_eq!(outbox_len(&e), 1);

    // Forced: the edit is discarded and recorded; the table is empty and
    // its next pull is a full download, without the discarded edit.
    let r = purge(&["--force"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("purged tab'le: 2 rows"), "{}", r.stdout);
    assert_eq!(outbox_len(&e), 0);
    assert!(file_rows(&e, "tab'le").is_empty());
    let errs = rows(&e, "SELECT outcome, local_data FROM _tributary_errors");
    use rusqlite::types::Value::Text;
    assert_eq!(
        errs,
        [[Text("PURGED".into()), Text(r#"{"]":1,"\"":"mine"}"#.into())]]
    );
    let s = status(&e);
    let t = s["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "tab'le")
        .unwrap();
    assert!(t["version"].is_null(), "{t}");
    let r = edge(&["sync", "--db", es], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("pulled tab'le: 2 changes, now at version")
            && r.stdout.contains("(full)"),
        "{}",
        r.stdout
    );
    assert_eq!(
        file_rows(&e, "tab'le"),
        [
            [rusqlite::types::Value::Integer(1), Text("one".into())],
            [rusqlite::types::Value::Integer(2), Text("two".into())]
        ]
    );
    let one: String = c
        .query_one(r#"SELECT """" FROM "tab'le" WHERE "]" = 1"#, &[])
        .unwrap()
        .get(0);
    assert_eq!(one, "one", "the discarded edit never reached the hub");
    assert_eq!(purge(&["--table", "nope"]).code, 2);
}

/// A peer's open conflicts as `conflicts --json` lists them: (id, local, remote).
fn conflict_ids(path: &str, tok: &str) -> Vec<(i64, Value, Value)> {
    let r = edge(&["conflicts", "--db", path, "--json"], Some(tok));
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_i64().unwrap(),
                c["local"].clone(),
                c["remote"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_conflict_is_listed_and_resolved_from_the_cli_and_reaches_every_peer() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE "no'tes" (id int PRIMARY KEY, tenant text NOT NULL, "bo]dy" text);
           SELECT sync_track('"no''tes"');
           SELECT sync_set_filter('"no''tes"', $$tenant = sync_claim('tenant')$$);
           GRANT SELECT, INSERT, UPDATE, DELETE ON "no'tes" TO device;
           INSERT INTO "no'tes" VALUES (1, 'a', 'first'), (2, 'b', 'other tenant');"#,
    )
    .unwrap();
    // dev1 and dev2 (tenant a) and dev3 (tenant b) speak through one role,
    // at one priority: the ladder cannot decide between dev1 and dev2.
    for p in ["dev2", "dev3"] {
        add_peer(&db, p, "device", &[]);
    }
    setup_worker_role(&db, &[]);
    let g = GatewayProc::start(&cluster, &db, "");
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(String, String)> = [("dev1", "a"), ("dev2", "a"), ("dev3", "b")]
        .iter()
        .map(|(p, t)| {
            let f = dir
                .path()
                .join(format!("{p}.db"))
                .to_str()
                .unwrap()
                .to_string();
            let tok = token(p, json!({"tenant": t}), 300);
            assert_eq!(
                edge(&["init", "--hub", &g.base, "--db", &f], Some(&tok)).code,
                0
            );
            assert_eq!(edge(&["sync", "--db", &f], Some(&tok)).code, 0);
            (f, tok)
        })
        .collect();
    let (dev1, dev2, dev3) = (&files[0], &files[1], &files[2]);
    // A worker-attached peer of the same table.
    let w1 = dir.path().join("edge1.db");
    let mut w = WorkerProc::start(
        &tributary_e2e::worker::config(&cluster, &db, "w", &sqlite_dest("edge1", &w1)),
        &[],
    );
    let body = |f: &str| -> Vec<Vec<rusqlite::types::Value>> {
        rows(Path::new(f), r#"SELECT "bo]dy" FROM "no'tes" WHERE id = 1"#)
    };
    let text = |s: &str| vec![vec![rusqlite::types::Value::Text(s.into())]];

    // dev1 and dev2 edit the same column from the same revision: dev1's
    // arrives first, dev2's is a conflict the hub logs for dev2.
    lite(Path::new(&dev1.0))
        .execute(
            r#"UPDATE "no'tes" SET "bo]dy" = 'dev1 says' WHERE id = 1"#,
            [],
        )
        .unwrap();
    lite(Path::new(&dev2.0))
        .execute(
            r#"UPDATE "no'tes" SET "bo]dy" = 'dev2 says' WHERE id = 1"#,
            [],
        )
        .unwrap();
    assert_eq!(edge(&["sync", "--db", &dev1.0], Some(&dev1.1)).code, 0);
    let r = edge(&["sync", "--db", &dev2.0], Some(&dev2.1));
    assert!(r.stdout.contains("1 to look at"), "{r:?}");
    let manual = rows(
        Path::new(&dev2.0),
        "SELECT conflict_id FROM _tributary_errors WHERE outcome = 'MANUAL'",
    );
    assert_eq!(manual.len(), 1, "{manual:?}");

    // Listed for dev2 alone: its edit is local, the hub's row remote.
    let listed = conflict_ids(&dev2.0, &dev2.1);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let (id, local, remote) = listed[0].clone();
    assert_eq!(manual[0][0], rusqlite::types::Value::Integer(id));
    assert_eq!(local["bo]dy"], "dev2 says");
    assert_eq!(remote["bo]dy"], "dev1 says");
    let human = edge(&["conflicts", "--db", &dev2.0], Some(&dev2.1));
    assert!(
        human.stdout.contains(&format!("conflict {id} on no'tes")),
        "{human:?}"
    );
    assert!(
        conflict_ids(&dev1.0, &dev1.1).is_empty(),
        "not dev1's conflict"
    );
    assert!(
        conflict_ids(&dev3.0, &dev3.1).is_empty(),
        "not dev3's conflict"
    );
    // Another peer of the same role cannot settle it (404), nor can a bad
    // choice be sent.
    let r = edge(
        &["resolve", &id.to_string(), "--db", &dev3.0, "--keep-local"],
        Some(&dev3.1),
    );
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("404"), "{r:?}");
    let r = edge(
        &["resolve", &id.to_string(), "--db", &dev2.0],
        Some(&dev2.1),
    );
    assert_eq!(r.code, 2, "neither --keep-local nor --take-remote: {r:?}");

    // dev2 keeps its edit: a new hub revision that every peer gets.
    let r = edge(
        &["resolve", &id.to_string(), "--db", &dev2.0, "--keep-local"],
        Some(&dev2.1),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("the device's edit wins"), "{r:?}");
    let hub_body: String = c
        .query_one(r#"SELECT "bo]dy" FROM "no'tes" WHERE id = 1"#, &[])
        .unwrap()
        .get(0);
    assert_eq!(hub_body, "dev2 says");
    assert_eq!(
        body(&dev2.0),
        text("dev2 says"),
        "the resolver's file has it at once"
    );
    assert!(rows(Path::new(&dev2.0), "SELECT 1 FROM _tributary_errors").is_empty());
    assert!(conflict_ids(&dev2.0, &dev2.1).is_empty());
    assert_eq!(edge(&["sync", "--db", &dev1.0], Some(&dev1.1)).code, 0);
    assert_eq!(body(&dev1.0), text("dev2 says"));
    caught_up(&mut w, &mut c, &w1);
    assert_eq!(body(w1.to_str().unwrap()), text("dev2 says"));
    assert_eq!(
        rows(&w1, "SELECT count(*) FROM \"no'tes\""),
        [[rusqlite::types::Value::Integer(2)]],
        "the worker's peer is unfiltered"
    );
    // Settled already: 409.
    let r = edge(
        &["resolve", &id.to_string(), "--db", &dev2.0, "--take-remote"],
        Some(&dev2.1),
    );
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("already resolved"), "{r:?}");

    // In the hub, for any scoped session: a conflict on a row outside the
    // peer's filter, and a resolution that would move a row out of it, are
    // refused with 42501 and change nothing.
    // Two changes of one key at one revision, as dev3: the second is a
    // conflict logged for dev3.
    let conflict_on = |c: &mut Client, id: i32| -> i64 {
        let v: i64 = c
            .query_one(r#"SELECT sync_version FROM "no'tes" WHERE id = $1"#, &[&id])
            .unwrap()
            .get(0);
        let change =
            |b: &str| json!({"op": "U", "pk": {"id": id}, "data": {"bo]dy": b}, "version": v + 1});
        c.query_one(
            r#"SELECT conflict_id FROM sync_apply('"no''tes"', $1::text::jsonb, 'dev3') WHERE outcome = 'MANUAL'"#,
            &[&json!([change("p"), change("q")]).to_string()],
        )
        .unwrap()
        .get(0)
    };
    let other = conflict_on(&mut c, 2);
    let mine = conflict_on(&mut c, 1);
    let scoped = |c: &mut Client, claims: &str, id: i64, resolution: &str| -> String {
        let mut tx = c.transaction().unwrap();
        tx.execute(
            "SELECT sync_act_for_peer('dev3', $1::text::jsonb)",
            &[&claims],
        )
        .unwrap();
        let e = tx
            .execute(
                "SELECT sync_resolve_conflict($1, $2::text::jsonb)",
                &[&id, &resolution],
            )
            .unwrap_err();
        e.as_db_error().unwrap().code().code().to_string()
    };
    assert_eq!(
        scoped(&mut c, r#"{"tenant":"a"}"#, other, r#""take_remote""#),
        "42501"
    );
    assert_eq!(
        scoped(&mut c, r#"{"tenant":"a"}"#, mine, r#"{"tenant":"b"}"#),
        "42501"
    );
    // dev2 (another peer) does not even see dev3's conflicts.
    let mut tx = c.transaction().unwrap();
    tx.execute(
        "SELECT sync_act_for_peer('dev2', '{\"tenant\":\"a\"}')",
        &[],
    )
    .unwrap();
    assert_eq!(
        tx.query_one(
            "SELECT count(*) FROM sync_conflicts WHERE remote_origin <> 'dev2'",
            &[]
        )
        .unwrap()
        .get::<_, i64>(0),
        0
    );
    tx.rollback().unwrap();
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) FROM sync_conflicts WHERE status = 'open'"
        ),
        2,
        "both refusals left their conflicts open"
    );
    assert!(w.running());
}

#[test]
fn run_pushes_edits_as_they_come_pulls_hub_changes_by_long_poll_and_rides_out_the_gateway_going_down(
) {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    let mut g = GatewayProc::start(&cluster, &db, "");
    let tok = token("dev1", json!({}), 600);
    let (_dir, e) = init_device(&g, &tok);
    let es = e.to_str().unwrap();
    // A sync every minute: what arrives sooner came by the long poll, or
    // went out as the app wrote it.
    let mut d = EdgeDaemon::start(&["--db", es, "--interval", "60s"], &tok);
    let holds = |id: i64| -> bool {
        !rows(&e, &format!(r#"SELECT 1 FROM "tab'le" WHERE "]" = {id}"#)).is_empty()
    };
    let at_hub = |c: &mut Client, id: i32| -> bool {
        c.query_one(r#"SELECT count(*) FROM "tab'le" WHERE "]" = $1"#, &[&id])
            .unwrap()
            .get::<_, i64>(0)
            == 1
    };
    let secs = std::time::Duration::from_secs;
    c.batch_execute(r#"INSERT INTO "tab'le" VALUES (1, 'first')"#)
        .unwrap();
    d.until(secs(20), "the first sync", || holds(1));
    for id in 2..5 {
        c.execute(r#"INSERT INTO "tab'le" VALUES ($1, 'woken')"#, &[&id])
            .unwrap();
        d.until(secs(15), "a hub change, by the long poll", || {
            holds(id as i64)
        });
    }
    lite(&e)
        .execute(
            r#"INSERT INTO "tab'le" ("]", """") VALUES (100, 'from the app')"#,
            [],
        )
        .unwrap();
    d.until(secs(15), "the app's edit at the hub", || {
        at_hub(&mut c, 100)
    });

    // The gateway goes down: the app goes on writing, the hub too; the
    // daemon backs off and catches up both ways once it is back.
    g.proc.kill9();
    lite(&e)
        .execute(
            r#"INSERT INTO "tab'le" ("]", """") VALUES (101, 'offline')"#,
            [],
        )
        .unwrap();
    c.batch_execute(r#"INSERT INTO "tab'le" VALUES (5, 'while down')"#)
        .unwrap();
    let log = d.log.clone();
    d.until(secs(60), "the daemon to notice", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("retrying in"))
    });
    assert_eq!(d.exited(), None, "offline is no reason to stop");
    g.proc.spawn(&[("TRIBUTARY_GATEWAY_JWT_SECRET", SECRET)]);
    g.until_healthy();
    d.until(secs(90), "both sides again", || {
        at_hub(&mut c, 101) && holds(5)
    });
    assert!(
        d.log_text().contains("back in step with the hub"),
        "{}",
        d.log_text()
    );
    assert_eq!(d.exited(), None);
    assert_eq!(
        scalar(&mut c, r#"SELECT count(*) FROM "tab'le""#),
        rows(&e, r#"SELECT 1 FROM "tab'le""#).len() as i64
    );

    // A token that expires stops it, with its exit code: it needs a person.
    let expired = token("dev1", json!({}), -60);
    let mut d2 = EdgeDaemon::start(&["--db", es, "--interval", "1s"], &expired);
    assert_eq!(d2.wait_exit(secs(30)), Some(4), "{}", d2.log_text());
    assert!(
        d2.log_text().contains("get a new token"),
        "{}",
        d2.log_text()
    );
}

#[test]
fn two_edge_clients_a_worker_attached_peer_and_the_hub_editing_the_same_keys_at_once_converge() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    c.batch_execute(
        r#"INSERT INTO "tab'le" SELECT g, 'start ' || g FROM generate_series(1, 12) g;"#,
    )
    .unwrap();
    add_peer(&db, "dev2", "device", &[]);
    c.execute("SELECT sync_set_peer('dev2', 20, 'device')", &[])
        .unwrap();
    setup_worker_role(&db, &[]);
    let g = GatewayProc::start(&cluster, &db, "");
    let dir = tempfile::tempdir().unwrap();
    let devs: Vec<(String, String)> = ["dev1", "dev2"]
        .iter()
        .map(|p| {
            let f = dir
                .path()
                .join(format!("{p}.db"))
                .to_str()
                .unwrap()
                .to_string();
            let tok = token(p, json!({}), 600);
            assert_eq!(
                edge(&["init", "--hub", &g.base, "--db", &f], Some(&tok)).code,
                0
            );
            assert_eq!(edge(&["sync", "--db", &f], Some(&tok)).code, 0);
            (f, tok)
        })
        .collect();
    let w1 = dir.path().join("edge1.db");
    let mut w = WorkerProc::start(
        &tributary_e2e::worker::config(&cluster, &db, "w", &sqlite_dest("edge1", &w1)),
        &[],
    );
    caught_up(&mut w, &mut c, &w1);

    // Everyone edits the same twelve keys, five rounds, all at once: the
    // hub, edge1's app, and dev1 and dev2 (each round an edit, then a sync).
    let edit = |who: &str, round: usize, k: usize| -> String {
        let key = (round * 5 + k * 7) % 12 + 1;
        if (round + k) % 9 == 8 {
            format!(r#"DELETE FROM "tab'le" WHERE "]" = {key}"#)
        } else {
            format!(r#"UPDATE "tab'le" SET """" = '{who} {round}.{k}' WHERE "]" = {key}"#)
        }
    };
    let url = cluster.url(&db.name);
    std::thread::scope(|s| {
        let hub = s.spawn(|| {
            let mut h = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            for round in 0..5 {
                for k in 0..3 {
                    h.batch_execute(&edit("hub", round, k)).unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(40));
            }
        });
        let attached = s.spawn(|| {
            for round in 0..5 {
                for k in 0..3 {
                    lite(&w1)
                        .execute_batch(&edit("edge1", round, k + 1))
                        .unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(40));
            }
        });
        let clients: Vec<_> = devs
            .iter()
            .enumerate()
            .map(|(i, (f, tok))| {
                let edit = &edit;
                s.spawn(move || {
                    let who = format!("dev{}", i + 1);
                    for round in 0..5 {
                        for k in 0..3 {
                            lite(Path::new(f))
                                .execute_batch(&edit(&who, round, k + 2 + i))
                                .unwrap();
                        }
                        let r = edge(&["sync", "--db", f], Some(tok));
                        assert_eq!(r.code, 0, "{r:?}");
                    }
                })
            })
            .collect();
        hub.join().unwrap();
        attached.join().unwrap();
        for cl in clients {
            cl.join().unwrap();
        }
    });

    // Quiet now: the worker's peer drains its outbox, the clients sync
    // until a sync brings nothing (their own writes come back once, then
    // nothing: no echo, no ping-pong).
    w.until(
        std::time::Duration::from_secs(60),
        "edge1's outbox to drain",
        || outbox_len(&w1) == 0,
    );
    for (f, tok) in &devs {
        let mut quiet = false;
        for _ in 0..4 {
            let r = edge(&["sync", "--db", f], Some(tok));
            assert_eq!(r.code, 0, "{r:?}");
            let pulled: Vec<&str> = r
                .stdout
                .lines()
                .filter(|l| l.starts_with("pulled"))
                .collect();
            assert!(!pulled.is_empty(), "{r:?}");
            let pulled_nothing = pulled.iter().all(|l| l.contains(": 0 changes"));
            if r.stdout.contains("pushed 0 edits") && pulled_nothing {
                quiet = true;
                break;
            }
        }
        assert!(quiet, "{f}: syncs kept bringing changes");
    }
    caught_up(&mut w, &mut c, &w1);
    let table = |p: &Path| rows(p, r#"SELECT "]", """" FROM "tab'le" ORDER BY 1"#);
    let hub_table: Vec<Vec<rusqlite::types::Value>> = c
        .query(r#"SELECT "]"::int8, """" FROM "tab'le" ORDER BY 1"#, &[])
        .unwrap()
        .iter()
        .map(|r| {
            vec![
                rusqlite::types::Value::Integer(r.get(0)),
                r.get::<_, Option<String>>(1)
                    .map_or(rusqlite::types::Value::Null, rusqlite::types::Value::Text),
            ]
        })
        .collect();
    assert_eq!(table(&w1), hub_table, "edge1 (worker-attached)");
    for (f, _) in &devs {
        assert_eq!(table(Path::new(f)), hub_table, "{f}");
        assert_eq!(outbox_len(Path::new(f)), 0);
    }
    assert!(hub_table.len() < 12, "some deletes won: {hub_table:?}");
    assert!(w.running());
}

#[test]
fn the_hub_going_down_mid_download_keeps_the_pages_in_and_the_next_sync_resumes_sends_the_apps_edit_once_and_adds_the_hubs_new_column(
) {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    c.batch_execute("INSERT INTO sales.orders SELECT g, g % 7 FROM generate_series(1, 60000) g")
        .unwrap();
    c.batch_execute(r#"INSERT INTO "tab'le" VALUES (1, 'one')"#)
        .unwrap();
    let mut g = GatewayProc::start(&cluster, &db, "");
    let tok = token("dev1", json!({}), 600);
    let (dir, e) = init_device(&g, &tok);
    let es = e.to_str().unwrap();
    assert_eq!(
        edge(&["pull", "--db", es, "--table", "\"tab'le\""], Some(&tok)).code,
        0
    );
    let tf = dir.path().join("token");
    std::fs::write(&tf, &tok).unwrap();
    // A download in small pages, and PostgreSQL stopped (immediate, as a
    // crash) once some of them are in the file.
    let pull = std::process::Command::new(edge_bin())
        .args([
            "pull",
            "--db",
            es,
            "--table",
            "sales.orders",
            "--page-size",
            "200",
        ])
        .arg("--token-file")
        .arg(&tf)
        .env_remove("TRIBUTARY_EDGE_TOKEN")
        .env_remove("TRIBUTARY_FAILPOINT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let done = || -> i64 {
        match rows(
            &e,
            "SELECT coalesce(max(rows_done), 0) FROM _tributary_pulls WHERE tbl = 'sales.orders'",
        )[0][0]
        {
            rusqlite::types::Value::Integer(n) => n,
            ref v => panic!("{v:?}"),
        }
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while done() < 1000 {
        assert!(std::time::Instant::now() < end, "no page came in");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    cluster.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    let out = pull.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("unreachable") && stderr.contains("HINT"),
        "{stderr}"
    );
    let kept = done();
    assert!((1000..60000).contains(&kept), "{kept} rows in");
    assert_eq!(file_rows(&e, "sales.orders").len() as i64, kept);

    // The app goes on meanwhile: its edit waits in the outbox, and a sync
    // says the hub is unreachable and leaves it there.
    lite(&e)
        .execute(
            r#"UPDATE "tab'le" SET """" = 'edited offline' WHERE "]" = 1"#,
            [],
        )
        .unwrap();
    let r = edge(&["sync", "--db", es], Some(&tok));
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(outbox_len(&e), 1);
    // The gateway rode it out: it says the hub is down, and answers again
    // once it is back.
    assert!(
        g.proc.running(),
        "the gateway stays up while the hub is down"
    );
    cluster.pg_ctl(&["-w", "start"]);
    g.until_healthy();

    let r = edge(&["sync", "--db", es], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("60000 rows of a full download"),
        "the window resumed: {}",
        r.stderr
    );
    assert_eq!(outbox_len(&e), 0);
    assert_eq!(file_rows(&e, "sales.orders").len(), 60000);
    let mut c = db.connect();
    let (v, sv): (String, i64) = c
        .query_one(
            r#"SELECT """", sync_version FROM "tab'le" WHERE "]" = 1"#,
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(v, "edited offline");
    // Sent once: a second sync pushes nothing and leaves the row's revision.
    let r = edge(&["sync", "--db", es], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("pushed 0 edits"), "{}", r.stdout);
    let sv2: i64 = c
        .query_one(r#"SELECT sync_version FROM "tab'le" WHERE "]" = 1"#, &[])
        .unwrap()
        .get(0);
    assert_eq!(sv2, sv);

    // A column the hub adds, with a default, reaches the file at the next
    // sync (not only at init), filled.
    c.batch_execute(r#"ALTER TABLE "tab'le" ADD COLUMN "ex'tra" text DEFAULT 'd'"#)
        .unwrap();
    let r = edge(&["sync", "--db", es], Some(&tok));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        rows(&e, r#"SELECT "ex'tra", """" FROM "tab'le""#),
        [[
            rusqlite::types::Value::Text("d".into()),
            rusqlite::types::Value::Text("edited offline".into())
        ]]
    );
}

#[test]
fn an_edit_for_a_table_the_hub_dropped_is_set_aside_with_the_hubs_words_and_the_rest_syncs() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    c.batch_execute(
        r#"INSERT INTO "tab'le" VALUES (1, 'one'); INSERT INTO sales.orders VALUES (1, 1)"#,
    )
    .unwrap();
    let g = GatewayProc::start(&cluster, &db, "");
    let tok = token("dev1", json!({}), 300);
    let (_dir, e) = init_device(&g, &tok);
    let es = e.to_str().unwrap();
    assert_eq!(edge(&["sync", "--db", es], Some(&tok)).code, 0);
    // Offline edits to two tables; meanwhile the hub drops one of them.
    lite(&e)
        .execute_batch(
            r#"UPDATE "sales.orders" SET item = 9 WHERE id = 1;
               UPDATE "tab'le" SET """" = 'edited' WHERE "]" = 1;"#,
        )
        .unwrap();
    c.batch_execute("DROP TABLE sales.orders").unwrap();
    let r = edge(&["sync", "--db", es], Some(&tok));
    assert_eq!(
        r.code, 0,
        "one table's refusal does not stop the sync: {r:?}"
    );
    assert_eq!(outbox_len(&e), 0);
    let v: String = c
        .query_one(r#"SELECT """" FROM "tab'le" WHERE "]" = 1"#, &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "edited", "the other table's edit reached the hub");
    let errs = rows(
        &e,
        "SELECT tbl, outcome, detail, local_data FROM _tributary_errors",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    use rusqlite::types::Value::Text;
    assert_eq!(errs[0][0], Text("sales.orders".into()));
    assert_eq!(errs[0][1], Text("REJECTED".into()));
    match (&errs[0][2], &errs[0][3]) {
        (Text(d), Text(local)) => {
            assert!(d.contains("42P01"), "the hub's words: {d}");
            assert!(local.contains("9"), "the app's edit is kept: {local}");
        }
        v => panic!("{v:?}"),
    }
}
