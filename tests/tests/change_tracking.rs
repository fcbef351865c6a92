//! The version guarantees of the pull API, checked from several concurrent
//! client connections against a throwaway cluster.

use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tributary_e2e::*;

fn setup_items(db: &Db) -> Client {
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, val text, n int);
         SELECT sync_track('items');",
    )
    .unwrap();
    c
}

#[test]
fn late_commit_of_older_xid_is_not_skipped() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let _ = setup_items(&db);
    let mut t1 = db.connect();
    let mut t2 = db.connect();
    let mut reader = Reader::new(db.connect(), "read committed");
    reader.poll();

    // T1 takes the lower xid and writes first, but commits last.
    t1.batch_execute("BEGIN; INSERT INTO items VALUES (1, 't1', 1)")
        .unwrap();
    let x1 = scalar(&mut t1, "SELECT pg_current_xact_id()::text::bigint");
    t2.batch_execute("BEGIN; INSERT INTO items VALUES (2, 't2', 2)")
        .unwrap();
    let x2 = scalar(&mut t2, "SELECT pg_current_xact_id()::text::bigint");
    assert!(x1 < x2, "T1 must hold the older xid");
    t2.batch_execute("COMMIT").unwrap();

    // T2 is committed, but the version cannot pass T1 while it runs:
    // delivery of T2 is delayed, never T1's skipped.
    reader.poll();
    assert!(
        reader.last <= x1,
        "version {} moved past running xid {x1}",
        reader.last
    );
    assert!(
        reader.state.is_empty(),
        "nothing may be delivered across a running xid"
    );

    t1.batch_execute("COMMIT").unwrap();
    reader.poll();
    let ids: Vec<&String> = reader.state.keys().map(|(_, pk)| pk).collect();
    assert_eq!(ids, vec![r#"{"id": 1}"#, r#"{"id": 2}"#]);
    // Exactly once: each change arrived in exactly one poll.
    assert_eq!(reader.delivered.len(), 2);
    reader.poll();
    assert_eq!(
        reader.delivered.len(),
        2,
        "an empty poll must deliver nothing again"
    );
}

#[test]
fn late_commit_is_delivered_even_when_reader_polled_an_empty_window_in_between() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut w = setup_items(&db);
    w.batch_execute("INSERT INTO items VALUES (1, 'a', 1)")
        .unwrap();
    let mut reader = Reader::new(db.connect(), "repeatable read");
    reader.poll();
    assert_eq!(reader.delivered.len(), 1);

    let mut t1 = db.connect();
    t1.batch_execute("BEGIN; UPDATE items SET val = 'late' WHERE id = 1")
        .unwrap();
    for _ in 0..3 {
        assert_eq!(reader.poll(), 0);
    }
    t1.batch_execute("COMMIT").unwrap();
    assert_eq!(reader.poll(), 1);
    let (op, _, _, data) = reader.delivered.last().unwrap();
    assert_eq!(op, "U");
    assert_eq!(data.as_ref().unwrap()["val"], "late");
}

