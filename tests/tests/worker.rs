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
    w.until_slot(&mut c, "w");

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
    // Its progress is stored, and the slot confirmed up to it. The last
    // status reaches the walsender as the worker exits, and the walsender
    // applies it in its own time: wait for it rather than read it once.
    let mut last = (String::new(), String::new());
    wait_until(T, "the slot to confirm the queue's progress", || {
        let r = c
            .query_one(
                "SELECT p.lsn::text, s.confirmed_flush_lsn::text
                   FROM tributary.worker_progress p, pg_replication_slots s
                  WHERE p.slot = 'w' AND p.destination = 'audit' AND s.slot_name = 'w'",
                &[],
            )
            .unwrap();
        last = (r.get(0), r.get(1));
        let (p, s): (tributary_worker::lsn::Lsn, tributary_worker::lsn::Lsn) =
            (last.0.parse().unwrap(), last.1.parse().unwrap());
        s >= p
    });
    let (p, s): (tributary_worker::lsn::Lsn, tributary_worker::lsn::Lsn) =
        (last.0.parse().unwrap(), last.1.parse().unwrap());
    assert!(s >= p, "slot confirmed {s} below the queue's progress {p}");
}

#[test]
fn changes_are_never_echoed_to_the_destination_that_wrote_them() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE p (id int PRIMARY KEY, v text); SELECT sync_track('p')")
        .unwrap();
    setup_worker_role(&db, &["audit", "crm"]);
    let dests = format!(
        "{QUEUE}\n[[destination]]\nname = \"crm\"\nkind = \"queue\"\ntables = [\"public.*\"]\n"
    );
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", &dests), &[]);
    w.until_slot(&mut c, "w");
    // Written by the hub, by "crm" through its origin, by "crm" through
    // sync_apply (insert, then delete), and deleted under crm's origin.
    c.batch_execute(
        "INSERT INTO p VALUES (1, 'hub');
         SET tributary.origin = 'crm';
         INSERT INTO p VALUES (2, 'from crm');
         UPDATE p SET v = 'crm again' WHERE id = 1;
         DELETE FROM p WHERE id = 2;
         RESET tributary.origin;
         DELETE FROM p WHERE id = 1;",
    )
    .unwrap();
    c.batch_execute(
        r#"SELECT * FROM sync_apply('p', '[{"op":"I","pk":{"id":5},"data":{"id":5,"v":"applied"},"version":1}]', 'crm');
           SELECT * FROM sync_apply('p', '[{"op":"D","pk":{"id":5},"version":2}]', 'crm');"#,
    )
    .unwrap();
    c.batch_execute("INSERT INTO p VALUES (9, 'end')").unwrap();
    w.until(T, "the last change in both queues", || {
        scalar(
            &mut c,
            "SELECT count(*) FROM tributary.queue_audit WHERE pk = '{\"id\": 9}'",
        ) == 1
            && scalar(
                &mut c,
                "SELECT count(*) FROM tributary.queue_crm WHERE pk = '{\"id\": 9}'",
            ) == 1
    });
    let brief = |c: &mut Client, q: &str| -> Vec<(String, Value, Option<String>)> {
        queue_rows(c, q)
            .into_iter()
            .map(|r| (r.0, r.2, r.4))
            .collect()
    };
    let crm = Some("crm".to_string());
    assert_eq!(
        brief(&mut c, "audit"),
        vec![
            ("I".into(), json!({"id": 1}), None),
            ("I".into(), json!({"id": 2}), crm.clone()),
            ("U".into(), json!({"id": 1}), crm.clone()),
            ("D".into(), json!({"id": 2}), crm.clone()),
            ("D".into(), json!({"id": 1}), None),
            ("I".into(), json!({"id": 5}), crm.clone()),
            ("D".into(), json!({"id": 5}), crm.clone()),
            ("I".into(), json!({"id": 9}), None),
        ]
    );
    // crm gets only what it did not write itself.
    assert_eq!(
        brief(&mut c, "crm"),
        vec![
            ("I".into(), json!({"id": 1}), None),
            ("D".into(), json!({"id": 1}), None),
            ("I".into(), json!({"id": 9}), None),
        ]
    );
}

