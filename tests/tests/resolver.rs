//! sync_apply against a real cluster: the issue's acceptance table, deletes,
//! conflicts, bad input, hostile identifiers, privileges, and convergence of
//! the stored rows whatever the arrival order.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tributary_e2e::*;

fn setup(c: &mut Client) {
    c.batch_execute(
        "CREATE TABLE customers (external_id text PRIMARY KEY, full_name text, email text);
         SELECT sync_track('customers');
         SELECT sync_set_peer('CRM', 1), sync_set_peer('ERP', 2), sync_set_peer('Portal', 3), sync_set_peer('LocalDB', 4);",
    )
    .unwrap();
}

/// Applies one batch; returns (outcome, row_version, conflict_id, detail) per change.
fn apply(
    c: &mut Client,
    tbl: &str,
    changes: &str,
    origin: &str,
) -> Vec<(String, Option<i64>, Option<i64>, String)> {
    c.query(
        "SELECT outcome, row_version, conflict_id, detail FROM sync_apply($1::text::regclass, $2::text::jsonb, $3)",
        &[&tbl, &changes, &origin],
    )
    .unwrap_or_else(|e| panic!("sync_apply failed: {e:?}"))
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn outcomes(c: &mut Client, changes: &str, origin: &str) -> Vec<String> {
    apply(c, "customers", changes, origin)
        .into_iter()
        .map(|o| o.0)
        .collect()
}

fn row(c: &mut Client, id: &str) -> (Option<String>, Option<String>, i64, Option<String>) {
    let r = c
        .query_one("SELECT full_name, email, sync_version, sync_origin FROM customers WHERE external_id = $1", &[&id])
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

fn ins(id: &str, name: &str, email: &str, v: i64) -> String {
    format!(
        r#"{{"op":"I","pk":{{"external_id":"{id}"}},"data":{{"full_name":"{name}","email":"{email}"}},"version":{v}}}"#
    )
}

#[test]
fn acceptance_table_of_the_multi_source_ladder() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);

    // CUST-001: ERP inserts v1, then CRM sends the same v1 with another name.
    assert_eq!(
        outcomes(
            &mut c,
            &format!("[{}]", ins("CUST-001", "Erp Name", "one@x", 1)),
            "ERP"
        ),
        ["NEW_RECORD"]
    );
    assert_eq!(
        outcomes(
            &mut c,
            &format!("[{}]", ins("CUST-001", "Crm Name", "one@x", 1)),
            "CRM"
        ),
        ["PRIORITY_WIN"]
    );
    let r = row(&mut c, "CUST-001");
    assert_eq!(
        (r.0.as_deref(), r.3.as_deref()),
        (Some("Crm Name"), Some("CRM"))
    );

    // CUST-002: CRM's v2 is applied (its insert, then its update), then
    // Portal sends v1.
    assert_eq!(
        outcomes(
            &mut c,
            &format!(
                r#"[{}, {{"op":"U","pk":{{"external_id":"CUST-002"}},"data":{{"full_name":"Crm Two","email":"two@x"}},"version":2}}]"#,
                ins("CUST-002", "Crm One", "one@x", 1)
            ),
            "CRM"
        ),
        ["NEW_RECORD", "VERSION_WIN"]
    );
    assert_eq!(
        outcomes(
            &mut c,
            &format!("[{}]", ins("CUST-002", "Portal Two", "p@x", 1)),
            "Portal"
        ),
        ["STALE_SKIP"]
    );
    assert_eq!(row(&mut c, "CUST-002").0.as_deref(), Some("Crm Two"));

    // CUST-003: CRM changes full_name (v2), then ERP changes email from the same v1 base (v2).
    apply(
        &mut c,
        "customers",
        &format!("[{}]", ins("CUST-003", "Old", "old@x", 1)),
        "LocalDB",
    );
    let crm = r#"[{"op":"U","pk":{"external_id":"CUST-003"},"data":{"full_name":"New Name"},"version":2}]"#;
    let erp =
        r#"[{"op":"U","pk":{"external_id":"CUST-003"},"data":{"email":"new@x"},"version":2}]"#;
    assert_eq!(outcomes(&mut c, crm, "CRM"), ["VERSION_WIN"]);
    assert_eq!(outcomes(&mut c, erp, "ERP"), ["FIELD_MERGE"]);
    let r = row(&mut c, "CUST-003");
    assert_eq!(
        (r.0.as_deref(), r.1.as_deref(), r.3.as_deref()),
        (Some("New Name"), Some("new@x"), Some("ERP"))
    );

    // CUST-004: CRM sends v1 email=a, then v1 email=b: a conflict with both images.
    let a = r#"{"op":"U","pk":{"external_id":"CUST-004"},"data":{"email":"a"},"version":1}"#;
    let b = r#"{"op":"U","pk":{"external_id":"CUST-004"},"data":{"email":"b"},"version":1}"#;
    let got = apply(&mut c, "customers", &format!("[{a},{b}]"), "CRM");
    assert_eq!(got[1].0, "MANUAL");
    let id = got[1].2.expect("a MANUAL outcome names its conflict");
    let conflict = c
        .query_one("SELECT local ->> 'email', remote ->> 'email', status, columns FROM sync_conflicts WHERE id = $1", &[&id])
        .unwrap();
    assert_eq!(conflict.get::<_, String>(0), "a");
    assert_eq!(conflict.get::<_, String>(1), "b");
    assert_eq!(conflict.get::<_, String>(2), "open");
    assert_eq!(conflict.get::<_, Vec<String>>(3), vec!["email"]);
    // The conflict is replayed with a chosen resolution, as a new revision.
    let before = row(&mut c, "CUST-004").2;
    c.execute("SELECT sync_resolve_conflict($1, '\"keep_local\"')", &[&id])
        .unwrap();
    let r = row(&mut c, "CUST-004");
    assert_eq!(
        (r.1.as_deref(), r.3.as_deref()),
        (Some("a"), None),
        "keep_local restores the hub's image, as a local change"
    );
    assert_eq!(r.2, before + 1);
    let status: String = c
        .query_one("SELECT status FROM sync_conflicts WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(status, "resolved");
    expect_error(
        &mut c,
        &format!("SELECT sync_resolve_conflict({id}, '\"take_remote\"')"),
        "22023",
    );

    // CUST-005: a first write.
    assert_eq!(
        outcomes(
            &mut c,
            &format!("[{}]", ins("CUST-005", "Five", "five@x", 1)),
            "Portal"
        ),
        ["NEW_RECORD"]
    );
}

#[test]
fn writes_carry_the_origin_and_are_not_echoed_to_it() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    let since = scalar(&mut c, "SELECT sync_current_version()");
    apply(
        &mut c,
        "customers",
        &format!("[{}]", ins("K1", "x", "x@x", 1)),
        "ERP",
    );
    c.batch_execute("INSERT INTO customers VALUES ('K2', 'local', 'l@x')")
        .unwrap();
    let for_erp: Vec<String> = c
        .query(
            "SELECT pk ->> 'external_id' FROM sync_changes_since($1, skip_origin => 'ERP')",
            &[&since],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(for_erp, vec!["K2"]);
    // A re-delivered batch is idempotent.
    assert_eq!(
        outcomes(&mut c, &format!("[{}]", ins("K1", "x", "x@x", 1)), "ERP"),
        ["STALE_SKIP"]
    );
}

#[test]
fn deletes_update_against_delete_and_tombstones_stop_resurrection() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    let del =
        |id: &str, v: i64| format!(r#"[{{"op":"D","pk":{{"external_id":"{id}"}},"version":{v}}}]"#);
    let upd = |id: &str, name: &str, v: i64| {
        format!(
            r#"[{{"op":"U","pk":{{"external_id":"{id}"}},"data":{{"full_name":"{name}"}},"version":{v}}}]"#
        )
    };
    apply(
        &mut c,
        "customers",
        &format!("[{}]", ins("D1", "one", "1@x", 1)),
        "CRM",
    );
    // Delete against an unchanged row: applied, leaving a tombstone.
    assert_eq!(outcomes(&mut c, &del("D1", 2), "ERP"), ["VERSION_WIN"]);
    let n = scalar(
        &mut c,
        "SELECT count(*) FROM customers WHERE external_id = 'D1'",
    );
    assert_eq!(n, 0);
    // A stale update (from before the delete) does not bring it back...
    assert_eq!(
        outcomes(&mut c, &upd("D1", "stale", 1), "Portal"),
        ["STALE_SKIP"]
    );
    let n = scalar(
        &mut c,
        "SELECT count(*) FROM customers WHERE external_id = 'D1'",
    );
    assert_eq!(n, 0);
    // ...a newer one does, with the columns it did not set from before the delete.
    assert_eq!(
        outcomes(&mut c, &upd("D1", "back", 3), "Portal"),
        ["VERSION_WIN"]
    );
    let r = row(&mut c, "D1");
    assert_eq!(
        (r.0.as_deref(), r.1.as_deref(), r.2),
        (Some("back"), Some("1@x"), 3)
    );

    // Delete against a newer update: the update wins.
    apply(
        &mut c,
        "customers",
        &format!("[{}]", ins("D2", "two", "2@x", 1)),
        "CRM",
    );
    apply(&mut c, "customers", &upd("D2", "new", 2), "CRM");
    apply(&mut c, "customers", &upd("D2", "newer", 3), "CRM");
    assert_eq!(outcomes(&mut c, &del("D2", 2), "ERP"), ["STALE_SKIP"]);
    assert_eq!(row(&mut c, "D2").0.as_deref(), Some("newer"));

    // Delete of a missing row is no error, and an older insert of the key
    // stays deleted (ERP deleted it twice: its tombstone is at revision 2).
    assert_eq!(outcomes(&mut c, &del("D3", 1), "ERP"), ["VERSION_WIN"]);
    apply(&mut c, "customers", &del("D3", 2), "ERP");
    assert_eq!(
        outcomes(&mut c, &format!("[{}]", ins("D3", "old", "o@x", 1)), "CRM"),
        ["STALE_SKIP"]
    );
    // Insert of an existing key goes through the ladder: its full_name is
    // older, its email meets CRM's at the same revision and loses on priority.
    assert_eq!(
        outcomes(
            &mut c,
            &format!("[{}]", ins("D2", "again", "a@x", 1)),
            "Portal"
        ),
        ["PRIORITY_WIN"]
    );
    let r = row(&mut c, "D2");
    assert_eq!(
        (r.0.as_deref(), r.1.as_deref()),
        (Some("newer"), Some("2@x"))
    );
}

#[test]
fn expect_version_is_a_compare_and_set() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    apply(
        &mut c,
        "customers",
        &format!("[{}]", ins("E1", "one", "1@x", 1)),
        "CRM",
    );
    // Three local edits: the hub's row is at revision 4.
    c.batch_execute(
        "UPDATE customers SET full_name = 'two' WHERE external_id = 'E1';
         UPDATE customers SET full_name = 'three' WHERE external_id = 'E1';
         UPDATE customers SET full_name = 'four' WHERE external_id = 'E1';",
    )
    .unwrap();
    let cas = |ev: i64| {
        format!(
            r#"[{{"op":"U","pk":{{"external_id":"E1"}},"data":{{"full_name":"cas"}},"version":1,"expect_version":{ev}}}]"#
        )
    };
    assert_eq!(
        outcomes(&mut c, &cas(3), "Portal"),
        ["STALE_SKIP"],
        "wrong ETag: through the ladder"
    );
    assert_eq!(outcomes(&mut c, &cas(4), "Portal"), ["VERSION_WIN"]);
    let r = row(&mut c, "E1");
    assert_eq!((r.0.as_deref(), r.2), (Some("cas"), 5));
}