/// Writers on several connections do random inserts, updates and deletes
/// with random commit delays and some rollbacks, while readers in each
/// isolation level poll with the protocol. At the end every reader's
/// replayed state equals the table, no write was delivered twice, and no
/// rolled-back write was ever seen.
#[test]
fn randomized_writers_are_delivered_exactly_once_to_readers_in_every_isolation_level() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let _ = setup_items(&db);
    const WRITERS: usize = 4;
    const TXNS_PER_WRITER: usize = 120;
    const KEYS: i32 = 40;

    let stop = Arc::new(AtomicBool::new(false));
    let rolled_back: Arc<Mutex<HashSet<String>>> = Default::default();

    let readers: Vec<_> = ["read committed", "repeatable read", "serializable"]
        .into_iter()
        .map(|iso| {
            let mut r = Reader::new(db.connect(), iso);
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    r.poll();
                    std::thread::sleep(Duration::from_millis(3));
                }
                r
            })
        })
        .collect();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut c = db.connect();
            let rolled_back = rolled_back.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(7 + w as u64);
                for t in 0..TXNS_PER_WRITER {
                    let mut tx = c.transaction().unwrap();
                    let mut tokens = vec![];
                    let mut failed = false;
                    for s in 0..rng.gen_range(1..4) {
                        let key = rng.gen_range(0..KEYS);
                        let token = format!("w{w}t{t}s{s}");
                        let r = match rng.gen_range(0..3) {
                            0 => tx.execute(
                                "INSERT INTO items VALUES ($1, $2, 0) ON CONFLICT (id) DO UPDATE SET val = $2, n = items.n + 1",
                                &[&key, &token],
                            ),
                            1 => tx.execute("UPDATE items SET val = $2, n = n + 1 WHERE id = $1", &[&key, &token]),
                            _ => tx.execute("DELETE FROM items WHERE id = $1", &[&key]),
                        };
                        if r.is_err() {
                            failed = true; // deadlock between writers: the whole txn rolls back
                            break;
                        }
                        tokens.push(token);
                        if rng.gen_bool(0.3) {
                            std::thread::sleep(Duration::from_millis(rng.gen_range(0..8)));
                        }
                    }
                    if failed || rng.gen_bool(0.15) {
                        let _ = tx.rollback();
                        rolled_back.lock().unwrap().extend(tokens);
                    } else {
                        std::thread::sleep(Duration::from_millis(rng.gen_range(0..5)));
                        tx.commit().unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let readers: Vec<Reader> = readers.into_iter().map(|r| r.join().unwrap()).collect();

    let mut c = db.connect();
    let truth = table_state(&mut c, "items");
    assert!(!truth.is_empty());
    let rolled_back = rolled_back.lock().unwrap();
    assert!(!rolled_back.is_empty(), "the test must exercise rollbacks");
    for mut r in readers {
        // Drain: nothing is running any more, so one more poll sees all.
        r.poll();
        assert_eq!(
            r.state, truth,
            "reader ({}) diverged from the table",
            r.isolation
        );
        let mut seen = HashSet::new();
        for (op, _, pk, data) in &r.delivered {
            if let Some(d) = data {
                let token = d["val"].as_str().unwrap().to_string();
                assert!(
                    !rolled_back.contains(&token),
                    "rolled-back write {token} was delivered"
                );
                // A write is one (token); delivering it twice is a duplicate.
                assert!(
                    seen.insert((pk.clone(), token.clone(), d["n"].clone())),
                    "{op} {pk} {token} delivered twice ({})",
                    r.isolation
                );
            }
        }
        assert!(
            r.delivered.len() > truth.len(),
            "readers must have polled concurrently"
        );
    }
}

#[test]
fn long_transaction_only_delays_delivery_and_is_named_by_version_lag() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut w = setup_items(&db);
    let mut long = db.connect();
    let long_pid: i32 = long
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    long.batch_execute("BEGIN; INSERT INTO items VALUES (100, 'long', 0)")
        .unwrap();
    let long_xid = scalar(&mut long, "SELECT pg_current_xact_id()::text::bigint");

    let mut reader = Reader::new(db.connect(), "read committed");
    let started = Instant::now();
    for i in 0..20 {
        w.execute("INSERT INTO items VALUES ($1, 'short', 0)", &[&i])
            .unwrap();
        reader.poll();
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        reader.delivered.is_empty(),
        "nothing may pass the long transaction's xid"
    );

    let lag = w
        .query_one(
            "SELECT current_version, held_back_by, kind, pid FROM sync_version_lag() LIMIT 1",
            &[],
        )
        .unwrap();
    let (cur, held, kind, pid): (i64, i64, String, i32) =
        (lag.get(0), lag.get(1), lag.get(2), lag.get(3));
    assert_eq!(held, long_xid);
    assert_eq!(cur, long_xid);
    assert_eq!(kind, "backend");
    assert_eq!(pid, long_pid);

    long.batch_execute("COMMIT").unwrap();
    reader.poll();
    assert_eq!(reader.delivered.len(), 21);
    assert_eq!(reader.state.len(), 21);
}

#[test]
fn prepared_transaction_holds_the_version_and_is_reported() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut w = setup_items(&db);
    w.batch_execute("BEGIN; INSERT INTO items VALUES (1, 'p', 0); PREPARE TRANSACTION 'gid-1'")
        .unwrap();
    let row = w
        .query_one(
            "SELECT kind, application_name FROM sync_version_lag() LIMIT 1",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "prepared");
    assert_eq!(row.get::<_, String>(1), "gid-1");
    let mut reader = Reader::new(db.connect(), "read committed");
    w.batch_execute("INSERT INTO items VALUES (2, 'q', 0)")
        .unwrap();
    reader.poll();
    assert!(reader.delivered.is_empty());
    w.batch_execute("COMMIT PREPARED 'gid-1'").unwrap();
    reader.poll();
    assert_eq!(reader.state.len(), 2);
}