#[test]
fn unchanged_toast_values_are_left_out_never_nulled() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, big text, n int); SELECT sync_track('t')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", QUEUE), &[]);
    w.until_slot(&mut c, "w");
    c.batch_execute(
        "INSERT INTO t SELECT 1, string_agg(md5(random()::text), '') FROM generate_series(1, 400);
         UPDATE t SET n = 2 WHERE id = 1;",
    )
    .unwrap();
    w.until(T, "2 rows", || count(&mut c, "audit") == 2);
    let rows = queue_rows(&mut c, "audit");
    let big: String = c.query_one("SELECT big FROM t", &[]).unwrap().get(0);
    assert_eq!(rows[0].3["big"], json!(big), "the insert carries the value");
    assert_eq!(
        rows[1].3,
        json!({"id": 1, "n": 2}),
        "the update leaves it out"
    );
    assert!(rows[1].3.get("big").is_none());
}

/// An insert-only workload of `txns` transactions × `rows` rows, ids from
/// `first`.
fn write_batches(c: &mut Client, first: i32, txns: i32, rows: i32) {
    for t in 0..txns {
        let lo = first + t * rows;
        c.execute(
            "INSERT INTO w SELECT g, 'v' || g FROM generate_series($1::int, $2::int) g",
            &[&lo, &(lo + rows - 1)],
        )
        .unwrap();
    }
}

/// Every id in [1, n] exactly once in the queue, and nothing else.
fn assert_exactly_once(c: &mut Client, n: i64) {
    let (total, distinct, lo, hi): (i64, i64, i32, i32) = {
        let r = c
            .query_one(
                "SELECT count(*), count(DISTINCT pk), min((pk->>'id')::int), max((pk->>'id')::int)
                   FROM tributary.queue_audit",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!((total, distinct, lo, hi as i64), (n, n, 1, n));
}

#[test]
fn a_crash_at_any_point_leaves_every_change_in_the_queue_exactly_once() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE w (id int PRIMARY KEY, v text); SELECT sync_track('w')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let cfg = config(&cluster, &db, "w", QUEUE);
    let mut w = WorkerProc::start(&cfg, &[]);
    w.until_slot(&mut c, "w");
    let mut n = 0;
    // Crash points: rows written but not committed; committed but the
    // slot not confirmed; and kill -9 at an arbitrary moment of a stream.
    for (point, hits) in [
        ("queue.before_commit", 1),
        ("queue.after_commit", 2),
        ("queue.after_commit", 5),
    ] {
        w.kill9();
        let fp = format!("{point}:{hits}");
        w.spawn(&[("TRIBUTARY_FAILPOINT", fp.as_str())]);
        // Transactions one at a time, until the worker dies at the point.
        let mut tries = 0;
        let st = loop {
            write_batches(&mut c, n + 1, 1, 50);
            n += 50;
            if let Some(st) = w.wait(Duration::from_millis(300)) {
                break st;
            }
            tries += 1;
            assert!(tries < 100, "failpoint {fp} not reached:\n{}", w.log_text());
        };
        assert!(!st.success(), "the failpoint aborts the worker");
        assert!(w.log_text().contains(&format!("failpoint {point} reached")));
    }
    // kill -9 while a stream of transactions is flowing.
    w.spawn(&[]);
    for _ in 0..3 {
        write_batches(&mut c, n + 1, 20, 100);
        n += 2000;
        std::thread::sleep(Duration::from_millis(150));
        w.kill9();
        w.spawn(&[]);
    }
    let total = n as i64;
    w.until(T, "every change", || count(&mut c, "audit") >= total);
    std::thread::sleep(Duration::from_millis(500));
    assert_exactly_once(&mut c, total);
    assert!(w.running());
}

#[test]
fn a_postgres_restart_is_survived_without_a_gap() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE w (id int PRIMARY KEY, v text); SELECT sync_track('w')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", QUEUE), &[]);
    w.until_slot(&mut c, "w");
    write_batches(&mut c, 1, 5, 100);
    w.until(T, "500 rows", || count(&mut c, "audit") == 500);
    cluster.pg_ctl(&["-m", "fast", "-w", "restart"]);
    let mut c = db.connect();
    write_batches(&mut c, 501, 5, 100);
    w.until(T, "1000 rows", || count(&mut c, "audit") >= 1000);
    assert_exactly_once(&mut c, 1000);
    assert!(w.running(), "the same process reconnected");
    assert!(w.log_text().contains("transient error"), "{}", w.log_text());
}

