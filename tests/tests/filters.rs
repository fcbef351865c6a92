//! Row filters (partial sync), enforced in the hub: a scoped session (its
//! `tributary.claims` set, as the gateway sets it with `sync_act_for_peer`)
//! reads and writes a filtered table only through its filter, exactly:
//! rows that leave it arrive as deletes, rows that enter arrive whole, and a
//! delete reaches only the sessions that could see the row. Run against a
//! real cluster, as the gateway's NOINHERIT role acting for a NOLOGIN
//! device role, with hostile names.

use serde_json::Value;
use tributary_e2e::*;

/// `orders`, filtered by the `tenant` claim. The gateway's login role `gw`
/// acts for the peer `dev` through the NOLOGIN role `device`, which may read
/// and write `orders`.
fn hub(c: &mut Client) {
    c.batch_execute(
        r#"CREATE TABLE orders (id int PRIMARY KEY, tenant text, note text);
           SELECT sync_track('orders');
           SELECT sync_set_filter('orders', $$tenant = sync_claim('tenant')$$);
           CREATE ROLE gw LOGIN NOINHERIT; CREATE ROLE device NOLOGIN; GRANT device TO gw;
           GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO device;
           GRANT EXECUTE ON FUNCTION sync_apply(regclass, jsonb, text) TO device;
           SELECT sync_set_peer('dev', 5, 'device');"#,
    )
    .unwrap();
}

/// A change as a session reads it: (op, key, data).
type Change = (String, String, Option<Value>);

fn version(c: &mut Client) -> i64 {
    scalar(c, "SELECT sync_current_version()")
}

/// Runs `f` in one transaction acting for `dev` with `claims`; with "",
/// as the connection's own role, unscoped.
fn as_dev<T>(
    c: &mut Client,
    claims: &str,
    f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, postgres::Error>,
) -> Result<T, PgErr> {
    let mut tx = c.transaction().unwrap();
    if !claims.is_empty() {
        tx.execute(
            "SELECT sync_act_for_peer('dev', $1::text::jsonb)",
            &[&claims],
        )
        .map_err(db_error)?;
    }
    let out = f(&mut tx).map_err(db_error)?;
    tx.commit().unwrap();
    Ok(out)
}

/// What a session with `claims` reads of `tbl` in [since, until).
fn read(
    c: &mut Client,
    claims: &str,
    tbl: &str,
    since: i64,
    until: i64,
) -> Result<Vec<Change>, PgErr> {
    as_dev(c, claims, |tx| {
        let rows = tx.query(
            "SELECT op, pk::text, data::text FROM sync_changes_since($1, $2, ARRAY[$3::text::regclass])
              ORDER BY pk",
            &[&since, &until, &tbl],
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                let data: Option<String> = r.get(2);
                (
                    r.get(0),
                    r.get(1),
                    data.map(|d| serde_json::from_str(&d).unwrap()),
                )
            })
            .collect())
    })
}

/// The (op, key) pairs of a read.
fn ops(changes: &[Change]) -> Vec<(&str, &str)> {
    changes
        .iter()
        .map(|(op, pk, _)| (op.as_str(), pk.as_str()))
        .collect()
}

/// A payload of `tbl` as a session with `claims` gets it.
fn payload(c: &mut Client, claims: &str, tbl: &str, from: i64) -> Value {
    as_dev(c, claims, |tx| {
        let p: String = tx
            .query_one(
                "SELECT sync_payload($1::text::regclass, $2)::text",
                &[&tbl, &from],
            )?
            .get(0);
        Ok(serde_json::from_str(&p).unwrap())
    })
    .unwrap()
}

