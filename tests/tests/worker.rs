//! The worker binary end to end: a throwaway cluster, a non-superuser
//! REPLICATION role, the real `tributary-worker run`, and the queue read
//! back with SQL.

use serde_json::{json, Value};
use std::time::Duration;
use tributary_e2e::worker::*;
use tributary_e2e::*;

const QUEUE: &str =
    "[[destination]]\nname = \"audit\"\nkind = \"queue\"\ntables = [\"public.*\"]\n";
const T: Duration = Duration::from_secs(60);

/// The queue's rows in (lsn, ord) order: (op, tbl, pk, data, origin).
fn queue_rows(c: &mut Client, queue: &str) -> Vec<(String, String, Value, Value, Option<String>)> {
    c.query(
        &format!(
            "SELECT op, tbl, coalesce(pk, 'null')::text, coalesce(data, 'null')::text, origin
               FROM tributary.\"queue_{queue}\" ORDER BY lsn, ord"
        ),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| {
        let j = |i: usize| serde_json::from_str::<Value>(r.get::<_, &str>(i)).unwrap();
        (r.get(0), r.get(1), j(2), j(3), r.get(4))
    })
    .collect()
}

fn count(c: &mut Client, queue: &str) -> i64 {
    scalar(
        c,
        &format!("SELECT count(*) FROM tributary.\"queue_{queue}\""),
    )
}

#[test]
fn changes_reach_the_queue_whole_in_commit_order_with_typed_values() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE items (id int PRIMARY KEY, v text, n numeric, at timestamptz, tags int[], doc jsonb, ok boolean);
           CREATE TABLE "tab'le" ("]" int PRIMARY KEY, """" text);
           SELECT sync_track('items'); SELECT sync_track('"tab''le"');
           CREATE TABLE untracked (id int PRIMARY KEY);"#,
    )
    .unwrap();
    setup_worker_role(&db, &["audit"]);
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", QUEUE), &[]);
    // The slot is created on the first run; writes before it are not owed.
    w.until(T, "the slot", || {
        scalar(
            &mut c,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'w'",
        ) == 1
    });

    c.batch_execute(
        "INSERT INTO items VALUES (1, 'one', 12345678901234567890.50, '2024-01-02 03:04:05.25+00', '{1,NULL,3}', '{\"k\": [1, 2]}', true)",
    )
    .unwrap();
    c.batch_execute(
        r#"BEGIN;
           INSERT INTO items (id, v) VALUES (2, 'two'), (3, 'three');
           UPDATE items SET v = 'uno' WHERE id = 1;
           INSERT INTO "tab'le" VALUES (7, 'q"uote');
           INSERT INTO untracked VALUES (1);
           COMMIT;"#,
    )
    .unwrap();
    c.batch_execute("BEGIN; INSERT INTO items (id, v) VALUES (99, 'rolled back'); ROLLBACK;")
        .unwrap();
    c.batch_execute("DELETE FROM items WHERE id = 2").unwrap();
    c.batch_execute("UPDATE items SET id = 30 WHERE id = 3")
        .unwrap();
    c.batch_execute(r#"TRUNCATE "tab'le""#).unwrap();

    w.until(T, "9 queue rows", || count(&mut c, "audit") >= 9);
    std::thread::sleep(Duration::from_millis(300));
    let rows = queue_rows(&mut c, "audit");
    let brief: Vec<(String, String, Value)> = rows
        .iter()
        .map(|r| (r.0.clone(), r.1.clone(), r.2.clone()))
        .collect();
    assert_eq!(
        brief,
        vec![
            ("I".into(), "public.items".into(), json!({"id": 1})),
            ("I".into(), "public.items".into(), json!({"id": 2})),
            ("I".into(), "public.items".into(), json!({"id": 3})),
            ("U".into(), "public.items".into(), json!({"id": 1})),
            ("I".into(), r#"public."tab'le""#.into(), json!({"]": 7})),
            ("D".into(), "public.items".into(), json!({"id": 2})),
            // A changed key: the old key goes, the row comes under the new.
            ("D".into(), "public.items".into(), json!({"id": 3})),
            ("U".into(), "public.items".into(), json!({"id": 30})),
            ("T".into(), r#"public."tab'le""#.into(), Value::Null),
        ]
    );
    // Values as to_jsonb shows them, without the tracking columns.
    let want: String = c
        .query_one(
            "SELECT (to_jsonb(i) - '{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[]
               || '{\"v\": \"one\"}')::text
               FROM items i WHERE id = 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows[0].3, serde_json::from_str::<Value>(&want).unwrap());
    // Numbers are exact (jsonb keeps numeric digits).
    let n: String = c
        .query_one(
            "SELECT data ->> 'n' FROM tributary.queue_audit WHERE op = 'I' AND pk = '{\"id\": 1}'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, "12345678901234567890.50");
    assert_eq!(rows[4].3, json!({"]": 7, "\"": "q\"uote"}));
    assert_eq!(rows[5].3, Value::Null, "a delete carries the key only");
    // Local writes have no origin.
    assert!(rows.iter().all(|r| r.4.is_none()));
    // One source transaction, one commit LSN: the four changes of the
    // second transaction share it, in order.
    let lsns: Vec<(String, i32)> = c
        .query(
            "SELECT lsn::text, ord FROM tributary.queue_audit ORDER BY lsn, ord",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(lsns[1..5].iter().all(|l| l.0 == lsns[1].0));
    assert_eq!(
        lsns[1..5].iter().map(|l| l.1).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_ne!(lsns[0].0, lsns[1].0);

    // The worker is not a superuser, and /healthz says it streams.
    let st = w.sigterm(T);
    assert!(st.success(), "SIGTERM exits 0:\n{}", w.log_text());
    // Its progress is stored, and the slot confirmed up to it.
    let (progress, confirmed): (String, String) = {
        let r = c
            .query_one(
                "SELECT p.lsn::text, s.confirmed_flush_lsn::text
                   FROM tributary.worker_progress p, pg_replication_slots s
                  WHERE p.slot = 'w' AND p.destination = 'audit' AND s.slot_name = 'w'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let (p, s): (tributary_worker::lsn::Lsn, tributary_worker::lsn::Lsn) =
        (progress.parse().unwrap(), confirmed.parse().unwrap());
    assert!(s >= p, "slot confirmed {s} below the queue's progress {p}");
}