#[test]
fn a_dropped_slot_stops_the_worker_with_a_definite_error() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE w (id int PRIMARY KEY, v text); SELECT sync_track('w')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", QUEUE), &[]);
    w.until_slot(&mut c, "w");
    write_batches(&mut c, 1, 1, 10);
    w.until(T, "10 rows", || count(&mut c, "audit") == 10);
    assert!(w.sigterm(T).success());
    // The walsender may outlive the worker by a moment under load.
    wait_until(T, "the slot to be released", || {
        scalar(
            &mut c,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'w' AND active",
        ) == 0
    });
    c.batch_execute("SELECT pg_drop_replication_slot('w')")
        .unwrap();
    w.spawn(&[]);
    let st = w.wait(T).expect("the worker stops by itself");
    assert_eq!(st.code(), Some(2), "a definite error:\n{}", w.log_text());
    let log = w.log_text();
    assert!(
        log.contains("replication slot \"w\" does not exist"),
        "{log}"
    );
    assert!(log.contains("never recreates it"), "{log}");
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM pg_replication_slots"),
        0,
        "no slot was silently created"
    );
}

#[test]
fn an_idle_worker_confirms_keepalives_so_wal_is_not_retained() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE w (id int PRIMARY KEY, v text); SELECT sync_track('w');
         CREATE TABLE other (id int PRIMARY KEY, pad text);",
    )
    .unwrap();
    c.batch_execute("ALTER SYSTEM SET wal_sender_timeout = '2s'")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    setup_worker_role(&db, &["audit"]);
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", QUEUE), &[]);
    w.until_slot(&mut c, "w");
    // WAL the worker gets nothing of: an unpublished table.
    c.batch_execute(
        "INSERT INTO other SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g",
    )
    .unwrap();
    let target: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    w.until(T, "the slot confirmed past the unpublished writes", || {
        c.query_one(
            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'w'",
            &[&target],
        )
        .unwrap()
        .get::<_, bool>(0)
    });
    assert_eq!(count(&mut c, "audit"), 0);
}

#[test]
fn a_million_row_transaction_goes_through_in_bounded_memory() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE w (id int PRIMARY KEY, v text); SELECT sync_track('w')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", QUEUE), &[]);
    w.until_slot(&mut c, "w");
    let before = w.peak_rss_kb();
    // One transaction, larger than logical_decoding_work_mem (64MB): the
    // server streams it before it commits, and the worker spills it.
    c.batch_execute("INSERT INTO w SELECT g, md5(g::text) FROM generate_series(1, 1000000) g")
        .unwrap();
    w.until(Duration::from_secs(600), "a million rows", || {
        count(&mut c, "audit") >= 1_000_000
    });
    assert_exactly_once(&mut c, 1_000_000);
    let peak = w.peak_rss_kb();
    eprintln!("worker peak RSS: {before} kB before, {peak} kB after a 1M-row transaction");
    assert!(
        peak < 96 * 1024,
        "peak RSS {peak} kB: memory must not grow with the transaction"
    );
}