fn apply(c: &mut Client, claims: &str, tbl: &str, changes: &str) -> Result<Vec<String>, PgErr> {
    as_dev(c, claims, |tx| {
        let rows = tx.query(
            "SELECT outcome FROM sync_apply($1::text::regclass, $2::text::jsonb, 'dev')",
            &[&tbl, &changes],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    })
}

const A: &str = r#"{"tenant": "a"}"#;
const B: &str = r#"{"tenant": "b"}"#;
const C: &str = r#"{"tenant": "c"}"#;

#[test]
fn a_tenant_never_sees_a_row_or_a_deleted_key_of_another_tenant() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    hub(&mut c);
    c.batch_execute(
        "INSERT INTO orders VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'a', 'z'), (4, 'b', 'w')",
    )
    .unwrap();
    let mut gw = db.connect_as("gw");
    let v0 = version(&mut c);
    let full = read(&mut gw, A, "orders", 0, v0).unwrap();
    assert_eq!(ops(&full), [("I", r#"{"id": 1}"#), ("I", r#"{"id": 3}"#)]);
    assert_eq!(
        full[0].2,
        Some(serde_json::json!({"id": 1, "tenant": "a", "note": "x"}))
    );
    let p = payload(&mut gw, A, "orders", 0);
    assert_eq!(p["Metadata"]["Sync"]["Type"], "Full");
    let ids: Vec<i64> = p["Data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 3]);

    // B's rows change and go; A learns nothing of them, in a diff either.
    c.batch_execute("UPDATE orders SET note = 'y2' WHERE id = 2; DELETE FROM orders WHERE id = 4;")
        .unwrap();
    c.batch_execute("UPDATE orders SET note = 'x2' WHERE id = 1")
        .unwrap();
    let v1 = version(&mut c);
    let diff = read(&mut gw, A, "orders", v0, v1).unwrap();
    assert_eq!(ops(&diff), [("U", r#"{"id": 1}"#)]);
    let p = payload(&mut gw, A, "orders", v0);
    assert_eq!(p["Metadata"]["Sync"]["Type"], "Diff");
    assert_eq!(
        p["Data"],
        serde_json::json!([{"$operation": "U", "id": 1, "tenant": "a", "note": "x2"}])
    );
    // B gets its own, deletes included; paged reads agree.
    assert_eq!(
        ops(&read(&mut gw, B, "orders", v0, v1).unwrap()),
        [("U", r#"{"id": 2}"#), ("D", r#"{"id": 4}"#)]
    );
    let paged: Vec<String> = as_dev(&mut gw, B, |tx| {
        let first = tx.query(
            "SELECT pk::text FROM sync_payload_rows('orders', $1, $2, page_size => 1)",
            &[&v0, &v1],
        )?;
        let last: String = first[0].get(0);
        let next = tx.query(
            "SELECT pk::text FROM sync_payload_rows('orders', $1, $2, $3::text::jsonb, 1)",
            &[&v0, &v1, &last],
        )?;
        Ok(first.iter().chain(next.iter()).map(|r| r.get(0)).collect())
    })
    .unwrap();
    assert_eq!(paged, [r#"{"id": 2}"#, r#"{"id": 4}"#]);
    // A session scoped without the claim the filter reads sees nothing.
    assert!(read(&mut gw, "{}", "orders", 0, v1).unwrap().is_empty());
}

#[test]
fn a_row_leaving_the_filter_arrives_as_a_delete_and_one_entering_arrives_whole() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    hub(&mut c);
    c.batch_execute("INSERT INTO orders VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'b', 'z')")
        .unwrap();
    let mut gw = db.connect_as("gw");
    let v0 = version(&mut c);
    c.batch_execute("UPDATE orders SET tenant = 'b', note = 'moved' WHERE id = 1")
        .unwrap();
    let v1 = version(&mut c);
    let a = read(&mut gw, A, "orders", v0, v1).unwrap();
    assert_eq!(ops(&a), [("D", r#"{"id": 1}"#)]);
    assert_eq!(a[0].2, None, "a move-out carries no data");
    let changed: Option<Vec<String>> = as_dev(&mut gw, A, |tx| {
        Ok(tx
            .query_one(
                "SELECT changed_columns FROM sync_changes_since($1, $2)",
                &[&v0, &v1],
            )?
            .get(0))
    })
    .unwrap();
    assert_eq!(changed, None);
    let b = read(&mut gw, B, "orders", v0, v1).unwrap();
    assert_eq!(ops(&b), [("U", r#"{"id": 1}"#)]);
    assert_eq!(
        b[0].2,
        Some(serde_json::json!({"id": 1, "tenant": "b", "note": "moved"})),
        "whole"
    );
    let p = payload(&mut gw, A, "orders", v0);
    assert_eq!(p["Data"], serde_json::json!([{"$operation": "D", "id": 1}]));

    // B -> A -> B in two transactions of one window: A could have had it in
    // between, so it gets a delete (of a key it may not hold: a no-op); B
    // gets the row. In one transaction, nobody could: A gets nothing.
    c.batch_execute("UPDATE orders SET tenant = 'a' WHERE id = 2")
        .unwrap();
    c.batch_execute("UPDATE orders SET tenant = 'b' WHERE id = 2")
        .unwrap();
    c.batch_execute("BEGIN; UPDATE orders SET tenant = 'a' WHERE id = 3; UPDATE orders SET tenant = 'b' WHERE id = 3; COMMIT;")
        .unwrap();
    let v2 = version(&mut c);
    assert_eq!(
        ops(&read(&mut gw, A, "orders", v1, v2).unwrap()),
        [("D", r#"{"id": 2}"#)]
    );
    assert_eq!(
        ops(&read(&mut gw, B, "orders", v1, v2).unwrap()),
        [("U", r#"{"id": 2}"#), ("U", r#"{"id": 3}"#)]
    );
    // A reader of C never had either: nothing at all.
    assert!(read(&mut gw, C, "orders", v0, v2).unwrap().is_empty());
}

#[test]
fn a_delete_reaches_only_the_tenants_that_could_see_the_row() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    hub(&mut c);
    c.batch_execute("INSERT INTO orders VALUES (1, 'a', 'x'), (2, 'a', 'y'), (3, 'a', 'z')")
        .unwrap();
    let mut gw = db.connect_as("gw");
    let v0 = version(&mut c);
    // 1: deleted in A. 2: moved to B, then deleted: A and B could both see it.
    // 3: deleted in A, re-created in C, deleted again: the second tombstone
    // hides the first incarnation, which is kept (tributary.moves).
    c.batch_execute("DELETE FROM orders WHERE id = 1").unwrap();
    c.batch_execute("UPDATE orders SET tenant = 'b' WHERE id = 2")
        .unwrap();
    c.batch_execute("DELETE FROM orders WHERE id = 2").unwrap();
    c.batch_execute("DELETE FROM orders WHERE id = 3").unwrap();
    c.batch_execute("INSERT INTO orders VALUES (3, 'c', 'again')")
        .unwrap();
    c.batch_execute("DELETE FROM orders WHERE id = 3").unwrap();
    let v1 = version(&mut c);
    assert_eq!(
        ops(&read(&mut gw, A, "orders", v0, v1).unwrap()),
        [
            ("D", r#"{"id": 1}"#),
            ("D", r#"{"id": 2}"#),
            ("D", r#"{"id": 3}"#)
        ]
    );
    assert_eq!(
        ops(&read(&mut gw, B, "orders", v0, v1).unwrap()),
        [("D", r#"{"id": 2}"#)]
    );
    assert_eq!(
        ops(&read(&mut gw, C, "orders", v0, v1).unwrap()),
        [("D", r#"{"id": 3}"#)]
    );
    assert!(read(&mut gw, r#"{"tenant": "d"}"#, "orders", v0, v1)
        .unwrap()
        .is_empty());
    // A row created and deleted in one transaction was never seen: its
    // tenant learns nothing, and a full read never carries deletes.
    c.batch_execute("BEGIN; INSERT INTO orders VALUES (5, 'b', 'brief'); DELETE FROM orders WHERE id = 5; COMMIT;")
        .unwrap();
    let v2 = version(&mut c);
    assert!(read(&mut gw, B, "orders", v1, v2).unwrap().is_empty());
    assert!(read(&mut gw, A, "orders", 0, v2).unwrap().is_empty());
    // A key re-created outside A's filter: a reader of A that still held
    // it (at v0) is told it is gone; one that read its delete already (at
    // v2) holds nothing of it and is told nothing; B gets the new row.
    c.batch_execute("INSERT INTO orders VALUES (1, 'b', 'back')")
        .unwrap();
    let v3 = version(&mut c);
    assert_eq!(
        ops(&read(&mut gw, A, "orders", v0, v3).unwrap()),
        [
            ("D", r#"{"id": 1}"#),
            ("D", r#"{"id": 2}"#),
            ("D", r#"{"id": 3}"#)
        ]
    );
    assert!(read(&mut gw, A, "orders", v2, v3).unwrap().is_empty());
    assert_eq!(
        ops(&read(&mut gw, B, "orders", v2, v3).unwrap()),
        [("I", r#"{"id": 1}"#)]
    );
    assert!(read(&mut gw, C, "orders", v2, v3).unwrap().is_empty());
}

#[test]
fn purging_history_past_a_readers_version_forces_a_full_resync() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    hub(&mut c);
    c.batch_execute("INSERT INTO orders VALUES (1, 'a', 'x')")
        .unwrap();
    let mut gw = db.connect_as("gw");
    let v0 = version(&mut c);
    c.batch_execute("UPDATE orders SET tenant = 'b' WHERE id = 1")
        .unwrap();
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM tributary.moves"), 1);
    std::thread::sleep(std::time::Duration::from_millis(20));
    c.batch_execute("SET tributary.retention = '1 millisecond'")
        .unwrap();
    let purged = scalar(&mut c, "SELECT sync_cleanup()");
    assert_eq!(purged, 1, "the move is purged: nothing else is old");
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM tributary.moves"), 0);
    let e = read(&mut gw, A, "orders", v0, version(&mut c)).unwrap_err();
    assert_eq!(e.code, "TB002", "{e:?}");
    let p = payload(&mut gw, A, "orders", v0);
    assert_eq!(p["Metadata"]["Sync"]["Type"], "Full");
    assert_eq!(p["Metadata"]["Sync"]["ReasonCode"], 2);
    assert_eq!(
        p["Data"],
        serde_json::json!([]),
        "A holds nothing of B's now"
    );
}

#[test]
fn writes_outside_the_filter_are_refused_whole() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    hub(&mut c);
    c.batch_execute(
        r#"INSERT INTO orders VALUES (1, 'a', 'x'), (2, 'b', 'y');
           CREATE TABLE customers (id int PRIMARY KEY);
           CREATE TABLE lines (id int PRIMARY KEY, customer int REFERENCES customers, tenant text);
           SELECT sync_track('customers'), sync_track('lines');
           SELECT sync_set_filter('lines', $$tenant = sync_claim('tenant')$$);
           GRANT SELECT, INSERT, UPDATE, DELETE ON customers, lines TO device;"#,
    )
    .unwrap();
    let mut gw = db.connect_as("gw");
    let ok = r#"{"op":"I","pk":{"id":10},"data":{"id":10,"tenant":"a"},"version":1}"#;
    let cases = [
        (
            r#"{"op":"I","pk":{"id":11},"data":{"id":11,"tenant":"b"},"version":1}"#,
            "an insert outside",
        ),
        (
            r#"{"op":"U","pk":{"id":2},"data":{"note":"mine"},"version":2}"#,
            "an update of an outside row",
        ),
        (
            r#"{"op":"U","pk":{"id":2},"data":{"tenant":"a"},"version":2}"#,
            "taking an outside row in",
        ),
        (
            r#"{"op":"D","pk":{"id":2},"version":2}"#,
            "a delete of an outside row",
        ),
        (
            r#"{"op":"U","pk":{"id":1},"data":{"tenant":"b"},"version":2}"#,
            "a move out",
        ),
    ];
    for (bad, what) in cases {
        let e = apply(&mut gw, A, "orders", &format!("[{ok}, {bad}]")).unwrap_err();
        assert_eq!(e.code, "42501", "{what}: {e:?}");
        assert!(e.message.contains("change #2"), "{what}: {e:?}");
        assert!(
            e.detail.as_deref().unwrap().contains("Change #2 (key"),
            "{what}: {e:?}"
        );
        assert!(
            e.hint
                .as_deref()
                .unwrap()
                .contains("outside the filter of this peer"),
            "{what}: {e:?}"
        );
    }
    let rows: String = c
        .query_one(
            "SELECT string_agg(id || tenant || note, ',' ORDER BY id) FROM orders",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, "1ax,2by", "nothing of any batch was applied");
    assert_eq!(
        apply(&mut gw, A, "orders", &format!("[{ok}]")).unwrap(),
        ["NEW_RECORD"]
    );

    // A change parked for its missing parent: outside the filter, refused;
    // inside, parked with the session's claims, and replayed under them.
    let line = |id: i64, tenant: &str| {
        format!(
            r#"[{{"op":"I","pk":{{"id":{id}}},"data":{{"id":{id},"customer":7,"tenant":"{tenant}"}},"version":1}}]"#
        )
    };
    let e = apply(&mut gw, A, "lines", &line(1, "b")).unwrap_err();
    assert_eq!(e.code, "42501", "{e:?}");
    assert!(e.detail.as_deref().unwrap().contains("parked"), "{e:?}");
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM tributary.pending"), 0);
    assert_eq!(
        apply(&mut gw, A, "lines", &line(2, "a")).unwrap(),
        ["DEFERRED"]
    );
    let kept: String = c
        .query_one("SELECT claims FROM tributary.pending", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        serde_json::from_str::<Value>(&kept).unwrap(),
        serde_json::json!({"tenant": "a"})
    );
    // The parent arrives from an unscoped writer; the replay acts as the
    // parker with its claims, so its filter holds there too.
    c.batch_execute("SELECT * FROM sync_apply('customers', '[{\"op\":\"I\",\"pk\":{\"id\":7},\"data\":{\"id\":7},\"version\":1}]', 'dev')")
        .unwrap();
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM lines WHERE id = 2"), 1);
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM tributary.pending"), 0);
    // Unscoped, the same writes are governed by privileges alone.
    c.batch_execute(r#"SELECT * FROM sync_apply('orders', '[{"op":"U","pk":{"id":2},"data":{"note":"hub"},"version":2}]', 'dev')"#)
        .unwrap();
}

#[test]
fn a_change_of_filter_makes_scoped_readers_resync_and_no_one_else() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    hub(&mut c);
    c.batch_execute("INSERT INTO orders VALUES (1, 'a', 'x'), (2, 'b', 'public')")
        .unwrap();
    let mut gw = db.connect_as("gw");
    let v0 = version(&mut c);
    c.batch_execute(
        "SELECT sync_set_filter('orders', $$tenant = sync_claim('tenant') OR note = 'public'$$)",
    )
    .unwrap();
    let v1 = version(&mut c);
    let p = payload(&mut gw, A, "orders", v0);
    assert_eq!(p["Metadata"]["Sync"]["Type"], "Full");
    assert_eq!(p["Metadata"]["Sync"]["ReasonCode"], 6);
    let ids: Vec<i64> = p["Data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2], "the new filter's rows");
    let e = read(&mut gw, A, "orders", v0, v1).unwrap_err();
    assert_eq!(e.code, "TB002", "{e:?}");
    assert!(
        e.detail
            .as_deref()
            .unwrap()
            .contains("row filter of orders was set to"),
        "{e:?}"
    );
    assert!(
        e.hint.as_deref().unwrap().contains("sync_changes_since(0"),
        "{e:?}"
    );
    // Unscoped readers are not concerned.
    assert!(read(&mut c, "", "orders", v0, v1).unwrap().is_empty());
    let p = payload(&mut c, "", "orders", v0);
    assert_eq!(p["Metadata"]["Sync"]["Type"], "Diff");
    // After the change, diffs go on; setting the same filter again is no change.
    assert!(read(&mut gw, A, "orders", v1, v1).unwrap().is_empty());
    c.batch_execute(
        "SELECT sync_set_filter('orders', $$tenant = sync_claim('tenant') OR note = 'public'$$)",
    )
    .unwrap();
    assert!(read(&mut gw, A, "orders", v1, version(&mut c))
        .unwrap()
        .is_empty());
    // Removing it is a change too; sync_filters keeps the row, filter NULL.
    c.batch_execute("SELECT sync_set_filter('orders', NULL)")
        .unwrap();
    let v2 = version(&mut c);
    let p = payload(&mut gw, B, "orders", v1);
    assert_eq!(p["Metadata"]["Sync"]["ReasonCode"], 6);
    assert_eq!(
        read(&mut gw, B, "orders", v1, v2).unwrap_err().code,
        "TB002"
    );
    let (filter, since): (Option<String>, i64) = c
        .query_one(
            "SELECT filter, since_version FROM sync_filters WHERE tbl = 'orders'::regclass",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(filter, None);
    assert!(since >= v1 && since < v2, "{since} in [{v1}, {v2})");
    assert_eq!(
        ops(&read(&mut gw, C, "orders", 0, v2).unwrap()).len(),
        2,
        "unfiltered now"
    );
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'zzz_tributary_moves'"
        ),
        0
    );
}

#[test]
fn setting_a_filter_is_checked_and_for_the_tables_owner_only() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    hub(&mut c);
    c.batch_execute(
        r#"CREATE ROLE own LOGIN; CREATE ROLE other LOGIN;
           CREATE TABLE mine (id int PRIMARY KEY, tenant text); ALTER TABLE mine OWNER TO own;
           SELECT sync_track('mine');
           CREATE TABLE plain (id int PRIMARY KEY);
           GRANT EXECUTE ON FUNCTION sync_set_filter(regclass, text) TO own, other;"#,
    )
    .unwrap();
    for (filter, code) in [
        ("tenant = 'a'; DROP TABLE orders", "22023"),
        ("true -- x", "22023"),
        ("true) OR (true", "22023"),
        ("nosuch = 1", "42703"),
        ("tenant = ", "42601"),
        ("sync_version > 1", "22023"),
        ("to_jsonb(t) ->> 'tenant' = 'a'", "22023"),
        ("now()", "42846"),
    ] {
        let e = expect_error(
            &mut c,
            &format!("SELECT sync_set_filter('orders', $f${filter}$f$)"),
            code,
        );
        assert!(e.message.contains("filter"), "{filter}: {e:?}");
    }
    expect_error(&mut c, "SELECT sync_set_filter('plain', 'true')", "TB003");
    // A table's owner may (its role is no superuser: the state is written as
    // Tributary's owner); another role may not, even granted the function.
    let mut other = db.connect_as("other");
    expect_error(
        &mut other,
        "SELECT sync_set_filter('mine', $$tenant = 'x'$$)",
        "42501",
    );
    let e = db_error(
        other
            .batch_execute("INSERT INTO tributary.filters VALUES ('mine', 'true', '{}', 1)")
            .unwrap_err(),
    );
    assert_eq!(e.code, "42501");
    let e = db_error(
        other
            .batch_execute("SELECT tributary._store_filter('mine', 'true', '{}')")
            .unwrap_err(),
    );
    assert_eq!(e.code, "42501", "{e:?}");
    let mut own = db.connect_as("own");
    own.batch_execute("SELECT sync_set_filter('mine', $$tenant = sync_claim('tenant')$$)")
        .unwrap();
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM sync_filters WHERE tbl = 'mine'::regclass AND columns = '{tenant}'"),
        1
    );
    // Readable by the table's readers only.
    assert_eq!(scalar(&mut other, "SELECT count(*) FROM sync_filters"), 0);
}

#[test]
fn a_column_a_filter_reads_cannot_be_renamed_dropped_or_retyped() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    hub(&mut c);
    let e = expect_error(
        &mut c,
        "ALTER TABLE orders RENAME COLUMN tenant TO owner",
        "TB007",
    );
    assert!(e.message.contains("read by its row filter"), "{e:?}");
    assert!(
        e.hint.as_deref().unwrap().contains("sync_set_filter"),
        "{e:?}"
    );
    expect_error(
        &mut c,
        "ALTER TABLE orders DROP COLUMN tenant CASCADE",
        "TB007",
    );
    // Without CASCADE, and retyped: PostgreSQL refuses, naming the trigger.
    let e = db_error(
        c.batch_execute("ALTER TABLE orders DROP COLUMN tenant")
            .unwrap_err(),
    );
    assert_eq!(e.code, "2BP01");
    assert!(
        e.detail.as_deref().unwrap().contains("zzz_tributary_moves"),
        "{e:?}"
    );
    let e = db_error(
        c.batch_execute("ALTER TABLE orders ALTER COLUMN tenant TYPE varchar(9)")
            .unwrap_err(),
    );
    assert_eq!(e.code, "0A000");
    assert!(
        e.detail.as_deref().unwrap().contains("zzz_tributary_moves"),
        "{e:?}"
    );
    // Other columns, and the key, are followed as before; moves keep working.
    c.batch_execute("ALTER TABLE orders RENAME COLUMN note TO remark; ALTER TABLE orders RENAME COLUMN id TO ident;")
        .unwrap();
    c.batch_execute("INSERT INTO orders VALUES (1, 'a', 'x')")
        .unwrap();
    c.batch_execute("UPDATE orders SET tenant = 'b' WHERE ident = 1")
        .unwrap();
    assert_eq!(
        c.query_one("SELECT pk::text FROM tributary.moves", &[])
            .unwrap()
            .get::<_, String>(0),
        r#"{"ident": 1}"#
    );
    // Removed, the filter no longer holds the column.
    c.batch_execute(
        "SELECT sync_set_filter('orders', NULL); ALTER TABLE orders RENAME COLUMN tenant TO owner;",
    )
    .unwrap();
}

#[test]
fn hostile_identifiers_are_quoted_everywhere_a_filter_goes() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE "tab'le" (id int PRIMARY KEY, """" text, t text);
           SELECT sync_track('"tab''le"');
           SELECT sync_set_filter('"tab''le"', $$"""" = sync_claim('q"t') AND t IS DISTINCT FROM 'no'$$);
           INSERT INTO "tab'le" VALUES (1, 'x''y', 'a'), (2, 'z', 'b');
           CREATE ROLE gw LOGIN NOINHERIT; CREATE ROLE device NOLOGIN; GRANT device TO gw;
           GRANT SELECT, INSERT, UPDATE, DELETE ON "tab'le" TO device;
           GRANT EXECUTE ON FUNCTION sync_apply(regclass, jsonb, text) TO device;
           SELECT sync_set_peer('dev', 5, 'device');"#,
    )
    .unwrap();
    let tbl = "\"tab'le\"";
    let x = r#"{"q\"t": "x'y"}"#;
    let z = r#"{"q\"t": "z"}"#;
    let mut gw = db.connect_as("gw");
    let v0 = version(&mut c);
    assert_eq!(
        ops(&read(&mut gw, x, tbl, 0, v0).unwrap()),
        [("I", r#"{"id": 1}"#)]
    );
    c.batch_execute(
        r#"UPDATE "tab'le" SET """" = 'z' WHERE id = 1; DELETE FROM "tab'le" WHERE id = 2;"#,
    )
    .unwrap();
    let v1 = version(&mut c);
    assert_eq!(
        ops(&read(&mut gw, x, tbl, v0, v1).unwrap()),
        [("D", r#"{"id": 1}"#)]
    );
    assert_eq!(
        ops(&read(&mut gw, z, tbl, v0, v1).unwrap()),
        [("U", r#"{"id": 1}"#), ("D", r#"{"id": 2}"#)]
    );
    let row = |c: &mut Client, claims: &str| -> i64 {
        as_dev(c, claims, |tx| {
            Ok(tx
                .query(r#"SELECT * FROM sync_row('"tab''le"', '{"id": 1}')"#, &[])?
                .len() as i64)
        })
        .unwrap()
    };
    assert_eq!((row(&mut gw, x), row(&mut gw, z)), (0, 1));
    let e = apply(
        &mut gw,
        x,
        tbl,
        r#"[{"op":"I","pk":{"id":3},"data":{"id":3,"\"":"z"},"version":1}]"#,
    )
    .unwrap_err();
    assert_eq!(e.code, "42501");
    assert_eq!(
        apply(
            &mut gw,
            x,
            tbl,
            r#"[{"op":"I","pk":{"id":3},"data":{"id":3,"\"":"x'y"},"version":1}]"#
        )
        .unwrap(),
        ["NEW_RECORD"]
    );
    let changed: Vec<(i32, String)> = c
        .query(
            "SELECT claims_index, tbl::text FROM sync_changed_for($1, $2, ARRAY[$3::text::regclass], ARRAY[$4::text::jsonb, $5::text::jsonb])",
            &[&v0, &v1, &tbl, &x, &z],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(changed, [(1, tbl.to_string()), (2, tbl.to_string())]);
}

#[test]
fn sync_row_gives_a_scoped_session_only_rows_its_filter_admits() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    hub(&mut c);
    c.batch_execute("INSERT INTO orders VALUES (1, 'a', 'x'), (2, 'b', 'y')")
        .unwrap();
    let mut gw = db.connect_as("gw");
    let rows = |gw: &mut Client, claims: &str, id: i32, lock: bool| -> usize {
        as_dev(gw, claims, |tx| {
            Ok(tx
                .query(
                    "SELECT * FROM sync_row('orders', jsonb_build_object('id', $1::int), $2)",
                    &[&id, &lock],
                )?
                .len())
        })
        .unwrap()
    };
    assert_eq!(
        (rows(&mut gw, A, 1, false), rows(&mut gw, A, 2, false)),
        (1, 0)
    );
    assert_eq!(
        (rows(&mut gw, B, 1, true), rows(&mut gw, B, 2, true)),
        (0, 1)
    );
    assert_eq!(
        rows(&mut c, "", 2, false),
        1,
        "unscoped: by privileges alone"
    );
}

#[test]
fn sync_changed_for_names_exactly_the_claims_that_would_read_a_change() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    hub(&mut c);
    c.batch_execute(
        r#"INSERT INTO orders VALUES (1, 'a', 'x'), (2, 'c', 'y'), (3, 'e', 'z');
           CREATE TABLE open_t (id int PRIMARY KEY); SELECT sync_track('open_t');
           CREATE TABLE rls_t (id int PRIMARY KEY, tenant text); SELECT sync_track('rls_t');
           ALTER TABLE rls_t ENABLE ROW LEVEL SECURITY;
           CREATE POLICY mine ON rls_t USING (tenant = sync_claim('tenant'));
           GRANT SELECT ON open_t, rls_t TO device;
           CREATE ROLE watcher LOGIN IN ROLE device;"#,
    )
    .unwrap();
    let v0 = version(&mut c);
    // A move out of a (to b), a delete in c, a write of another tenant's
    // row (e), an unfiltered table, and an RLS-only table.
    c.batch_execute(
        "UPDATE orders SET tenant = 'b' WHERE id = 1; DELETE FROM orders WHERE id = 2;
         UPDATE orders SET note = 'z2' WHERE id = 3; INSERT INTO open_t VALUES (1);
         INSERT INTO rls_t VALUES (1, 'd');",
    )
    .unwrap();
    let v1 = version(&mut c);
    let claims = ["a", "b", "c", "d", "f"].map(|t| format!(r#"{{"tenant": "{t}"}}"#));
    let mut watcher = db.connect_as("watcher");
    let got: Vec<(i32, String)> = watcher
        .query(
            "SELECT claims_index, tbl::text FROM sync_changed_for($1, $2, ARRAY['orders', 'open_t', 'rls_t']::regclass[],
                                                            $3::text[]::jsonb[])",
            &[&v0, &v1, &claims.to_vec()],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Exactly the (claims, table) pairs a scoped read returns rows for.
    let mut want = Vec::new();
    for (i, cl) in claims.iter().enumerate() {
        for t in ["orders", "open_t", "rls_t"] {
            let rows = as_dev(&mut watcher, "", |tx| {
                tx.execute("SELECT set_config('tributary.claims', $1, true)", &[cl])?;
                Ok(tx
                    .query(
                        "SELECT 1 FROM sync_changes_since($1, $2, ARRAY[$3::text::regclass])",
                        &[&v0, &v1, &t],
                    )?
                    .len())
            })
            .unwrap();
            if rows > 0 {
                want.push((i as i32 + 1, t.to_string()));
            }
        }
    }
    assert_eq!(got, want);
    let orders: Vec<i32> = got
        .iter()
        .filter(|(_, t)| t == "orders")
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        orders,
        [1, 2, 3],
        "a (move-out), b (move-in), c (delete); not e's writer's neighbours"
    );
    assert!(got.contains(&(4, "rls_t".to_string())) && !got.contains(&(1, "rls_t".to_string())));
    assert_eq!(got.iter().filter(|(_, t)| t == "open_t").count(), 5);
    // The claims setting is the caller's again afterwards; a full window
    // counts rows only; a filter change since `since` wakes everyone.
    assert_eq!(
        watcher
            .query_one("SELECT current_setting('tributary.claims')", &[])
            .unwrap()
            .get::<_, String>(0),
        ""
    );
    c.batch_execute(
        "SELECT sync_set_filter('orders', $$tenant = sync_claim('tenant') OR note = 'z2'$$)",
    )
    .unwrap();
    let v2 = version(&mut c);
    let n = |w: &mut Client, since: i64| -> i64 {
        w.query_one(
            "SELECT count(*) FROM sync_changed_for($1, $2, ARRAY['orders'::regclass], $3::text[]::jsonb[])",
            &[&since, &v2, &claims.to_vec()],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(n(&mut watcher, v1), 5);
    assert_eq!(
        n(&mut watcher, 0),
        5,
        "a full read: e's row is public now, everyone reads it"
    );
    for (sql, code) in [
        (
            "SELECT * FROM sync_changed_for(NULL, 1, '{}', '{}')",
            "22004",
        ),
        ("SELECT * FROM sync_changed_for(5, 1, '{}', '{}')", "22023"),
        (
            "SELECT * FROM sync_changed_for(0, sync_current_version() + 5, '{}', '{}')",
            "TB001",
        ),
        (
            "SELECT * FROM sync_changed_for(0, 1, ARRAY['pg_class'::regclass], '{}')",
            "TB003",
        ),
        (
            "SELECT * FROM sync_changed_for(0, 1, '{}', ARRAY['[1]'::jsonb])",
            "22023",
        ),
    ] {
        expect_error(&mut c, sql, code);
    }
}

#[test]
fn unfiltered_tables_and_unscoped_sessions_read_and_write_as_before() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    hub(&mut c);
    c.batch_execute(
        r#"CREATE TABLE open_t (id int PRIMARY KEY, tenant text); SELECT sync_track('open_t');
           GRANT SELECT, INSERT, UPDATE, DELETE ON open_t TO device;
           INSERT INTO open_t VALUES (1, 'a'), (2, 'b');
           INSERT INTO orders VALUES (1, 'a', 'x'), (2, 'b', 'y');"#,
    )
    .unwrap();
    let mut gw = db.connect_as("gw");
    let v0 = version(&mut c);
    assert_eq!(read(&mut gw, A, "open_t", 0, v0).unwrap().len(), 2);
    assert_eq!(read(&mut c, "", "orders", 0, v0).unwrap().len(), 2);
    c.batch_execute("UPDATE open_t SET tenant = 'c'; UPDATE orders SET tenant = 'c' WHERE id = 1; DELETE FROM open_t WHERE id = 2;")
        .unwrap();
    let v1 = version(&mut c);
    assert_eq!(
        ops(&read(&mut c, "", "orders", v0, v1).unwrap()),
        [("U", r#"{"id": 1}"#)],
        "unscoped: the row as it is"
    );
    assert_eq!(
        ops(&read(&mut gw, B, "open_t", v0, v1).unwrap()),
        [("U", r#"{"id": 1}"#), ("D", r#"{"id": 2}"#)]
    );
    assert_eq!(
        apply(
            &mut gw,
            A,
            "open_t",
            r#"[{"op":"I","pk":{"id":3},"data":{"id":3,"tenant":"z"},"version":1}]"#
        )
        .unwrap(),
        ["NEW_RECORD"]
    );
    // Only the filtered table has the move trigger, and its delete trigger keeps images.
    let triggers: Vec<(String, String)> = c
        .query(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgname = 'zzz_tributary_moves'
              OR (tgname = 'zzz_tributary_delete' AND pg_get_triggerdef(oid) LIKE '%''''%') ORDER BY 1, 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        triggers,
        [
            ("orders".into(), "zzz_tributary_delete".into()),
            ("orders".into(), "zzz_tributary_moves".into())
        ]
    );
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) FROM tributary.moves WHERE relid = 'open_t'::regclass"
        ),
        0
    );
    // Untracking a filtered table takes its filter, moves and trigger with it.
    c.batch_execute("SELECT sync_untrack('orders')").unwrap();
    assert_eq!(
        scalar(
            &mut c,
            "SELECT (SELECT count(*) FROM tributary.filters) + (SELECT count(*) FROM tributary.moves)
                    + (SELECT count(*) FROM pg_trigger WHERE tgname = 'zzz_tributary_moves')"
        ),
        0
    );
}