#[test]
fn a_malformed_batch_is_refused_whole_with_sqlstate_detail_and_hint() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute("CREATE TABLE nums (id int PRIMARY KEY, n int); SELECT sync_track('nums'); CREATE TABLE untracked (id int PRIMARY KEY);")
        .unwrap();
    let good = ins("OK1", "fine", "f@x", 1);
    let cases = [
        ("customers", r#"{"op":"I"}"#.to_string(), "22023"),
        ("customers", format!(r#"[{good}, {{"op":"X","pk":{{"external_id":"A"}},"data":{{}},"version":1}}]"#), "22023"),
        ("customers", format!(r#"[{good}, {{"op":"U","data":{{"email":"x"}},"version":1}}]"#), "22023"),
        ("customers", format!(r#"[{good}, {{"op":"U","pk":{{"id":"A"}},"data":{{}},"version":1}}]"#), "22023"),
        ("customers", format!(r#"[{good}, {{"op":"U","pk":{{"external_id":null}},"data":{{}},"version":1}}]"#), "22023"),
        ("customers", format!(r#"[{good}, {{"op":"U","pk":{{"external_id":"A"}},"data":{{"nope":1}},"version":1}}]"#), "42703"),
        ("customers", format!(r#"[{good}, {{"op":"U","pk":{{"external_id":"A"}},"data":{{"sync_version":9}},"version":1}}]"#), "42703"),
        ("customers", format!(r#"[{good}, {{"op":"U","pk":{{"external_id":"A"}},"data":{{}},"version":"two"}}]"#), "22023"),
        ("customers", format!(r#"[{good}, {{"op":"U","pk":{{"external_id":"A"}},"data":{{}},"version":0}}]"#), "22023"),
        ("customers", format!(r#"[{good}, {{"op":"U","pk":{{"external_id":"A"}},"data":{{}}}}]"#), "22023"),
        ("nums", r#"[{"op":"I","pk":{"id":1},"data":{"n":2},"version":1}, {"op":"I","pk":{"id":2},"data":{"n":"lots"},"version":1}]"#.to_string(), "22P02"),
        ("untracked", r#"[{"op":"I","pk":{"id":1},"data":{},"version":1}]"#.to_string(), "TB003"),
    ];
    for (tbl, changes, code) in cases {
        let sql = format!(
            "SELECT * FROM sync_apply('{tbl}', '{}', 'CRM')",
            changes.replace('\'', "''")
        );
        let e = expect_error(&mut c, &sql, code);
        if code == "22P02" {
            assert!(
                e.message.contains("change #2"),
                "the bad change is named: {e:?}"
            );
        }
    }
    expect_error(
        &mut c,
        &format!("SELECT * FROM sync_apply('customers', '[{good}]', NULL)"),
        "22004",
    );
    // Text that is not JSON fails in PostgreSQL's own jsonb input, before
    // sync_apply runs: its SQLSTATE and DETAIL are PostgreSQL's.
    let e = db_error(
        c.batch_execute("SELECT * FROM sync_apply('customers', 'not json', 'CRM')")
            .unwrap_err(),
    );
    assert_eq!(e.code, "22P02");
    assert!(e.detail.is_some());
    let n = scalar(
        &mut c,
        "SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM nums)",
    );
    assert_eq!(n, 0, "nothing of a refused batch is applied");
}

#[test]
fn hostile_identifiers_go_through_sync_apply() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE SCHEMA "we""ird"; CREATE TABLE "we""ird"."tab'le" ("]" int PRIMARY KEY, "x""y" text, "a b" numeric);
           SELECT sync_track('"we""ird"."tab''le"');"#,
    )
    .unwrap();
    let t = r#""we""ird"."tab'le""#;
    let got = apply(
        &mut c,
        t,
        r#"[{"op":"I","pk":{"]":1},"data":{"x\"y":"v'1","a b":1.50},"version":1}]"#,
        "pe'er\"",
    );
    assert_eq!(got[0].0, "NEW_RECORD");
    let got = apply(
        &mut c,
        t,
        r#"[{"op":"U","pk":{"]":1},"data":{"a b":1.50},"version":1}]"#,
        "other",
    );
    assert_eq!(
        got[0].0, "STALE_SKIP",
        "1.50 compares equal to the stored 1.50 (no re-serialisation)"
    );
    let r = c
        .query_one(
            r#"SELECT "x""y", "a b"::text, sync_origin FROM "we""ird"."tab'le""#,
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2)
        ),
        ("v'1".into(), "1.50".into(), "pe'er\"".into())
    );
    let got = apply(
        &mut c,
        t,
        r#"[{"op":"D","pk":{"]":1},"version":2}]"#,
        "other",
    );
    assert_eq!(got[0].0, "VERSION_WIN");
}

#[test]
fn sync_apply_is_for_granted_roles_only() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute(
        "CREATE ROLE app LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON customers TO app;",
    )
    .unwrap();
    let mut app = db.connect_as("app");
    let changes = format!("[{}]", ins("P1", "x", "x@x", 1));
    let e = db_error(
        app.query(
            "SELECT * FROM sync_apply('customers', $1::text::jsonb, 'CRM')",
            &[&changes],
        )
        .unwrap_err(),
    );
    assert_eq!(e.code, "42501");
    let e = db_error(
        app.query(
            "SELECT * FROM tributary._apply('customers', $1::text::jsonb, 'CRM')",
            &[&changes],
        )
        .unwrap_err(),
    );
    assert_eq!(
        e.code, "42501",
        "the engine refuses roles that may not run sync_apply"
    );
    c.batch_execute("GRANT EXECUTE ON FUNCTION sync_apply(regclass, jsonb, text) TO app")
        .unwrap();
    let e = db_error(
        app.query(
            "SELECT * FROM sync_apply('customers', $1::text::jsonb, 'CRM')",
            &[&changes],
        )
        .unwrap_err(),
    );
    assert_eq!(e.code, "42501", "app does not speak for CRM yet");
    c.batch_execute("SELECT sync_set_peer('CRM', 1, 'app')")
        .unwrap();
    let n = app
        .query(
            "SELECT * FROM sync_apply('customers', $1::text::jsonb, 'CRM')",
            &[&changes],
        )
        .unwrap()
        .len();
    assert_eq!(n, 1);
}

/// The same changes from three peers, applied in different orders (and
/// batchings) into separate databases, leave identical rows.
#[test]
fn any_arrival_order_gives_the_same_rows() {
    let cluster = Cluster::start();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let origins = ["CRM", "ERP", "Portal"];
    let mut changes: Vec<(String, &str)> = vec![];
    for _ in 0..60 {
        let id = format!("K{}", rng.gen_range(0..6));
        let v = rng.gen_range(1..5);
        let origin = origins[rng.gen_range(0..3)];
        let ch = match rng.gen_range(0..6) {
            0 => format!(r#"{{"op":"D","pk":{{"external_id":"{id}"}},"version":{v}}}"#),
            1 => ins(
                &id,
                &format!("n{}", rng.gen_range(0..3)),
                &format!("e{}", rng.gen_range(0..3)),
                v,
            ),
            2 => format!(
                r#"{{"op":"U","pk":{{"external_id":"{id}"}},"data":{{"email":"e{}"}},"version":{v}}}"#,
                rng.gen_range(0..3)
            ),
            _ => format!(
                r#"{{"op":"U","pk":{{"external_id":"{id}"}},"data":{{"full_name":"n{}"}},"version":{v}}}"#,
                rng.gen_range(0..3)
            ),
        };
        changes.push((ch, origin));
    }
    let mut results = vec![];
    for round in 0..4 {
        let db = cluster.db();
        let mut c = db.connect();
        setup(&mut c);
        // Every key starts at revision 3 at the hub, so that each change
        // (claims 1 to 4) is within what a peer may claim in any order.
        c.batch_execute(
            "INSERT INTO customers (external_id, full_name, email)
                 SELECT 'K' || g, 'seed', 'seed@x' FROM generate_series(0, 5) g;
             UPDATE customers SET full_name = 'seed2';
             UPDATE customers SET full_name = 'seed';",
        )
        .unwrap();
        let mut order = changes.clone();
        if round > 0 {
            order.shuffle(&mut rng);
        }
        // Batches of consecutive changes from the same origin.
        let mut i = 0;
        while i < order.len() {
            let origin = order[i].1;
            let mut j = i;
            while j < order.len() && order[j].1 == origin && j - i < rng.gen_range(1..4) {
                j += 1;
            }
            let batch: Vec<&str> = order[i..j.max(i + 1)]
                .iter()
                .map(|c| c.0.as_str())
                .collect();
            apply(
                &mut c,
                "customers",
                &format!("[{}]", batch.join(",")),
                origin,
            );
            i = j.max(i + 1);
        }
        let rows: Vec<(String, Option<String>, Option<String>, i64)> = c
            .query(
                "SELECT external_id, full_name, email, sync_version FROM customers ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        results.push(rows);
    }
    assert!(!results[0].is_empty());
    for r in &results[1..] {
        assert_eq!(r, &results[0], "the hub's rows depend on arrival order");
    }
}

#[test]
fn an_order_before_its_client_is_parked_then_applied_or_dead_lettered() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE clients (id int PRIMARY KEY, name text);
         CREATE TABLE orders (id int PRIMARY KEY, client_id int REFERENCES clients, total numeric);
         SELECT sync_track('clients'); SELECT sync_track('orders');",
    )
    .unwrap();
    let order = |id: i32, client: i32| {
        format!(
            r#"[{{"op":"I","pk":{{"id":{id}}},"data":{{"client_id":{client},"total":9.50}},"version":1}}]"#
        )
    };
    // The order arrives first: parked, nothing written, nothing lost.
    let got = apply(&mut c, "orders", &order(1, 7), "ERP");
    assert_eq!(got[0].0, "DEFERRED");
    assert!(
        got[0].3.contains("clients"),
        "the detail names what it waits for: {}",
        got[0].3
    );
    let n = scalar(&mut c, "SELECT count(*) FROM orders");
    assert_eq!(n, 0);
    let waiting: String = c
        .query_one(
            "SELECT waiting_for::text FROM sync_pending WHERE status = 'pending'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(waiting, "clients");

    // The client lands: the parked order goes through by itself.
    let client = r#"[{"op":"I","pk":{"id":7},"data":{"name":"Ada"},"version":1}]"#;
    assert_eq!(apply(&mut c, "clients", client, "ERP")[0].0, "NEW_RECORD");
    let total: String = c
        .query_one("SELECT total::text FROM orders WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(total, "9.50");
    let n = scalar(&mut c, "SELECT count(*) FROM sync_pending");
    assert_eq!(n, 0);

    // A client that never comes: a dead letter after tributary.max_retries, with the last error.
    c.batch_execute("SET tributary.max_retries = 3").unwrap();
    assert_eq!(
        apply(&mut c, "orders", &order(2, 99), "ERP")[0].0,
        "DEFERRED"
    );
    let r1: Vec<String> = c
        .query("SELECT outcome FROM sync_retry_pending()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(r1, ["DEFERRED"]);
    let r2: Vec<String> = c
        .query("SELECT outcome FROM sync_retry_pending()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(r2, ["DEAD_LETTER"]);
    let dead = c
        .query_one(
            "SELECT status, attempts, last_error FROM sync_pending WHERE pk = '{\"id\": 2}'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (dead.get::<_, String>(0), dead.get::<_, i32>(1)),
        ("dead".to_string(), 3)
    );
    assert!(dead.get::<_, String>(2).contains("clients"));
    assert!(
        c.query("SELECT * FROM sync_retry_pending()", &[])
            .unwrap()
            .is_empty(),
        "dead letters are not retried"
    );
}

#[test]
fn parent_and_child_in_one_batch_of_a_self_referencing_table_both_apply() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE nodes (id int PRIMARY KEY, parent int REFERENCES nodes); SELECT sync_track('nodes');",
    )
    .unwrap();
    let got = apply(
        &mut c,
        "nodes",
        r#"[{"op":"I","pk":{"id":2},"data":{"parent":1},"version":1},
            {"op":"I","pk":{"id":1},"data":{"parent":null},"version":1},
            {"op":"I","pk":{"id":3},"data":{"parent":4},"version":1}]"#,
        "CRM",
    );
    let outs: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(outs, ["NEW_RECORD", "NEW_RECORD", "DEFERRED"]);
    let n = scalar(&mut c, "SELECT count(*) FROM nodes");
    assert_eq!(n, 2);
}

#[test]
fn policies_decide_same_revision_overlaps() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    let upd = |id: &str, email: &str, ts: &str| {
        format!(
            r#"[{{"op":"U","pk":{{"external_id":"{id}"}},"data":{{"email":"{email}"}},"version":2{ts}}}]"#
        )
    };
    // Bad policies are refused.
    expect_error(
        &mut c,
        "SELECT sync_set_policy('customers', 'newest')",
        "22023",
    );
    expect_error(
        &mut c,
        "SELECT sync_set_policy('customers', 'custom', 'lower(text)'::regprocedure)",
        "42883",
    );
    expect_error(
        &mut c,
        "SELECT sync_set_policy('customers', 'custom')",
        "22023",
    );
    expect_error(
        &mut c,
        "SELECT sync_set_policy('customers', 'hub_wins', 'lower(text)'::regprocedure)",
        "22023",
    );

    // last_writer_wins: the later clock wins at the same revision, whatever
    // the priority and the arrival order; ts is required.
    c.batch_execute("SELECT sync_set_policy('customers', 'last_writer_wins')")
        .unwrap();
    for (first, second) in [("CRM", "Portal"), ("Portal", "CRM")] {
        let id = format!("L-{first}");
        apply(
            &mut c,
            "customers",
            &format!(
                "[{}]",
                ins(&id, "x", "old@x", 1).replace(r#""version":1"#, r#""version":1,"ts":1"#)
            ),
            "ERP",
        );
        let ts = |o: &str| {
            if o == "Portal" {
                r#","ts":"2026-01-01T00:00:02Z""#
            } else {
                r#","ts":"2026-01-01T00:00:01Z""#
            }
        };
        apply(&mut c, "customers", &upd(&id, first, ts(first)), first);
        let second_out = apply(&mut c, "customers", &upd(&id, second, ts(second)), second);
        assert_eq!(second_out[0].0, "LAST_WRITER_WINS");
        assert_eq!(
            row(&mut c, &id).1.as_deref(),
            Some("Portal"),
            "Portal wrote last"
        );
    }
    expect_error(
        &mut c,
        &format!(
            "SELECT * FROM sync_apply('customers', '{}', 'CRM')",
            upd("L-CRM", "no clock", "")
        ),
        "22023",
    );
    // Local writes on a last_writer_wins table stamp a clock.
    c.batch_execute("UPDATE customers SET full_name = 'local' WHERE external_id = 'L-CRM'")
        .unwrap();
    let ts = scalar(
        &mut c,
        "SELECT e.ts FROM customers, tributary.colmeta_entries(sync_colmeta) e
              WHERE external_id = 'L-CRM' AND e.attnum = 2",
    );
    assert!(
        ts > 1_700_000_000_000_000,
        "a Unix-microsecond clock, got {ts}"
    );

    // hub_wins keeps the hub's value; peer_wins takes the incoming one.
    c.batch_execute("SELECT sync_set_policy('customers', 'hub_wins')")
        .unwrap();
    apply(
        &mut c,
        "customers",
        &format!("[{}]", ins("H1", "x", "old@x", 1)),
        "ERP",
    );
    apply(&mut c, "customers", &upd("H1", "first", ""), "Portal");
    assert_eq!(
        apply(&mut c, "customers", &upd("H1", "second", ""), "CRM")[0].0,
        "HUB_WINS"
    );
    assert_eq!(row(&mut c, "H1").1.as_deref(), Some("first"));
    c.batch_execute("SELECT sync_set_policy('customers', 'peer_wins')")
        .unwrap();
    assert_eq!(
        apply(&mut c, "customers", &upd("H1", "third", ""), "Portal")[0].0,
        "PEER_WINS"
    );
    assert_eq!(row(&mut c, "H1").1.as_deref(), Some("third"));
    let p: String = c
        .query_one(
            "SELECT policy FROM sync_policies WHERE tbl = 'customers'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(p, "peer_wins");
}

#[test]
fn the_custom_policy_merges_overlaps_with_a_user_function() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute(
        r#"CREATE FUNCTION join_emails(local jsonb, remote jsonb, base jsonb) RETURNS jsonb
             LANGUAGE sql IMMUTABLE AS $$ SELECT local || jsonb_build_object('email', (local ->> 'email') || '+' || (remote ->> 'email')) $$;
           SELECT sync_set_policy('customers', 'custom', 'join_emails(jsonb,jsonb,jsonb)'::regprocedure);"#,
    )
    .unwrap();
    apply(
        &mut c,
        "customers",
        &format!("[{}]", ins("C1", "x", "old@x", 1)),
        "ERP",
    );
    let upd = |email: &str| {
        format!(
            r#"[{{"op":"U","pk":{{"external_id":"C1"}},"data":{{"email":"{email}"}},"version":2}}]"#
        )
    };
    apply(&mut c, "customers", &upd("a"), "CRM");
    let got = apply(&mut c, "customers", &upd("b"), "Portal");
    assert_eq!(got[0].0, "CUSTOM");
    assert!(got[0].3.contains("join_emails"), "{}", got[0].3);
    let r = row(&mut c, "C1");
    assert_eq!(
        (r.1.as_deref(), r.3.as_deref()),
        (Some("a+b"), Some("Portal"))
    );
    let p: String = c
        .query_one(
            "SELECT resolver::text FROM sync_policies WHERE tbl = 'customers'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(p, "join_emails(jsonb,jsonb,jsonb)");
}

/// Every kind of column goes through sync_apply exactly as
/// jsonb_populate_record reads it: the engine types values itself (input
/// functions, arrays and composites through jsonb_populate_record), so the
/// stored row is compared with PostgreSQL's own reading of the same JSON.
#[test]
fn values_of_every_type_are_read_as_jsonb_populate_record_reads_them() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE DOMAIN short_code AS varchar(4) CHECK (VALUE <> 'bad');
           CREATE TYPE pair AS (a int, b text);
           CREATE TABLE every (
               id bigint PRIMARY KEY, i2 smallint, n numeric, n2 numeric(6,2), f float8, b boolean,
               t text, vc varchar(5), ch char(3), ts timestamptz, d date, iv interval, u uuid,
               by bytea, j json, jb jsonb, ia int[], ta text[], p pair, code short_code,
               g bigint GENERATED ALWAYS AS (id * 2) STORED);
           SELECT sync_track('every');"#,
    )
    .unwrap();
    let data = r#"{"i2": "7", "n": 1.50, "n2": 3.14159, "f": 1e20, "b": true, "t": "tab\t\"q\" é",
                   "vc": "abc", "ch": "x", "ts": "2024-02-29T12:00:00.123456+02:00", "d": "2024-01-02",
                   "iv": "1 day 02:00:00", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "by": "\\x00ff",
                   "j": {"z": 1, "a": [1, 2]}, "jb": {"z": 1, "a": [1, 2]}, "ia": [1, 2, 3],
                   "ta": ["x,y", "q\"t", null], "p": {"a": 1, "b": "two"}, "code": "ok"}"#;
    let changes = format!(r#"[{{"op":"I","pk":{{"id":1}},"data":{data},"version":1}}]"#);
    let got = apply(&mut c, "every", &changes, "peer");
    assert_eq!(got[0].0, "NEW_RECORD", "{got:?}");
    let same: bool = c
        .query_one(
            "SELECT to_jsonb(e) - '{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[]
                  = to_jsonb(jsonb_populate_record(NULL::every, $1::text::jsonb || '{\"id\": 1, \"g\": 2}'))
                    - '{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[]
               FROM every e",
            &[&data],
        )
        .unwrap()
        .get(0);
    assert!(
        same,
        "the stored row equals jsonb_populate_record's reading"
    );
    // The same values again, spelled differently, compare equal: nothing changes.
    let respelled = r#"[{"op":"U","pk":{"id":"1"},"data":{"n":1.50,"n2":"3.14","f":100000000000000000000,"ia":[1,2,3]},"version":1}]"#;
    let got = apply(&mut c, "every", respelled, "peer");
    assert_eq!(got[0].0, "STALE_SKIP", "{got:?}");
    // An update of an array and a composite.
    let got = apply(
        &mut c,
        "every",
        r#"[{"op":"U","pk":{"id":1},"data":{"ia":[4],"p":{"a":2,"b":null}},"version":2}]"#,
        "peer",
    );
    assert_eq!(got[0].0, "VERSION_WIN", "{got:?}");
    let r = c
        .query_one("SELECT ia::text, p::text, g FROM every", &[])
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2)
        ),
        ("{4}".into(), "(2,)".into(), 2)
    );
    // Values that do not fit: named errors with the type's own SQLSTATE.
    for (data, code) in [
        (r#"{"vc": "toolong"}"#, "22001"),
        (r#"{"i2": 70000}"#, "22003"),
        (r#"{"ia": ["x"]}"#, "22P02"),
        (r#"{"ts": "yesterday-ish"}"#, "22007"),
        (r#"{"u": "not-a-uuid"}"#, "22P02"),
    ] {
        let changes = format!(
            r#"[{{"op":"I","pk":{{"id":2}},"data":{{}},"version":1}}, {{"op":"U","pk":{{"id":1}},"data":{data},"version":9}}]"#
        );
        let e = db_error(
            c.query(
                "SELECT * FROM sync_apply('every', $1::text::jsonb, 'peer')",
                &[&changes],
            )
            .unwrap_err(),
        );
        assert_eq!(e.code, code, "{data}: {e:?}");
        assert_eq!(
            e.message, "change #2 has a value of the wrong type",
            "{e:?}"
        );
        assert!(
            e.detail.as_deref().unwrap_or("").contains("(change: {"),
            "{e:?}"
        );
    }
    // A domain's CHECK is not a type error: it keeps its own SQLSTATE.
    let e = db_error(
        c.query(
            "SELECT * FROM sync_apply('every', $1::text::jsonb, 'peer')",
            &[&r#"[{"op":"U","pk":{"id":1},"data":{"code":"bad"},"version":9}]"#],
        )
        .unwrap_err(),
    );
    assert_eq!(e.code, "23514", "{e:?}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM every", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "nothing of a refused batch was applied");
}

/// A key another transaction inserts while sync_apply decides is never
/// silently dropped: the batch fails with a serialization failure (retry),
/// and the retry resolves against the new row.
#[test]
fn a_key_inserted_concurrently_fails_the_batch_for_a_retry() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    let mut other = db.connect();
    other
        .batch_execute("BEGIN; INSERT INTO customers VALUES ('RACE', 'hub', 'h@x');")
        .unwrap();
    let mut applier = db.connect();
    let t = std::thread::spawn(move || {
        applier
            .query(
                "SELECT outcome FROM sync_apply('customers', $1::text::jsonb, 'CRM')",
                &[&format!("[{}]", ins("RACE", "crm", "c@x", 1))],
            )
            .map(|r| r.len())
            .map_err(db_error)
    });
    // The applier waits on the uncommitted row; let it get there.
    tributary_e2e::worker::wait_until(
        std::time::Duration::from_secs(10),
        "the applier to wait",
        || {
            c.query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
                > 0
        },
    );
    other.batch_execute("COMMIT").unwrap();
    let e = t.join().unwrap().unwrap_err();
    assert_eq!(e.code, "40001", "{e:?}");
    assert_eq!(
        row(&mut c, "RACE").0.as_deref(),
        Some("hub"),
        "nothing applied"
    );
    let got = outcomes(
        &mut c,
        &format!("[{}]", ins("RACE", "crm", "c@x", 1)),
        "CRM",
    );
    assert_eq!(
        got,
        ["PRIORITY_WIN"],
        "the retry resolves against the new row"
    );
}

/// A table's own unique constraint (not the key) refuses a batch with its
/// own SQLSTATE, and nothing of the batch is applied.
#[test]
fn another_unique_constraint_refuses_the_batch_with_23505() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute("ALTER TABLE customers ADD CONSTRAINT one_email UNIQUE (email)")
        .unwrap();
    let changes = format!(
        "[{}, {}]",
        ins("U1", "one", "same@x", 1),
        ins("U2", "two", "same@x", 1)
    );
    let e = db_error(
        c.query(
            "SELECT * FROM sync_apply('customers', $1::text::jsonb, 'CRM')",
            &[&changes],
        )
        .unwrap_err(),
    );
    assert_eq!(e.code, "23505", "{e:?}");
    assert!(e.message.contains("one_email"), "{e:?}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM customers", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing of the batch was applied");
    // The session goes on: the next batch applies.
    let got = outcomes(
        &mut c,
        &format!("[{}]", ins("U1", "one", "same@x", 1)),
        "CRM",
    );
    assert_eq!(got, ["NEW_RECORD"]);
}

/// Large batches and wide rows (more than 32 members, where jsonb stores
/// offsets rather than lengths) are read exactly: the stored rows equal
/// jsonb_populate_recordset's reading of the batch.
#[test]
fn a_large_batch_of_wide_rows_is_read_exactly() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    let cols: Vec<String> = (1..=40).map(|i| format!("c{i} text")).collect();
    c.batch_execute(&format!(
        "CREATE TABLE wide (id int PRIMARY KEY, {}); SELECT sync_track('wide');",
        cols.join(", ")
    ))
    .unwrap();
    let changes: Vec<String> = (1..=300)
        .map(|r| {
            let data: Vec<String> = (1..=40)
                .map(|i| format!(r#""c{i}": "r{r} c{i} {}""#, "é\\\"".repeat(i % 3)))
                .collect();
            format!(
                r#"{{"op":"I","pk":{{"id":{r}}},"data":{{{}}},"version":1}}"#,
                data.join(", ")
            )
        })
        .collect();
    let batch = format!("[{}]", changes.join(","));
    let got = apply(&mut c, "wide", &batch, "peer");
    assert_eq!(got.len(), 300);
    assert!(got.iter().all(|g| g.0 == "NEW_RECORD"), "{:?}", &got[..3]);
    let differing: i64 = c
        .query_one(
            "SELECT count(*) FROM jsonb_array_elements($1::text::jsonb) AS x(e)
               LEFT JOIN wide w ON w.id = (x.e -> 'pk' ->> 'id')::int
              WHERE w.id IS NULL
                 OR to_jsonb(w) - '{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[]
                    <> to_jsonb(jsonb_populate_record(NULL::wide, (x.e -> 'data') || (x.e -> 'pk')))
                    - '{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[]",
            &[&batch],
        )
        .unwrap()
        .get(0);
    assert_eq!(differing, 0);
}

/// An error while writing (here a NOT NULL column the change leaves out)
/// leaves nothing applied, also when the caller catches it in a PL/pgSQL
/// exception block and goes on in the same transaction.
#[test]
fn a_write_error_caught_by_the_caller_leaves_nothing_applied() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE strict_t (id int PRIMARY KEY, must text NOT NULL, other text);
         SELECT sync_track('strict_t');",
    )
    .unwrap();
    let e = db_error(
        c.query(
            "SELECT * FROM sync_apply('strict_t', $1::text::jsonb, 'peer')",
            &[&r#"[{"op":"I","pk":{"id":1},"data":{"other":"x"},"version":1}]"#],
        )
        .unwrap_err(),
    );
    assert_eq!(e.code, "23502", "{e:?}");
    c.batch_execute(
        r#"DO $$
           BEGIN
             BEGIN
               PERFORM * FROM sync_apply('strict_t',
                 '[{"op":"I","pk":{"id":2},"data":{"must":"m"},"version":1},
                   {"op":"I","pk":{"id":3},"data":{"other":"x"},"version":1}]', 'peer');
             EXCEPTION WHEN not_null_violation THEN
               INSERT INTO strict_t (id, must) VALUES (9, 'after the error');
             END;
           END $$;"#,
    )
    .unwrap();
    let rows: String = c
        .query_one(
            "SELECT coalesce(string_agg(id || ':' || must, ',' ORDER BY id), '') FROM strict_t",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        rows, "9:after the error",
        "the batch left nothing; the caller went on"
    );
}

#[test]
fn a_revision_claimed_beyond_the_hubs_next_is_refused_whole_with_22003() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE "tab'le" ("]" int PRIMARY KEY, v text);
           SELECT sync_track('"tab''le"');
           INSERT INTO "tab'le" VALUES (1, 'hub'), (2, 'doomed');
           DELETE FROM "tab'le" WHERE "]" = 2;"#,
    )
    .unwrap();
    let claim = |c: &mut Client, changes: &str| {
        db_error(
            c.query(
                "SELECT * FROM sync_apply('\"tab''le\"', $1::text::jsonb, 'edge1')",
                &[&changes],
            )
            .unwrap_err(),
        )
    };
    // A live row at revision 1: at most 2. A good change first in the same
    // batch is not applied either.
    let e = claim(
        &mut c,
        r#"[{"op":"I","pk":{"]":3},"data":{"v":"new"},"version":1},
            {"op":"U","pk":{"]":1},"data":{"v":"forged"},"version":1000000}]"#,
    );
    assert_eq!(e.code, "22003", "{e:?}");
    assert!(
        e.message.contains("change #2") && e.message.contains("1000000"),
        "{e:?}"
    );
    assert!(
        e.detail.as_deref().unwrap_or("").contains("at most 2"),
        "{e:?}"
    );
    assert!(e.hint.is_some());
    // A tombstone at revision 2: at most 3. A key never seen: at most 1.
    let e = claim(
        &mut c,
        r#"[{"op":"I","pk":{"]":2},"data":{"v":"back"},"version":4}]"#,
    );
    assert_eq!(e.code, "22003");
    let e = claim(
        &mut c,
        r#"[{"op":"I","pk":{"]":9},"data":{"v":"x"},"version":2}]"#,
    );
    assert_eq!(e.code, "22003");
    assert_eq!(
        scalar(&mut c, r#"SELECT count(*) FROM "tab'le""#),
        1,
        "nothing of the refused batches was applied"
    );
    // Within bounds, in one batch: a key's later change may build on its
    // earlier one.
    let out: Vec<String> = c
        .query(
            r#"SELECT outcome FROM sync_apply('"tab''le"', '[{"op":"U","pk":{"]":1},"data":{"v":"a"},"version":2},
                                                      {"op":"U","pk":{"]":1},"data":{"v":"b"},"version":3},
                                                      {"op":"I","pk":{"]":2},"data":{"v":"back"},"version":3}]', 'edge1')"#,
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(out, ["VERSION_WIN", "VERSION_WIN", "VERSION_WIN"]);
}

#[test]
fn a_clock_claimed_in_the_future_is_clamped_to_max_clock_skew() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE "c]" (id int PRIMARY KEY, v text);
           SELECT sync_track('"c]"'); SELECT sync_set_policy('"c]"', 'last_writer_wins');
           INSERT INTO "c]" VALUES (1, 'hub');
           CREATE ROLE peer_role LOGIN;"#,
    )
    .unwrap();
    // Only a superuser sets the bound: a peer's session cannot widen it.
    c.batch_execute("SET ROLE peer_role").unwrap();
    assert_eq!(
        db_error(
            c.batch_execute("SET tributary.max_clock_skew = '10000 d'")
                .unwrap_err()
        )
        .code,
        "42501"
    );
    c.batch_execute("RESET ROLE; SET tributary.max_clock_skew = 0")
        .unwrap();
    let apply = |c: &mut Client, v: &str, ts: &str, origin: &str| -> String {
        let changes = format!(
            r#"[{{"op":"U","pk":{{"id":1}},"data":{{"v":"{v}"}},"version":2,"ts":"{ts}"}}]"#
        );
        c.query_one(
            "SELECT outcome FROM sync_apply('\"c]\"', $1::text::jsonb, $2)",
            &[&changes, &origin],
        )
        .unwrap()
        .get(0)
    };
    // edge1 claims the year 9999; edge2 writes a moment later with an honest
    // clock, on the same revision. Unclamped, edge1 would win forever.
    apply(&mut c, "from 9999", "9999-01-01T00:00:00Z", "edge1");
    let stored = scalar(
        &mut c,
        r#"SELECT max(e.ts) FROM "c]", tributary.colmeta_entries(sync_colmeta) e"#,
    );
    let now = scalar(
        &mut c,
        "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
    );
    assert!(
        stored <= now && stored > now - 60_000_000,
        "{stored} vs {now}"
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    let honest: String = c
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .unwrap()
        .get(0);
    let out = apply(&mut c, "honest", &honest, "edge2");
    assert_eq!(out, "LAST_WRITER_WINS");
    assert_eq!(
        scalar(&mut c, r#"SELECT count(*) FROM "c]" WHERE v = 'honest'"#),
        1,
        "the later honest clock wins"
    );
}

#[test]
fn conflicts_and_parked_changes_show_only_to_roles_that_may_read_their_table() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE "p'a" (id int PRIMARY KEY);
           CREATE TABLE "c]h" (id int PRIMARY KEY, p int REFERENCES "p'a", v text);
           SELECT sync_track('"p''a"'); SELECT sync_track('"c]h"');
           INSERT INTO "p'a" VALUES (1); INSERT INTO "c]h" VALUES (1, 1, 'hub');
           CREATE ROLE nobody LOGIN;"#,
    )
    .unwrap();
    let apply = |c: &mut Client, changes: &str, origin: &str| -> String {
        c.query_one(
            "SELECT outcome FROM sync_apply('\"c]h\"', $1::text::jsonb, $2)",
            &[&changes, &origin],
        )
        .unwrap()
        .get(0)
    };
    apply(
        &mut c,
        r#"[{"op":"U","pk":{"id":1},"data":{"v":"a"},"version":2}]"#,
        "A",
    );
    assert_eq!(
        apply(
            &mut c,
            r#"[{"op":"U","pk":{"id":1},"data":{"v":"b"},"version":2}]"#,
            "B"
        ),
        "MANUAL"
    );
    assert_eq!(
        apply(
            &mut c,
            r#"[{"op":"I","pk":{"id":2},"data":{"p":99,"v":"orphan"},"version":1}]"#,
            "A"
        ),
        "DEFERRED"
    );
    let seen = |c: &mut Client| {
        (
            scalar(c, "SELECT count(*) FROM sync_conflicts"),
            scalar(c, "SELECT count(*) FROM sync_pending"),
        )
    };
    assert_eq!(seen(&mut c), (1, 1));
    c.batch_execute("SET ROLE nobody").unwrap();
    assert_eq!(
        seen(&mut c),
        (0, 0),
        "a role with no privileges sees nothing"
    );
    c.batch_execute(r#"RESET ROLE; GRANT SELECT ON "c]h" TO nobody; SET ROLE nobody"#)
        .unwrap();
    assert_eq!(seen(&mut c), (1, 1), "a reader of the table sees its rows");
}