#[test]
fn retention_below_minimum_gets_full_payload_never_a_partial_diff() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = setup_items(&db);
    c.batch_execute("INSERT INTO items SELECT g, 'v', 0 FROM generate_series(1, 10) g")
        .unwrap();
    let old = scalar(&mut c, "SELECT sync_current_version()");
    c.batch_execute("DELETE FROM items WHERE id <= 3").unwrap();
    // A diff from `old` still carries the deletes.
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM sync_changes_since($1) WHERE op = 'D'",
            &[&old],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 3);

    c.batch_execute("SET tributary.retention = '0 seconds'")
        .unwrap();
    let purged = scalar(&mut c, "SELECT sync_cleanup()");
    assert_eq!(purged, 3);
    let min = scalar(&mut c, "SELECT sync_min_valid_version('items')");
    assert!(min > old);

    let e = expect_error(
        &mut c,
        &format!("SELECT * FROM sync_changes_since({old})"),
        "TB002",
    );
    assert!(e.detail.unwrap().contains("retention"));

    let p: serde_json::Value = serde_json::from_str(
        &c.query_one("SELECT sync_payload('items', $1)::text", &[&old])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(p["Metadata"]["Sync"]["Type"], "Full");
    assert_eq!(p["Metadata"]["Sync"]["ReasonCode"], 2);
    let data = p["Data"].as_array().unwrap();
    assert_eq!(data.len(), 7, "a Full payload carries every current row");
    assert!(data.iter().all(|r| r["$operation"] == "I"));
    // The stored version then serves diffs again.
    let v = p["Metadata"]["Sync"]["Version"].as_i64().unwrap();
    c.batch_execute("UPDATE items SET val = 'after' WHERE id = 4")
        .unwrap();
    let p2: serde_json::Value = serde_json::from_str(
        &c.query_one("SELECT sync_payload('items', $1)::text", &[&v])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(p2["Metadata"]["Sync"]["Type"], "Diff");
    assert_eq!(p2["Data"].as_array().unwrap().len(), 1);
    assert_eq!(p2["Data"][0]["$operation"], "U");
    assert_eq!(p2["Data"][0]["val"], "after");
}

#[test]
fn truncate_forces_a_full_resync_and_an_aborted_truncate_does_not() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = setup_items(&db);
    c.batch_execute("INSERT INTO items SELECT g, 'v', 0 FROM generate_series(1, 5) g")
        .unwrap();
    let before = scalar(&mut c, "SELECT sync_current_version()");
    c.batch_execute("BEGIN; TRUNCATE items; ROLLBACK").unwrap();
    c.query("SELECT * FROM sync_changes_since($1)", &[&before])
        .expect("an aborted truncate changes nothing");

    c.batch_execute("TRUNCATE items; INSERT INTO items VALUES (9, 'new', 0)")
        .unwrap();
    expect_error(
        &mut c,
        &format!("SELECT * FROM sync_changes_since({before})"),
        "TB002",
    );
    let p: serde_json::Value = serde_json::from_str(
        &c.query_one("SELECT sync_payload('items', $1)::text", &[&before])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(p["Metadata"]["Sync"]["Type"], "Full");
    assert_eq!(p["Metadata"]["Sync"]["ReasonCode"], 3);
    assert_eq!(p["Data"].as_array().unwrap().len(), 1);
    assert_eq!(p["Data"][0]["id"], 9);
}

#[test]
fn retracking_a_table_forces_readers_of_the_old_epoch_to_resync() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = setup_items(&db);
    c.batch_execute("INSERT INTO items VALUES (1, 'a', 0), (2, 'b', 0)")
        .unwrap();
    let before = scalar(&mut c, "SELECT sync_current_version()");
    c.batch_execute(
        "SELECT sync_untrack('items'); DELETE FROM items WHERE id = 1; SELECT sync_track('items')",
    )
    .unwrap();
    let e = expect_error(
        &mut c,
        &format!("SELECT * FROM sync_changes_since({before})"),
        "TB002",
    );
    assert!(e.detail.unwrap().contains("retrack"));
    let p: serde_json::Value = serde_json::from_str(
        &c.query_one("SELECT sync_payload('items', $1)::text", &[&before])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(p["Metadata"]["Sync"]["ReasonCode"], 4);
    assert_eq!(p["Data"].as_array().unwrap().len(), 1);
}

#[test]
fn first_time_tracking_is_seamless_for_readers_of_other_tables() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = setup_items(&db);
    let mut reader = Reader::new(db.connect(), "read committed");
    c.batch_execute("INSERT INTO items VALUES (1, 'a', 0)")
        .unwrap();
    reader.poll();
    c.batch_execute(
        "CREATE TABLE later (k text PRIMARY KEY, v int); INSERT INTO later VALUES ('x', 1), ('y', 2);
         SELECT sync_track('later');",
    )
    .unwrap();
    reader.poll();
    let later: Vec<_> = reader.delivered.iter().filter(|d| d.1 == "later").collect();
    assert_eq!(
        later.len(),
        2,
        "the rows present at tracking time arrive as inserts"
    );
    assert!(later.iter().all(|d| d.0 == "I"));
}