#[test]
fn streamed_transactions_arrive_whole_and_aborted_ones_reach_no_one() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    // Stream anything over 64kB, so that small transactions take the
    // streamed path (Stream Start/Stop/Commit/Abort) and spill.
    c.batch_execute("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    c.batch_execute("CREATE TABLE w (id int PRIMARY KEY, v text); SELECT sync_track('w')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", QUEUE), &[]);
    w.until_slot(&mut c, "w");
    let mut c2 = db.connect();
    // Two large transactions interleaved, committed in the reverse order of
    // their start; one rolls a subtransaction back.
    c.batch_execute(
        "BEGIN; INSERT INTO w SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
         SAVEPOINT s; INSERT INTO w SELECT g, 'gone' FROM generate_series(100001, 102000) g;
         ROLLBACK TO SAVEPOINT s;",
    )
    .unwrap();
    c2.batch_execute(
        "BEGIN; INSERT INTO w SELECT g, md5(g::text) FROM generate_series(2001, 4000) g;",
    )
    .unwrap();
    c.batch_execute("INSERT INTO w SELECT g, md5(g::text) FROM generate_series(4001, 5000) g")
        .unwrap();
    c2.batch_execute("COMMIT").unwrap();
    c.batch_execute("COMMIT").unwrap();
    // Aborted after being streamed: must reach no destination.
    c.batch_execute(
        "BEGIN; INSERT INTO w SELECT g, md5(g::text) FROM generate_series(200001, 205000) g; ROLLBACK;",
    )
    .unwrap();
    c.batch_execute("INSERT INTO w VALUES (5001, 'last')")
        .unwrap();
    w.until(T, "the last row", || {
        scalar(
            &mut c,
            "SELECT count(*) FROM tributary.queue_audit WHERE pk = '{\"id\": 5001}'",
        ) == 1
    });
    assert_exactly_once(&mut c, 5001);
    // Whole and in commit order: c2's transaction first, then c's.
    let order: Vec<(i32, i32)> = c
        .query(
            "SELECT min((pk->>'id')::int), max((pk->>'id')::int) FROM tributary.queue_audit
              GROUP BY lsn ORDER BY lsn",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(order, [(2001, 4000), (1, 5000), (5001, 5001)]);
    assert!(
        w.log_text().contains("replaying a streamed transaction"),
        "the streamed path was taken"
    );
}

/// GET `path` from the worker's HTTP listener: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn metrics_healthz_and_json_logs_report_the_pipeline() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE w (id int PRIMARY KEY, v text); SELECT sync_track('w')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let cfg = config(&cluster, &db, "w", QUEUE);
    let addr = cfg
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let mut w = WorkerProc::start(&cfg, &[("TRIBUTARY_LOG_FORMAT", "json")]);
    w.until(T, "healthz 200", || {
        std::net::TcpStream::connect(&addr).is_ok() && http_get(&addr, "/healthz").0.contains("200")
    });
    write_batches(&mut c, 1, 3, 10);
    w.until(T, "30 rows", || count(&mut c, "audit") == 30);
    let mut body = String::new();
    w.until(T, "the metrics to show 30 rows", || {
        body = http_get(&addr, "/metrics").1;
        body.contains("tributary_destination_rows_total{destination=\"audit\",kind=\"queue\"} 30")
    });
    for family in [
        "tributary_destination_lag_bytes{destination=\"audit\"",
        "tributary_destination_lag_seconds{destination=\"audit\"",
        "tributary_destination_transactions_total{destination=\"audit\",kind=\"queue\"} 3",
        "tributary_retained_wal_bytes ",
        "tributary_source_connected 1",
        "tributary_errors_total 0",
    ] {
        assert!(body.contains(family), "{family} missing from:\n{body}");
    }
    // The slot's retained WAL, polled from pg_replication_slots.
    w.until(T, "a retained WAL figure", || {
        http_get(&addr, "/metrics")
            .1
            .lines()
            .find_map(|l| l.strip_prefix("tributary_retained_wal_bytes "))
            .is_some_and(|v| v.parse::<f64>().unwrap() > 0.0)
    });
    assert!(http_get(&addr, "/nope").0.contains("404"));
    assert!(w.sigterm(T).success());
    // Every log line is one JSON object with a level and a message.
    let log = w.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with("----")).collect();
    assert!(lines.len() >= 3, "{log}");
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
    assert!(log.contains("\"message\":\"stopped\""), "{log}");
}

#[test]
fn a_change_reaching_a_queue_twice_is_dropped_not_duplicated() {
    // Misconfigured: two workers, on two slots, write the same queue. Both
    // deliver every change; the queue must still hold each once.
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE w (id int PRIMARY KEY, v text); SELECT sync_track('w')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let mut a = WorkerProc::start(&config(&cluster, &db, "a", QUEUE), &[]);
    let mut b = WorkerProc::start(&config(&cluster, &db, "b", QUEUE), &[]);
    a.until(T, "both slots", || {
        scalar(
            &mut c,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('a', 'b')",
        ) == 2
    });
    write_batches(&mut c, 1, 20, 10);
    b.until(T, "200 rows", || count(&mut c, "audit") >= 200);
    // Both workers caught up: their progress covers the last transaction.
    let last: String = c
        .query_one("SELECT max(lsn)::text FROM tributary.queue_audit", &[])
        .unwrap()
        .get(0);
    a.until(T, "both destinations past the last change", || {
        scalar(
            &mut c,
            &format!("SELECT count(*) FROM tributary.worker_progress WHERE lsn > '{last}'"),
        ) == 2
    });
    assert_exactly_once(&mut c, 200);
    let logs = a.log_text() + &b.log_text();
    assert!(logs.contains("reached the queue twice"), "{logs}");
    assert!(a.running() && b.running());
}
