//! SQLite peers, push side: the worker binary writing real SQLite files
//! from a throwaway cluster.

use rusqlite::types::Value as V;
use std::path::Path;
use std::time::Duration;
use tributary_e2e::peer::*;
use tributary_e2e::worker::*;
use tributary_e2e::*;

const T: Duration = Duration::from_secs(60);

fn setup(c: &mut Client) {
    c.batch_execute(
        r#"CREATE TABLE items (id int PRIMARY KEY, v text, n numeric, at timestamptz, tags int[], doc jsonb, ok boolean, raw bytea, f float8);
           CREATE TABLE "tab'le" ("]" int PRIMARY KEY, """" text);
           CREATE SCHEMA sales; CREATE TABLE sales.orders (id int PRIMARY KEY, item int);
           CREATE TABLE marker (id serial PRIMARY KEY);
           SELECT sync_track('items'); SELECT sync_track('"tab''le"'); SELECT sync_track('sales.orders');
           SELECT sync_track('marker');"#,
    )
    .unwrap();
}

#[test]
fn hub_changes_reach_a_sqlite_peer_typed_whole_and_once() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    setup_worker_role(&db, &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge1.db");
    let mut w = WorkerProc::start(
        &config(&cluster, &db, "w", &sqlite_dest("edge1", &path)),
        &[],
    );
    w.until(T, "the slot", || {
        scalar(
            &mut c,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'w'",
        ) == 1
    });
    c.batch_execute(
        r#"INSERT INTO items VALUES (1, 'one', 12345678901234567890.50, '2024-01-02 03:04:05.25+00', '{1,NULL,3}', '{"k": [1, 2]}', true, '\x00ff', 1.5);
           INSERT INTO items (id, v) VALUES (2, 'two'), (3, 'three');
           UPDATE items SET v = 'uno', ok = false WHERE id = 1;
           DELETE FROM items WHERE id = 2;
           UPDATE items SET id = 30 WHERE id = 3;
           INSERT INTO "tab'le" VALUES (7, 'q"uote'), (8, 'x');
           DELETE FROM "tab'le" WHERE "]" = 8;
           INSERT INTO sales.orders VALUES (1, 1);"#,
    )
    .unwrap();
    caught_up(&mut w, &mut c, &path);
    assert_eq!(
        rows(
            &path,
            "SELECT id, v, n, at, tags, doc, ok, raw, f FROM items ORDER BY id"
        ),
        vec![
            vec![
                V::Integer(1),
                V::Text("uno".into()),
                V::Text("12345678901234567890.50".into()),
                V::Text("2024-01-02T03:04:05.25+00:00".into()),
                V::Text("[1,null,3]".into()),
                V::Text(r#"{"k": [1, 2]}"#.into()),
                V::Integer(0),
                V::Blob(vec![0, 255]),
                V::Real(1.5),
            ],
            vec![
                V::Integer(30),
                V::Text("three".into()),
                V::Null,
                V::Null,
                V::Null,
                V::Null,
                V::Null,
                V::Null,
                V::Null
            ],
        ]
    );
    assert_eq!(
        rows(&path, r#"SELECT "]", """" FROM "tab'le""#),
        vec![vec![V::Integer(7), V::Text("q\"uote".into())]]
    );
    assert_eq!(
        rows(&path, r#"SELECT id, item FROM "sales.orders""#),
        vec![vec![V::Integer(1), V::Integer(1)]]
    );
    // The hub revision of each row, for the peer's own edits later.
    let hub_v: i64 = scalar(&mut c, "SELECT sync_version FROM items WHERE id = 1");
    assert_eq!(
        rows(
            &path,
            r#"SELECT version FROM _tributary_versions WHERE tbl = 'items' AND pk = '{"id":1}'"#
        ),
        vec![vec![V::Integer(hub_v)]]
    );
    assert_eq!(
        rows(&path, "PRAGMA journal_mode"),
        vec![vec![V::Text("wal".into())]]
    );
    // TRUNCATE empties the peer's table.
    c.batch_execute(r#"TRUNCATE "tab'le""#).unwrap();
    caught_up(&mut w, &mut c, &path);
    assert!(rows(&path, r#"SELECT * FROM "tab'le""#).is_empty());
    assert!(w.sigterm(T).success());
}

fn hub_items(c: &mut Client) -> Vec<(i64, String)> {
    c.query("SELECT id::int8, v FROM items ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn peer_items(path: &Path) -> Vec<(i64, String)> {
    rows(path, "SELECT id, v FROM items ORDER BY id")
        .into_iter()
        .map(|r| match (&r[0], &r[1]) {
            (V::Integer(i), V::Text(s)) => (*i, s.clone()),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Random inserts, updates and deletes in `txns` transactions.
fn churn(c: &mut Client, txns: usize) {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..txns {
        let mut sql = String::from("BEGIN;");
        for _ in 0..rng.gen_range(1..20) {
            let id = rng.gen_range(1..200);
            sql.push_str(&match rng.gen_range(0..3) {
                0 => format!("INSERT INTO items (id, v) VALUES ({id}, 'i{id}') ON CONFLICT (id) DO UPDATE SET v = excluded.v || '+';"),
                1 => format!("UPDATE items SET v = v || 'u' WHERE id = {id};"),
                _ => format!("DELETE FROM items WHERE id = {id};"),
            });
        }
        sql.push_str("COMMIT;");
        // Like any application writing rows in random order next to other
        // writers (here the worker's sync_apply), retry a deadlock victim.
        loop {
            match c.batch_execute(&sql) {
                Ok(()) => break,
                Err(e) if e.code().is_some_and(|c| c.code() == "40P01") => {
                    c.batch_execute("ROLLBACK").unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[test]
fn a_crashed_worker_leaves_the_peer_equal_to_the_hub() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    setup_worker_role(&db, &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge1.db");
    let cfg = config(&cluster, &db, "w", &sqlite_dest("edge1", &path));
    let mut w = WorkerProc::start(&cfg, &[]);
    w.until(T, "the slot", || {
        scalar(
            &mut c,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'w'",
        ) == 1
    });
    for hits in [1, 3] {
        w.kill9();
        let fp = format!("sqlite.after_commit:{hits}");
        w.spawn(&[("TRIBUTARY_FAILPOINT", fp.as_str())]);
        let mut tries = 0;
        while w.wait(Duration::from_millis(300)).is_none() {
            churn(&mut c, 3);
            tries += 1;
            assert!(tries < 100, "failpoint {fp} not reached:\n{}", w.log_text());
        }
    }
    w.spawn(&[]);
    for _ in 0..3 {
        churn(&mut c, 20);
        std::thread::sleep(Duration::from_millis(100));
        w.kill9();
        w.spawn(&[]);
    }
    churn(&mut c, 10);
    caught_up(&mut w, &mut c, &path);
    assert_eq!(peer_items(&path), hub_items(&mut c));
    assert!(!hub_items(&mut c).is_empty());
}

#[test]
fn a_locked_or_missing_peer_is_detached_while_the_others_go_on_then_catches_up() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    // The directory does not exist yet: the file cannot be opened.
    let path = dir.path().join("later").join("edge1.db");
    let dests = format!(
        "{}\n[[destination]]\nname = \"audit\"\nkind = \"queue\"\ntables = [\"public.items\"]\n",
        sqlite_dest("edge1", &path)
    );
    let cfg = config(&cluster, &db, "w", &dests);
    let addr = listen_addr(&cfg);
    let mut w = WorkerProc::start(&cfg, &[]);
    let log = w.log.clone();
    w.until(T, "edge1 to be detached", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("detached; the other destinations go on")
    });
    // The worker is degraded, not down: it streams for the others, and says
    // which peer is set aside.
    let detached = || {
        metric(
            &addr,
            "tributary_destination_detached{destination=\"edge1\",kind=\"sqlite\"} ",
        )
    };
    w.until(T, "healthz to name the detached peer", || {
        healthz(&addr)
            == (
                "200".to_string(),
                "streaming; degraded: edge1 (detached)\n".to_string(),
            )
    });
    assert_eq!(detached(), 1.0);
    let queued = |c: &mut Client| scalar(c, "SELECT count(*) FROM tributary.queue_audit");
    c.batch_execute("INSERT INTO items (id, v) VALUES (1, 'while missing')")
        .unwrap();
    w.until(T, "the queue to go on without edge1", || {
        queued(&mut c) == 1
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    caught_up(&mut w, &mut c, &path);
    assert_eq!(peer_items(&path), vec![(1, "while missing".to_string())]);
    assert_eq!(detached(), 0.0);
    // Re-attaching the peer restarts the stream (for every destination:
    // a known limit), so /healthz may say "not streaming" for a moment.
    w.until(T, "/healthz to be healthy again", || {
        healthz(&addr) == ("200".to_string(), "streaming\n".to_string())
    });

    // An application holds the write lock longer than busy_timeout.
    let app = lite(&path);
    app.execute_batch("BEGIN IMMEDIATE; CREATE TABLE app_scratch (x int);")
        .unwrap();
    c.batch_execute("INSERT INTO items (id, v) VALUES (2, 'while locked')")
        .unwrap();
    w.until(T, "the queue to go on while edge1 is locked", || {
        queued(&mut c) == 2
    });
    for i in 3..6 {
        c.batch_execute(&format!(
            "INSERT INTO items (id, v) VALUES ({i}, 'still locked')"
        ))
        .unwrap();
    }
    w.until(T, "the queue to keep going", || queued(&mut c) == 5);
    assert_eq!(
        peer_items(&path).len(),
        1,
        "nothing lands while the file is locked"
    );
    app.execute_batch("COMMIT").unwrap();
    caught_up(&mut w, &mut c, &path);
    assert_eq!(peer_items(&path), hub_items(&mut c));
    assert_eq!(queued(&mut c), 5, "the queue got everything once");
    assert!(w.running());
}

#[test]
fn a_new_peer_gets_a_consistent_copy_joined_to_the_stream_without_a_gap() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    setup_worker_role(&db, &[]);
    c.batch_execute(
        "INSERT INTO items (id, v) SELECT g, 'before ' || g FROM generate_series(1, 20000) g;",
    )
    .unwrap();
    // Writes keep landing while the copy runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, url) = (stop.clone(), cluster.url(&db.name));
        std::thread::spawn(move || {
            let mut c = Client::connect(&url, NoTls).unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                churn(&mut c, 1);
                n += 1;
            }
            n
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge1.db");
    let mut w = WorkerProc::start(
        &config(&cluster, &db, "w", &sqlite_dest("edge1", &path)),
        &[],
    );
    let log = w.log.clone();
    w.until(T, "the copy to finish", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("initial copy sent")
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(
        writes > 5,
        "the writer ran during the copy ({writes} transactions)"
    );
    caught_up(&mut w, &mut c, &path);
    assert_eq!(peer_items(&path), hub_items(&mut c));
    // Empty tables are created too, with their columns.
    assert!(rows(&path, r#"SELECT "]", """" FROM "tab'le""#).is_empty());
    let text = w.log_text();
    assert!(text.contains("initial copy: table done"), "{text}");
    // A restart does not copy again.
    assert!(w.sigterm(T).success());
    w.spawn(&[]);
    c.batch_execute("INSERT INTO items (id, v) VALUES (100000, 'after restart')")
        .unwrap();
    caught_up(&mut w, &mut c, &path);
    assert_eq!(peer_items(&path), hub_items(&mut c));
    assert_eq!(
        w.log_text().matches("initial copy sent").count(),
        1,
        "{}",
        w.log_text()
    );
    // A resync on demand: with its position cleared (here with a stray row
    // the hub never had, written past the capture triggers), the peer gets
    // a fresh copy that replaces what it held.
    assert!(w.sigterm(T).success());
    lite(&path)
        .execute_batch(
            "BEGIN; UPDATE _tributary_ctl SET applying = 1;
             INSERT INTO items (id, v) VALUES (999999, 'stray');
             DELETE FROM _tributary_state;
             UPDATE _tributary_ctl SET applying = 0; COMMIT;",
        )
        .unwrap();
    w.spawn(&[]);
    caught_up(&mut w, &mut c, &path);
    assert_eq!(peer_items(&path), hub_items(&mut c));
    assert_eq!(w.log_text().matches("initial copy sent").count(), 2);
}

/// The rows of `sql` at the hub, as strings (NULL as "∅").
fn hub_rows(c: &mut Client, sql: &str) -> Vec<Vec<String>> {
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i).unwrap_or_else(|| "∅".into()))
                .collect()
        })
        .collect()
}

/// The same from a peer file (values as text).
fn peer_rows(path: &Path, sql: &str) -> Vec<Vec<String>> {
    rows(path, sql)
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| match v {
                    V::Null => "∅".to_string(),
                    V::Integer(i) => i.to_string(),
                    V::Real(f) => f.to_string(),
                    V::Text(t) => t,
                    V::Blob(b) => format!("{b:?}"),
                })
                .collect()
        })
        .collect()
}

/// Two SQLite peers (pulling every 50 ms) and a queue.
fn two_peers(dir: &Path) -> String {
    let peer = |name: &str| {
        sqlite_dest(name, &dir.join(format!("{name}.db")))
            .replace("tables =", "pull_interval_ms = 50\ntables =")
    };
    format!(
        "{}\n{}\n[[destination]]\nname = \"audit\"\nkind = \"queue\"\ntables = [\"public.*\"]\n",
        peer("edge1"),
        peer("edge2")
    )
}

#[test]
fn a_peer_edit_reaches_the_hub_and_the_other_peer_and_is_never_echoed() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute("INSERT INTO items (id, v) VALUES (1, 'hub one'), (2, 'hub two')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let (e1, e2) = (dir.path().join("edge1.db"), dir.path().join("edge2.db"));
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", &two_peers(dir.path())), &[]);
    caught_up(&mut w, &mut c, &e1);
    caught_up(&mut w, &mut c, &e2);
    // The app on edge1 writes: an insert, an update, a delete.
    {
        let app = lite(&e1);
        app.execute_batch(
            "INSERT INTO items (id, v, n) VALUES (3, 'from edge1', '12.50');
             UPDATE items SET v = 'edge1 changed' WHERE id = 1;
             DELETE FROM items WHERE id = 2;",
        )
        .unwrap();
    }
    w.until(T, "edge1's changes at the hub", || {
        hub_rows(&mut c, "SELECT id::text, v, n::text FROM items ORDER BY id")
            == vec![
                vec!["1".to_string(), "edge1 changed".into(), "∅".into()],
                vec!["3".into(), "from edge1".into(), "12.50".into()],
            ]
    });
    caught_up(&mut w, &mut c, &e2);
    caught_up(&mut w, &mut c, &e1);
    let want = hub_rows(
        &mut c,
        "SELECT id::text, v, coalesce(n::text, '∅') FROM items ORDER BY id",
    );
    assert_eq!(
        peer_rows(&e2, "SELECT id, v, coalesce(n, '∅') FROM items ORDER BY id"),
        want
    );
    assert_eq!(
        peer_rows(&e1, "SELECT id, v, coalesce(n, '∅') FROM items ORDER BY id"),
        want
    );
    // Emptied once applied: the pull clears it after the hub's commit.
    w.until(T, "the outbox emptied once applied", || {
        outbox_len(&e1) == 0
    });
    // The hub tagged them with edge1: the queue shows it, and edge1's own
    // changes did not come back to edge1's outbox as new local edits.
    // (Within one sync_apply batch the hub writes set-based: no order.)
    let origins = hub_rows(
        &mut c,
        "SELECT op, pk->>'id', coalesce(origin, '∅') FROM tributary.queue_audit
          WHERE pk->>'id' IN ('1','2','3') AND origin IS NOT NULL ORDER BY pk->>'id'",
    );
    assert_eq!(
        origins,
        vec![
            vec!["U".to_string(), "1".into(), "edge1".into()],
            vec!["D".into(), "2".into(), "edge1".into()],
            vec!["I".into(), "3".into(), "edge1".into()],
        ]
    );
    assert!(rows(&e1, "SELECT * FROM _tributary_errors").is_empty());
    assert!(w.running());
}

#[test]
fn field_merge_deferred_and_rejected_outcomes_reach_the_peer() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute(
        "CREATE TABLE customers (id text PRIMARY KEY, full_name text, email text);
         CREATE TABLE orders (id int PRIMARY KEY, customer text REFERENCES customers, total numeric);
         SELECT sync_track('customers'); SELECT sync_track('orders');
         INSERT INTO customers VALUES ('C1', 'Ada', 'ada@old');",
    )
    .unwrap();
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let e1 = dir.path().join("edge1.db");
    let cfg = config(&cluster, &db, "w", &two_peers(dir.path()));
    let mut w = WorkerProc::start(&cfg, &[]);
    caught_up(&mut w, &mut c, &e1);
    // edge1 goes offline; meanwhile both sides edit C1 from the same base.
    assert!(w.sigterm(T).success());
    c.batch_execute("UPDATE customers SET email = 'ada@hub' WHERE id = 'C1'")
        .unwrap();
    {
        let app = lite(&e1);
        app.execute_batch(
            "UPDATE customers SET full_name = 'Ada L.' WHERE id = 'C1';
             INSERT INTO orders VALUES (10, 'C9', '5.00');          -- its customer is unknown yet
             INSERT INTO items (id, v) VALUES (50, 'fine');
             INSERT INTO items (id, v) VALUES (51, 'bad');
             UPDATE items SET f = 'not a number' WHERE id = 51;     -- SQLite takes it, the hub cannot",
        )
        .unwrap();
    }
    w.spawn(&[]);
    w.until(T, "the outbox to drain", || outbox_len(&e1) == 0);
    caught_up(&mut w, &mut c, &e1);
    // FIELD_MERGE: both columns kept, at the hub and back at edge1.
    assert_eq!(
        hub_rows(&mut c, "SELECT full_name, email FROM customers"),
        vec![vec!["Ada L.".to_string(), "ada@hub".into()]]
    );
    assert_eq!(
        peer_rows(&e1, "SELECT full_name, email FROM customers"),
        vec![vec!["Ada L.".to_string(), "ada@hub".into()]]
    );
    // The order is parked at the hub, and the app sees why.
    let errs = peer_rows(
        &e1,
        "SELECT tbl, pk, op, outcome FROM _tributary_errors ORDER BY id",
    );
    assert!(
        errs.contains(&vec![
            "orders".to_string(),
            r#"{"id":10}"#.into(),
            "I".into(),
            "DEFERRED".into()
        ]),
        "{errs:?}"
    );
    // The bad value is refused with its SQLSTATE; the good row of the same
    // table still lands, and edge1 loses the refused row (the hub has none).
    let bad = peer_rows(
        &e1,
        "SELECT outcome, detail FROM _tributary_errors WHERE pk = '{\"id\":51}'",
    );
    assert_eq!(bad.len(), 1, "{errs:?}");
    assert_eq!(bad[0][0], "REJECTED");
    assert!(bad[0][1].contains("SQLSTATE 22P02"), "{bad:?}");
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM items WHERE id = 50"),
        1
    );
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM items WHERE id = 51"),
        0
    );
    assert!(peer_rows(&e1, "SELECT id FROM items WHERE id = 51").is_empty());
    // The order's customer arrives from the other peer (through the
    // worker's role, which may run sync_apply and nothing more): the parked
    // order lands, and edge1 keeps it.
    lite(&dir.path().join("edge2.db"))
        .execute_batch("INSERT INTO customers VALUES ('C9', 'Grace', 'g@x')")
        .unwrap();
    w.until(T, "the parked order to land", || {
        scalar(&mut c, "SELECT count(*) FROM orders WHERE id = 10") == 1
    });
    caught_up(&mut w, &mut c, &e1);
    assert_eq!(
        peer_rows(&e1, "SELECT id, customer, total FROM orders"),
        vec![vec!["10".to_string(), "C9".into(), "5.00".into()]]
    );
}

fn metric(addr: &str, line_prefix: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line_prefix} not in:\n{r}"))
}

/// `/healthz`: the status code and the body.
fn healthz(addr: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let code = r.split_whitespace().nth(1).unwrap_or("").to_string();
    let body = r
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn listen_addr(cfg: &str) -> String {
    cfg.lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string()
}

#[test]
fn no_echo_each_write_is_applied_once_at_every_other_peer() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute(
        "CREATE TABLE customers (id text PRIMARY KEY, name text);
         CREATE TABLE orders (id int PRIMARY KEY, customer text REFERENCES customers);
         SELECT sync_track('customers'); SELECT sync_track('orders');",
    )
    .unwrap();
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let (e1, e2) = (dir.path().join("edge1.db"), dir.path().join("edge2.db"));
    let cfg = config(&cluster, &db, "w", &two_peers(dir.path()));
    let addr = listen_addr(&cfg);
    let mut w = WorkerProc::start(&cfg, &[]);
    all_caught_up(&mut w, &mut c, &[&e1, &e2]);
    let applied = |p: &str| {
        metric(
            &addr,
            &format!("tributary_destination_applied_total{{destination=\"{p}\",kind=\"sqlite\"}} "),
        )
    };
    // The heartbeats of caught_up count as hub writes too: measure them.
    let (a1, a2) = (applied("edge1"), applied("edge2"));
    let markers = scalar(&mut c, "SELECT count(*) FROM marker");
    let k = 5;
    let mut hub_writes = 0.0;
    for i in 0..k {
        // The hub: a parent and its child in one transaction.
        c.batch_execute(&format!(
            "BEGIN; INSERT INTO customers VALUES ('h{i}', 'hub'); INSERT INTO orders VALUES ({i}, 'h{i}'); COMMIT;"
        ))
        .unwrap();
        hub_writes += 2.0;
        // edge1: a parent and child in one SQLite transaction, and a row of
        // the table with hostile names.
        lite(&e1)
            .execute_batch(&format!(
                r#"BEGIN; INSERT INTO customers VALUES ('a{i}', 'edge1'); INSERT INTO orders VALUES ({}, 'a{i}');
                   INSERT INTO "tab'le" ("]", """") VALUES ({i}, 'q"{i}'); COMMIT;"#,
                100 + i
            ))
            .unwrap();
        // edge2: an update of the hub's new row, once it has it (an update
        // of a row not there yet changes nothing, and sends nothing).
        w.until(T, "edge2 to hold the hub's row", || {
            rows(&e2, &format!("SELECT 1 FROM customers WHERE id = 'h{i}'")).len() == 1
        });
        lite(&e2)
            .execute_batch(&format!(
                "UPDATE customers SET name = 'edge2 {i}' WHERE id = 'h{i}'"
            ))
            .unwrap();
        w.until(T, "the outboxes to drain", || {
            outbox_len(&e1) == 0 && outbox_len(&e2) == 0
        });
    }
    all_caught_up(&mut w, &mut c, &[&e1, &e2]);
    // Every write reached every other place once: edge1 got the hub's and
    // edge2's, edge2 the hub's and edge1's; nobody got their own back. (The
    // markers caught_up writes at the hub count as hub writes.)
    let hub_writes = hub_writes + (scalar(&mut c, "SELECT count(*) FROM marker") - markers) as f64;
    let (d1, d2) = (applied("edge1") - a1, applied("edge2") - a2);
    let edge1_writes = 3.0 * k as f64;
    let edge2_writes = k as f64;
    assert_eq!(d1, hub_writes + edge2_writes, "edge1 applies");
    assert_eq!(d2, hub_writes + edge1_writes, "edge2 applies");
    assert_eq!(
        hub_rows(&mut c, r#"SELECT "]"::text, """" FROM "tab'le" ORDER BY 1"#).len(),
        k
    );
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM orders"), 2 * k as i64);
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM sync_pending"),
        0,
        "parents came first"
    );
    for p in [&e1, &e2] {
        assert_eq!(
            peer_rows(p, "SELECT id, name FROM customers ORDER BY id"),
            hub_rows(&mut c, "SELECT id, name FROM customers ORDER BY id")
        );
    }
}

/// Random writes by an app on a peer file, on keys 1..40.
fn peer_churn(path: &Path, txns: usize, tag: &str) {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let app = lite(path);
    for _ in 0..txns {
        let id = rng.gen_range(1..40);
        let sql = match rng.gen_range(0..4) {
            0 => format!("INSERT INTO items (id, v) VALUES ({id}, '{tag}{id}') ON CONFLICT (id) DO UPDATE SET v = excluded.v"),
            1 | 2 => format!("UPDATE items SET v = '{tag}' || v WHERE id = {id}"),
            _ => format!("DELETE FROM items WHERE id = {id}"),
        };
        app.execute_batch(&sql).unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..15)));
    }
}

fn quiesce(w: &mut WorkerProc, c: &mut Client, peers: &[&Path]) {
    for _ in 0..3 {
        for p in peers {
            let p = p.to_path_buf();
            w.until(T, "the outboxes to drain", || outbox_len(&p) == 0);
        }
        for p in peers {
            caught_up(w, c, p);
        }
    }
}

#[test]
fn hub_and_two_peers_writing_the_same_keys_at_once_converge() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute("INSERT INTO items (id, v) SELECT g, 'seed' FROM generate_series(1, 30) g")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let (e1, e2) = (dir.path().join("edge1.db"), dir.path().join("edge2.db"));
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", &two_peers(dir.path())), &[]);
    caught_up(&mut w, &mut c, &e1);
    caught_up(&mut w, &mut c, &e2);
    let t1 = {
        let p = e1.clone();
        std::thread::spawn(move || peer_churn(&p, 150, "a"))
    };
    let t2 = {
        let p = e2.clone();
        std::thread::spawn(move || peer_churn(&p, 150, "b"))
    };
    churn(&mut c, 60);
    t1.join().unwrap();
    t2.join().unwrap();
    quiesce(&mut w, &mut c, &[&e1, &e2]);
    let hub = hub_items(&mut c);
    assert!(!hub.is_empty());
    assert_eq!(peer_items(&e1), hub, "edge1 converged");
    assert_eq!(peer_items(&e2), hub, "edge2 converged");
    assert!(w.running());
}

#[test]
fn a_crash_mid_pull_loses_nothing_and_applies_nothing_twice() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let e1 = dir.path().join("edge1.db");
    let cfg = config(&cluster, &db, "w", &two_peers(dir.path()));
    let mut w = WorkerProc::start(&cfg, &[]);
    caught_up(&mut w, &mut c, &e1);
    let mut n = 0;
    for point in [
        "pull.before_hub_commit",
        "pull.after_hub_commit",
        "pull.after_hub_commit",
    ] {
        w.kill9();
        let fp = format!("{point}:1");
        w.spawn(&[("TRIBUTARY_FAILPOINT", fp.as_str())]);
        n += 1;
        lite(&e1)
            .execute_batch(&format!(
                "INSERT INTO items (id, v) VALUES ({n}, 'edge1 {n}')"
            ))
            .unwrap();
        let st = w
            .wait(T)
            .unwrap_or_else(|| panic!("{fp} not reached:\n{}", w.log_text()));
        assert!(!st.success());
    }
    w.spawn(&[]);
    w.until(T, "the outbox to drain", || outbox_len(&e1) == 0);
    caught_up(&mut w, &mut c, &e1);
    // Every change once at the hub: present, at its first revision, and
    // in the queue once.
    assert_eq!(
        hub_rows(
            &mut c,
            "SELECT id::text, v, sync_version::text FROM items ORDER BY id"
        ),
        (1..=n)
            .map(|i| vec![i.to_string(), format!("edge1 {i}"), "1".into()])
            .collect::<Vec<_>>()
    );
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) FROM tributary.queue_audit WHERE tbl = 'public.items'"
        ),
        n as i64
    );
    assert_eq!(peer_items(&e1), hub_items(&mut c));
}

#[test]
fn an_offline_delete_against_a_hub_update_ends_the_same_everywhere_and_stays_dead() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute("INSERT INTO items (id, v) VALUES (1, 'one'), (2, 'two')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let (e1, e2) = (dir.path().join("edge1.db"), dir.path().join("edge2.db"));
    let cfg = config(&cluster, &db, "w", &two_peers(dir.path()));
    let mut w = WorkerProc::start(&cfg, &[]);
    caught_up(&mut w, &mut c, &e1);
    caught_up(&mut w, &mut c, &e2);
    assert!(w.sigterm(T).success());
    // Offline: edge1 deletes row 1 while the hub updates it, from the same
    // revision; edge2 edits row 2 from its old revision, after the hub
    // deleted row 2.
    lite(&e1)
        .execute_batch("DELETE FROM items WHERE id = 1")
        .unwrap();
    c.batch_execute("UPDATE items SET v = 'hub edit' WHERE id = 1; DELETE FROM items WHERE id = 2")
        .unwrap();
    lite(&e2)
        .execute_batch("UPDATE items SET v = 'stale edit' WHERE id = 2")
        .unwrap();
    w.spawn(&[]);
    quiesce(&mut w, &mut c, &[&e1, &e2]);
    let hub = hub_items(&mut c);
    assert_eq!(peer_items(&e1), hub);
    assert_eq!(peer_items(&e2), hub);
    assert!(
        hub.iter().all(|(id, _)| *id != 2),
        "a stale edit does not bring a deleted row back"
    );
    // Tombstones purged: still the same everywhere, and nothing returns.
    c.batch_execute("SET tributary.retention = '0'; SELECT sync_cleanup()")
        .unwrap();
    lite(&e1)
        .execute_batch("INSERT INTO items (id, v) VALUES (3, 'after cleanup')")
        .unwrap();
    quiesce(&mut w, &mut c, &[&e1, &e2]);
    let hub2 = hub_items(&mut c);
    assert_eq!(peer_items(&e1), hub2);
    assert_eq!(peer_items(&e2), hub2);
    assert!(hub2.iter().all(|(id, _)| *id != 2));
}

#[test]
fn a_peer_behind_the_hub_tracking_epoch_is_copied_anew() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute("INSERT INTO items (id, v) VALUES (1, 'one'), (2, 'two')")
        .unwrap();
    setup_worker_role(&db, &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge1.db");
    let mut w = WorkerProc::start(
        &config(&cluster, &db, "w", &sqlite_dest("edge1", &path)),
        &[],
    );
    caught_up(&mut w, &mut c, &path);
    assert!(w.sigterm(T).success());
    // Untracked for a while: a delete that no one is told about. Then a
    // table with rows is tracked for the first time.
    c.batch_execute(
        "SELECT sync_untrack('items', false); DELETE FROM items WHERE id = 2; SELECT sync_track('items');
         CREATE TABLE late (id int PRIMARY KEY, v text); INSERT INTO late VALUES (1, 'already there');
         SELECT sync_track('late');",
    )
    .unwrap();
    c.batch_execute("SELECT sync_worker_grant('worker')")
        .unwrap();
    w.spawn(&[]);
    caught_up(&mut w, &mut c, &path);
    assert_eq!(peer_items(&path), hub_items(&mut c));
    assert_eq!(
        peer_rows(&path, "SELECT id, v FROM late"),
        vec![vec!["1".to_string(), "already there".into()]]
    );
    assert!(w.log_text().contains("copying it anew"), "{}", w.log_text());
    // Settled: another restart does not copy again.
    let copies = w.log_text().matches("initial copy sent").count();
    assert!(w.sigterm(T).success());
    w.spawn(&[]);
    caught_up(&mut w, &mut c, &path);
    assert_eq!(w.log_text().matches("initial copy sent").count(), copies);
}

#[test]
fn the_loser_of_a_priority_conflict_receives_the_winner() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute(
        "INSERT INTO items (id, v) VALUES (1, 'base');
         SELECT sync_set_peer('edge1', 1), sync_set_peer('edge2', 2);",
    )
    .unwrap();
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let (e1, e2) = (dir.path().join("edge1.db"), dir.path().join("edge2.db"));
    let cfg = config(&cluster, &db, "w", &two_peers(dir.path()));
    let addr = listen_addr(&cfg);
    let mut w = WorkerProc::start(&cfg, &[]);
    caught_up(&mut w, &mut c, &e1);
    caught_up(&mut w, &mut c, &e2);
    let snapshot_tables = metric(
        &addr,
        "tributary_snapshot_tables_total{destination=\"edge1\",kind=\"sqlite\"} ",
    );
    assert_eq!(snapshot_tables, 4.0, "the copy's progress is in /metrics");
    assert!(w.sigterm(T).success());
    // Both peers edit the same column from the same revision, offline.
    lite(&e2)
        .execute_batch("UPDATE items SET v = 'edge2 says' WHERE id = 1")
        .unwrap();
    lite(&e1)
        .execute_batch("UPDATE items SET v = 'edge1 says' WHERE id = 1")
        .unwrap();
    w.spawn(&[]);
    quiesce(&mut w, &mut c, &[&e1, &e2]);
    let want = vec![(1, "edge1 says".to_string())];
    assert_eq!(
        hub_items(&mut c),
        want,
        "the better priority wins at the hub"
    );
    assert_eq!(peer_items(&e1), want);
    assert_eq!(
        peer_items(&e2),
        want,
        "the loser gets the winner's value back"
    );
}

/// Runs `f` with a worker serving a SQLite peer edge1 (pulling every
/// 50 ms) and a queue `audit`, both taking `items`, once edge1 is copied.
fn with_peer_and_queue(f: impl FnOnce(&mut Client, &mut WorkerProc, &Path)) {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge1.db");
    let dests = peer_and_queue(&path, r#""public.items""#);
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", &dests), &[]);
    caught_up(&mut w, &mut c, &path);
    f(&mut c, &mut w, &path);
}

#[test]
fn a_pull_blocked_by_the_apps_write_lock_leaves_the_worker_and_the_queue_going() {
    with_peer_and_queue(|c, w, path| {
        let queued = |c: &mut Client| scalar(c, "SELECT count(*) FROM tributary.queue_audit");
        // The app edits, then holds the write lock past the busy timeout: the
        // pull cannot clear what it sent, the push cannot write.
        let app = lite(path);
        app.execute_batch(
            "INSERT INTO items (id, v) VALUES (1, 'from edge1');
         BEGIN IMMEDIATE; CREATE TABLE app_scratch (x int);",
        )
        .unwrap();
        assert_eq!(outbox_len(path), 1);
        for i in 10..13 {
            c.batch_execute(&format!("INSERT INTO items (id, v) VALUES ({i}, 'hub')"))
                .unwrap();
        }
        w.until(
            T,
            "the queue to keep receiving while edge1 is locked",
            || queued(c) >= 3,
        );
        // Past the busy timeout, with the pull failing at least once.
        let log = w.log.clone();
        w.until(T, "the pull to fail on the lock", || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("pull failed: this peer's pull waits")
        });
        c.batch_execute("INSERT INTO items (id, v) VALUES (13, 'hub')")
            .unwrap();
        w.until(T, "the queue to go on", || queued(c) >= 4);
        assert!(w.running(), "the worker keeps running:\n{}", w.log_text());
        app.execute_batch("ROLLBACK").unwrap();
        drop(app);
        w.until(T, "edge1's edit at the hub and its outbox cleared", || {
            outbox_len(path) == 0
                && scalar(c, "SELECT count(*) FROM items WHERE v = 'from edge1'") == 1
        });
        caught_up(w, c, path);
        assert_eq!(peer_items(path), hub_items(c));
        assert!(w.running());
    });
}

#[test]
fn an_outbox_value_the_pull_cannot_read_stops_only_that_pull_until_it_is_fixed() {
    with_peer_and_queue(|c, w, path| {
        // An app (or a bad tool) leaves an outbox row whose base revision is
        // not a number.
        lite(path)
            .execute_batch(
                "BEGIN;
             INSERT INTO items (id, v) VALUES (1, 'from edge1');
             UPDATE _tributary_outbox SET base = 'not a number';
             COMMIT;",
            )
            .unwrap();
        let log = w.log.clone();
        w.until(T, "the pull to fail on the value", || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("pull failed: this peer's pull waits")
        });
        // The push side of edge1 and the queue go on.
        c.batch_execute("INSERT INTO items (id, v) VALUES (2, 'hub two')")
            .unwrap();
        caught_up(w, c, path);
        assert_eq!(scalar(c, "SELECT count(*) FROM tributary.queue_audit"), 1);
        assert!(
            peer_items(path).contains(&(2, "hub two".to_string())),
            "edge1 still receives"
        );
        assert_eq!(scalar(c, "SELECT count(*) FROM items WHERE id = 1"), 0);
        assert!(w.running(), "the worker keeps running:\n{}", w.log_text());
        // Fixed: the edit goes through, and everything converges.
        lite(path)
            .execute_batch("UPDATE _tributary_outbox SET base = NULL")
            .unwrap();
        w.until(T, "edge1's edit at the hub", || {
            scalar(c, "SELECT count(*) FROM items WHERE v = 'from edge1'") == 1
        });
        w.until(T, "the outbox cleared", || outbox_len(path) == 0);
        caught_up(w, c, path);
        assert_eq!(peer_items(path), hub_items(c));
        assert_eq!(
            scalar(c, "SELECT count(*) FROM tributary.queue_audit"),
            2,
            "the queue got the hub's row and edge1's, once each"
        );
        assert!(w.running());
    });
}

#[test]
fn a_200_byte_origin_goes_through_sync_apply_the_stream_and_a_sqlite_peer() {
    with_peer_and_queue(|c, w, path| {
        let origin = format!("peer-{}", "é".repeat(50)) + &"o".repeat(95);
        assert_eq!(origin.len(), 200);
        let applied: Vec<String> = c
            .query(
                r#"SELECT outcome FROM sync_apply('items',
                 '[{"op":"I","pk":{"id":1},"data":{"id":1,"v":"long"},"version":1},
                   {"op":"I","pk":{"id":2},"data":{"id":2,"v":"two"},"version":1}]', $1)"#,
                &[&origin],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(applied, vec!["NEW_RECORD", "NEW_RECORD"]);
        // A local session under the same origin, and a second change of that
        // key (its column stamps are read back).
        c.batch_execute(&format!(
        "SET tributary.origin = '{origin}'; UPDATE items SET v = 'longer' WHERE id = 1; RESET tributary.origin;"
    ))
    .unwrap();
        let outcome: String = c
            .query_one(
                r#"SELECT outcome FROM sync_apply('items',
                 '[{"op":"U","pk":{"id":2},"data":{"id":2,"v":"two!"},"version":2}]', $1)"#,
                &[&origin],
            )
            .unwrap()
            .get(0);
        assert_eq!(outcome, "VERSION_WIN");
        // Commit-safe: a change shows once every older transaction (the
        // worker's among them) has ended, so wait for both.
        let origins_q = "SELECT origin FROM sync_changes_since(0) \
                         WHERE tbl = 'items'::regclass ORDER BY pk->>'id'";
        w.until(T, "both changes readable", || {
            c.query(origins_q, &[]).unwrap().len() == 2
        });
        let origins: Vec<Option<String>> = c
            .query(origins_q, &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(origins, vec![Some(origin.clone()), Some(origin.clone())]);
        caught_up(w, c, path);
        assert_eq!(
            peer_items(path),
            vec![(1, "longer".to_string()), (2, "two!".to_string())]
        );
        let queued = scalar(
            c,
            &format!("SELECT count(*) FROM tributary.queue_audit WHERE origin = '{origin}'"),
        );
        assert_eq!(queued, 4, "the stream carries the origin whole");
        // The peer edits the row the long origin wrote; the hub resolves it.
        lite(path)
            .execute("UPDATE items SET v = 'edge1 wins' WHERE id = 1", [])
            .unwrap();
        w.until(T, "edge1's edit at the hub", || {
            scalar(c, "SELECT count(*) FROM items WHERE v = 'edge1 wins'") == 1
        });
        caught_up(w, c, path);
        assert_eq!(peer_items(path), hub_items(c));
        assert!(w.running());
    });
}

#[test]
fn a_peer_file_holding_another_hubs_position_is_copied_anew_with_its_unsent_edits() {
    // Hub A, then hub B (another cluster: a restored hub looks the same to
    // the file). Their WAL positions have nothing to do with each other.
    let (ca, cb) = (Cluster::start(), Cluster::start());
    let (da, dbb) = (ca.db(), cb.db());
    let (mut a, mut b) = (da.connect(), dbb.connect());
    for (db, c) in [(&da, &mut a), (&dbb, &mut b)] {
        setup(c);
        setup_worker_role(db, &[]);
    }
    a.batch_execute("INSERT INTO items (id, v) VALUES (1, 'from A')")
        .unwrap();
    // A's WAL runs well ahead of B's: the file's position in A is beyond
    // anything B has written yet.
    a.batch_execute(
        "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 20000) g",
    )
    .unwrap();
    b.batch_execute("INSERT INTO items (id, v) VALUES (2, 'from B'), (3, 'also B')")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge1.db");
    let dest = sqlite_dest("edge1", &path).replace("tables =", "pull_interval_ms = 50\ntables =");
    let mut w = WorkerProc::start(&config(&ca, &da, "w", &dest), &[]);
    caught_up(&mut w, &mut a, &path);
    assert_eq!(peer_items(&path), vec![(1, "from A".to_string())]);
    w.sigterm(T);
    // An edit made while no worker runs: unsent.
    lite(&path)
        .execute("INSERT INTO items (id, v) VALUES (9, 'offline edit')", [])
        .unwrap();
    assert_eq!(outbox_len(&path), 1);

    let mut w = WorkerProc::start(&config(&cb, &dbb, "w", &dest), &[]);
    // The pull clears its outbox row only after the hub committed the
    // edit: wait for both.
    w.until(T, "B's rows and the offline edit at B", || {
        scalar(
            &mut b,
            "SELECT count(*) FROM items WHERE v = 'offline edit'",
        ) == 1
            && outbox_len(&path) == 0
    });
    caught_up(&mut w, &mut b, &path);
    assert_eq!(
        peer_items(&path),
        hub_items(&mut b),
        "the file now mirrors B"
    );
    assert_eq!(
        peer_items(&path),
        vec![
            (2, "from B".to_string()),
            (3, "also B".to_string()),
            (9, "offline edit".to_string())
        ]
    );
    assert_eq!(outbox_len(&path), 0);
    assert!(w
        .log_text()
        .contains("the file's position is in another hub's WAL"));
    assert!(w.running());
}

#[test]
fn a_peer_file_naming_a_table_outside_its_destination_gets_nothing_written_or_read() {
    with_peer_and_queue(|c, w, path| {
        // A table the worker may write (another destination takes it), but
        // that edge1's destination ("public.*", "sales.*") does not.
        c.batch_execute(
            r#"CREATE SCHEMA "h'r"; CREATE TABLE "h'r"."pay]roll" (id int PRIMARY KEY, salary int);
               SELECT sync_track('"h''r"."pay]roll"');
               INSERT INTO "h'r"."pay]roll" VALUES (1, 100);
               SELECT sync_worker_grant('worker');"#,
        )
        .unwrap();
        // The app writes the file's bookkeeping by hand: a mapping to that
        // table, and one whose name is SQL, each with an edit.
        lite(path)
            .execute_batch(
                r#"CREATE TABLE sneaky (id INTEGER PRIMARY KEY, salary INTEGER);
                   INSERT INTO _tributary_tables (tbl, hub) VALUES ('sneaky', '"h''r"."pay]roll"');
                   INSERT INTO _tributary_tables (tbl, hub) VALUES ('evil', '"public"."marker"; DROP TABLE marker; --');
                   INSERT INTO _tributary_outbox (tbl, pk, op, data, base)
                        VALUES ('sneaky', '{"id":1}', 'U', '{"id":1,"salary":999999}', 1),
                               ('evil', '{"id":1}', 'I', '{"id":1}', NULL);
                   INSERT INTO items (id, v) VALUES (5, 'a fair edit');"#,
            )
            .unwrap();
        w.until(T, "the outbox handled", || outbox_len(path) == 0);
        assert_eq!(
            scalar(
                c,
                r#"SELECT salary::int8 FROM "h'r"."pay]roll" WHERE id = 1"#
            ),
            100,
            "nothing written outside the destination"
        );
        assert!(
            scalar(c, "SELECT count(*) FROM marker") >= 1,
            "the name was never run as SQL"
        );
        assert_eq!(
            scalar(c, "SELECT count(*) FROM items WHERE v = 'a fair edit'"),
            1,
            "the fair edit in the same round went through"
        );
        let errors: Vec<(String, String, Option<String>)> = {
            let app = lite(path);
            let mut st = app
                .prepare("SELECT tbl, outcome || ': ' || detail, hub_row FROM _tributary_errors ORDER BY tbl")
                .unwrap();
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            rows
        };
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].0, "evil");
        assert!(
            errors[0].1.starts_with("REJECTED") && errors[0].1.contains("42602"),
            "{errors:?}"
        );
        assert_eq!(errors[1].0, "sneaky");
        assert!(
            errors[1].1.contains("42501") && errors[1].1.contains("edge1"),
            "{errors:?}"
        );
        assert_eq!(errors[1].2, None, "no hub row is handed back");
        assert!(
            rows(path, "SELECT count(*) FROM sneaky") == vec![vec![V::Integer(0)]],
            "no write-back of the payroll row"
        );
        caught_up(w, c, path);
        assert!(w.running());
    });
}

#[test]
fn what_a_peers_delete_cascades_to_at_the_hub_reaches_that_peer_too() {
    with_peer_and_queue(|c, w, path| {
        c.batch_execute(
            r#"CREATE TABLE "pa'rent" (id int PRIMARY KEY, v text);
               CREATE TABLE "ch]ild" (id int PRIMARY KEY, "pa'rent" int REFERENCES "pa'rent" ON DELETE CASCADE);
               CREATE TABLE "re""f" (id int PRIMARY KEY, "pa'rent" int REFERENCES "pa'rent" ON DELETE SET NULL);
               SELECT sync_track('"pa''rent"'); SELECT sync_track('"ch]ild"'); SELECT sync_track('"re""f"');
               SELECT sync_worker_grant('worker');
               INSERT INTO "pa'rent" VALUES (1, 'p1'), (2, 'p2');
               INSERT INTO "ch]ild" VALUES (10, 1), (11, 1), (20, 2);
               INSERT INTO "re""f" VALUES (100, 1), (200, 2);"#,
        )
        .unwrap();
        caught_up(w, c, path);
        assert_eq!(
            rows(path, r#"SELECT count(*) FROM "ch]ild""#),
            vec![vec![V::Integer(3)]]
        );
        // The peer deletes a parent; at the hub that deletes two children
        // and clears a reference. The peer has no foreign keys: only the
        // stream can bring it those.
        lite(path)
            .execute(r#"DELETE FROM "pa'rent" WHERE id = 1"#, [])
            .unwrap();
        w.until(T, "the peer's delete at the hub", || {
            scalar(c, r#"SELECT count(*) FROM "pa'rent" WHERE id = 1"#) == 0
        });
        caught_up(w, c, path);
        assert_eq!(
            rows(path, r#"SELECT id FROM "ch]ild" ORDER BY id"#),
            vec![vec![V::Integer(20)]],
            "the cascaded deletes reached the peer"
        );
        assert_eq!(
            rows(path, r#"SELECT id, "pa'rent" FROM "re""f" ORDER BY id"#),
            vec![
                vec![V::Integer(100), V::Null],
                vec![V::Integer(200), V::Integer(2)]
            ],
            "the cascaded update reached the peer"
        );
        // At the hub, the parent's delete is the peer's; the rest is local.
        let origins: Vec<(String, Option<String>)> = c
            .query(
                "SELECT relid::regclass::text, origin FROM tributary.tombstones ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            origins,
            vec![
                (r#""ch]ild""#.to_string(), None),
                (r#""ch]ild""#.to_string(), None),
                (r#""pa'rent""#.to_string(), Some("edge1".to_string()))
            ]
        );
        assert_eq!(
            scalar(
                c,
                r#"SELECT count(*) FROM "re""f" WHERE id = 100 AND "pa'rent" IS NULL AND sync_origin IS NULL"#
            ),
            1
        );
        assert!(w.running());
    });
}

#[test]
fn a_peer_refusing_the_hubs_rows_is_set_aside_while_the_others_go_on_then_converges() {
    with_peer_and_queue(|c, w, path| {
        let queued = |c: &mut Client| scalar(c, "SELECT count(*) FROM tributary.queue_audit");
        // The app adds its own rule to its file: no two items with one name.
        lite(path)
            .execute_batch(r#"CREATE UNIQUE INDEX "app's rule" ON items (v);"#)
            .unwrap();
        c.batch_execute("INSERT INTO items (id, v) VALUES (1, 'same'), (2, 'same')")
            .unwrap();
        let log = w.log.clone();
        w.until(T, "edge1 set aside", || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("detached; the other destinations go on")
        });
        // The queue keeps receiving, and the worker keeps running.
        for i in 3..6 {
            c.batch_execute(&format!("INSERT INTO items (id, v) VALUES ({i}, 'n{i}')"))
                .unwrap();
        }
        w.until(T, "the queue to go on", || queued(c) == 5);
        assert!(w.running(), "{}", w.log_text());
        assert!(peer_items(path).is_empty(), "nothing half-applied at edge1");
        // The app drops its rule: the peer converges on the next retry.
        lite(path)
            .execute_batch(r#"DROP INDEX "app's rule";"#)
            .unwrap();
        caught_up(w, c, path);
        assert_eq!(peer_items(path), hub_items(c));
        assert_eq!(queued(c), 5, "the queue got everything once");
        assert!(w.running());
    });
}

/// What the worker logs when a peer file is below the hub's record of it.
const WENT_BACK: &str = "below the one the hub recorded for it";

/// Runs `f` with a worker serving a SQLite peer edge1 (every table of
/// `public` and `sales`, pulling every 50 ms) and a queue `audit` taking
/// the hub table `"it'em]s"` and the schema `elsewhere` (which the peer
/// does not take), once edge1 is copied. `f` gets the worker's HTTP
/// address too.
fn with_peer_and_audited_table(f: impl FnOnce(&mut Client, &mut WorkerProc, &Path, &str)) {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute(
        r#"CREATE TABLE "it'em]s" (id int PRIMARY KEY, v text); SELECT sync_track('"it''em]s"');
           CREATE SCHEMA elsewhere; CREATE TABLE elsewhere.log (id serial PRIMARY KEY);
           SELECT sync_track('elsewhere.log');"#,
    )
    .unwrap();
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge1.db");
    let dests = peer_and_queue(&path, r#""public.it'em]s", "elsewhere.*""#);
    let cfg = config(&cluster, &db, "w", &dests);
    let mut w = WorkerProc::start(&cfg, &[]);
    caught_up(&mut w, &mut c, &path);
    f(&mut c, &mut w, &path, &listen_addr(&cfg));
}

fn hostile_hub(c: &mut Client) -> Vec<(i64, String)> {
    c.query(r#"SELECT id::int8, v FROM "it'em]s" ORDER BY id"#, &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn hostile_peer(path: &Path) -> Vec<(i64, String)> {
    rows(path, r#"SELECT id, v FROM "it'em]s" ORDER BY id"#)
        .into_iter()
        .map(|r| match (&r[0], &r[1]) {
            (V::Integer(i), V::Text(s)) => (*i, s.clone()),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// The position the hub recorded for edge1's file.
fn recorded_lsn(c: &mut Client) -> Option<String> {
    c.query_opt(
        "SELECT lsn::text FROM tributary.worker_progress WHERE slot = 'w' AND destination = 'edge1'",
        &[],
    )
    .unwrap()
    .map(|r| r.get(0))
}

/// The queue's changes of `"it'em]s"`, in order: (op, id, v).
fn audited(c: &mut Client) -> Vec<(String, i64, Option<String>)> {
    c.query(
        "SELECT op, (pk->>'id')::int8, data->>'v' FROM tributary.queue_audit
          WHERE tbl NOT LIKE 'elsewhere.%' ORDER BY lsn, ord",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn lsn(s: &str) -> tributary_worker::lsn::Lsn {
    s.parse().unwrap()
}

/// Copies `from` into `to` with SQLite's online backup API, as an app
/// backs its file up (or restores it) while the worker writes it.
fn online_backup(from: &Path, to: &Path) {
    use rusqlite::backup::{Backup, StepResult};
    let src = lite(from);
    let mut dst = lite(to);
    let b = Backup::new(&src, &mut dst).unwrap();
    // All pages in one step: one read transaction, a consistent copy; a
    // busy or locked step (the worker writing) is tried again.
    while b.step(-1).unwrap() != StepResult::Done {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_peer_file_restored_from_an_older_backup_of_itself_is_copied_anew_with_its_unsent_edits() {
    with_peer_and_audited_table(|c, w, path, _| {
        c.batch_execute(r#"INSERT INTO "it'em]s" VALUES (1, 'one'), (2, 'two'), (3, 'three')"#)
            .unwrap();
        caught_up(w, c, path);
        let backup = path.with_file_name("edge1-backup.db");
        online_backup(path, &backup);
        let backed_up = peer_lsn(&backup).unwrap();
        // The hub goes on, and the file with it, past the backup.
        c.batch_execute(
            r#"INSERT INTO "it'em]s" VALUES (4, 'four'), (5, 'five');
               UPDATE "it'em]s" SET v = 'uno' WHERE id = 1;
               DELETE FROM "it'em]s" WHERE id = 2;"#,
        )
        .unwrap();
        caught_up(w, c, path);
        assert!(w.sigterm(T).success());
        // The hub recorded where the file stood, and the slot moved past the
        // backup's position with it.
        let at_stop = peer_lsn(path).unwrap();
        assert_eq!(recorded_lsn(c).as_deref(), Some(&*at_stop));
        assert!(lsn(&at_stop) > lsn(&backed_up));
        // The app restores the backup (worker stopped), then edits it.
        lite(path)
            .restore(
                rusqlite::MAIN_DB,
                &backup,
                None::<fn(rusqlite::backup::Progress)>,
            )
            .unwrap();
        assert_eq!(peer_lsn(path), Some(backed_up.clone()));
        lite(path)
            .execute(
                r#"INSERT INTO "it'em]s" (id, v) VALUES (9, 'offline edit')"#,
                [],
            )
            .unwrap();
        assert_eq!(outbox_len(path), 1);

        w.spawn(&[]);
        w.until(T, "the offline edit at the hub", || {
            scalar(
                c,
                r#"SELECT count(*) FROM "it'em]s" WHERE v = 'offline edit'"#,
            ) == 1
        });
        caught_up(w, c, path);
        let want = [
            (1, "uno"),
            (3, "three"),
            (4, "four"),
            (5, "five"),
            (9, "offline edit"),
        ]
        .map(|(i, v)| (i, v.to_string()))
        .to_vec();
        assert_eq!(hostile_hub(c), want);
        assert_eq!(hostile_peer(path), want, "the file is the hub's again");
        w.until(T, "the outbox cleared", || outbox_len(path) == 0);
        let log = w.log_text();
        let warned = log
            .lines()
            .find(|l| l.contains(WENT_BACK))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(
            warned.contains("WARN") && warned.contains("edge1"),
            "{warned}"
        );
        assert!(
            warned.contains(&backed_up) && warned.contains(&at_stop),
            "{warned}"
        );
        // The queue got every change of the table once, in order.
        w.until(T, "the queue to get the offline edit", || {
            audited(c).len() >= 8
        });
        let ch = |op: &str, id, v: Option<&str>| (op.to_string(), id, v.map(String::from));
        assert_eq!(
            audited(c),
            vec![
                ch("I", 1, Some("one")),
                ch("I", 2, Some("two")),
                ch("I", 3, Some("three")),
                ch("I", 4, Some("four")),
                ch("I", 5, Some("five")),
                ch("U", 1, Some("uno")),
                ch("D", 2, None),
                ch("I", 9, Some("offline edit")),
            ]
        );
        assert!(w.running(), "{}", w.log_text());
    });
}

#[test]
fn a_peer_file_behind_the_slot_only_by_what_it_does_not_take_is_not_copied_again() {
    with_peer_and_audited_table(|c, w, path, addr| {
        c.batch_execute(r#"INSERT INTO "it'em]s" VALUES (1, 'one')"#)
            .unwrap();
        caught_up(w, c, path);
        let at = peer_lsn(path).unwrap();
        let copies = rows(
            path,
            "SELECT tbl, hub, epoch FROM _tributary_tables ORDER BY tbl",
        );
        // Writes the peer does not take: the slot is confirmed past the
        // file's last transaction, as an idle worker's is.
        c.batch_execute("INSERT INTO elsewhere.log DEFAULT VALUES")
            .unwrap();
        w.until(T, "the slot confirmed past the file's position", || {
            let confirmed: String = c
                .query_one(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'w'",
                    &[],
                )
                .unwrap()
                .get(0);
            lsn(&confirmed) > lsn(&at)
        });
        assert!(w.sigterm(T).success());
        assert_eq!(peer_lsn(path).as_deref(), Some(&*at));
        assert_eq!(
            recorded_lsn(c).as_deref(),
            Some(&*at),
            "the hub records the file's position, not the slot's"
        );

        w.spawn(&[]);
        c.batch_execute(r#"UPDATE "it'em]s" SET v = 'uno' WHERE id = 1"#)
            .unwrap();
        caught_up(w, c, path);
        assert_eq!(hostile_peer(path), hostile_hub(c));
        let log = w.log_text();
        assert!(!log.contains(WENT_BACK), "{log}");
        let restarted = log.split("---- start ----").last().unwrap();
        let ready = restarted
            .lines()
            .find(|l| l.contains("sqlite destination ready"))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(ready.contains(&at), "opened at its own position: {ready}");
        assert!(!restarted.contains("initial copy"), "{log}");
        assert_eq!(
            rows(
                path,
                "SELECT tbl, hub, epoch FROM _tributary_tables ORDER BY tbl"
            ),
            copies,
            "the copy's records are untouched"
        );
        let copied_tables = metric(
            addr,
            "tributary_snapshot_tables_total{destination=\"edge1\",kind=\"sqlite\"} ",
        );
        assert_eq!(copied_tables, 0.0, "nothing copied since the restart");
        assert!(w.running());
    });
}

#[test]
fn a_peer_file_restored_under_the_running_worker_is_reopened_and_copied_anew() {
    with_peer_and_audited_table(|c, w, path, _| {
        c.batch_execute(r#"INSERT INTO "it'em]s" VALUES (1, 'one'), (2, 'two')"#)
            .unwrap();
        caught_up(w, c, path);
        let backup = path.with_file_name("edge1-backup.db");
        online_backup(path, &backup);
        c.batch_execute(r#"UPDATE "it'em]s" SET v = 'uno' WHERE id = 1; INSERT INTO "it'em]s" VALUES (3, 'three')"#)
            .unwrap();
        caught_up(w, c, path);
        let at = peer_lsn(path).unwrap();
        w.until(T, "the hub to record the file's position", || {
            recorded_lsn(c).as_deref() == Some(&*at)
        });
        // The app restores the backup while the worker has the file open.
        online_backup(&backup, path);
        assert_ne!(peer_lsn(path).as_deref(), Some(&*at));
        // The worker's next write notices, and the file is copied anew.
        c.batch_execute(r#"INSERT INTO "it'em]s" VALUES (4, 'four')"#)
            .unwrap();
        w.until(T, "the file equal to the hub again", || {
            hostile_peer(path) == hostile_hub(c)
        });
        assert_eq!(hostile_peer(path).len(), 4);
        let log = w.log_text();
        assert!(log.contains("restored or replaced while open"), "{log}");
        assert!(log.contains(WENT_BACK), "{log}");
        w.until(T, "the queue to get the last change", || {
            audited(c).len() >= 4
        });
        assert_eq!(
            audited(c)
                .iter()
                .map(|(op, id, _)| format!("{op}{id}"))
                .collect::<Vec<_>>(),
            ["I1", "I2", "U1", "I3", "I4"].map(String::from),
            "every change once, in order"
        );
        assert!(w.running(), "{}", w.log_text());
    });
}

#[test]
fn a_change_the_peer_refuses_again_and_again_is_set_aside_as_a_dead_letter_and_the_stream_goes_on()
{
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge1.db");
    let dests = format!(
        "{}\n[[destination]]\nname = \"audit\"\nkind = \"queue\"\ntables = [\"public.items\"]\n",
        sqlite_dest("edge1", &path).replace("tables =", "max_attempts = 2\ntables =")
    );
    let cfg = config(&cluster, &db, "w", &dests);
    let addr = listen_addr(&cfg);
    let mut w = WorkerProc::start(&cfg, &[]);
    caught_up(&mut w, &mut c, &path);
    let queued = |c: &mut Client| scalar(c, "SELECT count(*) FROM tributary.queue_audit");
    // The app's own rule in its file, which one hub row breaks.
    lite(&path)
        .execute_batch(r#"CREATE UNIQUE INDEX "app's rule" ON items (v);"#)
        .unwrap();
    c.batch_execute("INSERT INTO items (id, v) VALUES (1, 'same'), (2, 'same'), (3, 'other')")
        .unwrap();
    // Refused twice (max_attempts = 2), then set aside: the hub and the
    // file both say so, and the rest of that transaction and what follows
    // reach the peer.
    w.until(
        Duration::from_secs(120),
        "the dead letter at the hub",
        || scalar(&mut c, "SELECT count(*) FROM sync_dead_letters") == 1,
    );
    for i in 4..6 {
        c.batch_execute(&format!("INSERT INTO items (id, v) VALUES ({i}, 'n{i}')"))
            .unwrap();
    }
    caught_up(&mut w, &mut c, &path);
    assert_eq!(
        peer_items(&path),
        vec![
            (1, "same".into()),
            (3, "other".into()),
            (4, "n4".into()),
            (5, "n5".into())
        ]
    );
    let (dest, tbl, op, pk, error, attempts): (String, String, String, String, String, i32) = c
        .query_one(
            "SELECT destination, tbl, op, pk::text, error, attempts FROM sync_dead_letters",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .unwrap();
    assert_eq!(
        (dest.as_str(), tbl.as_str(), op.as_str(), pk.as_str()),
        ("edge1", "public.items", "I", r#"{"id": 2}"#)
    );
    assert!(error.contains("UNIQUE"), "{error}");
    assert_eq!(attempts, 2);
    let errors = rows(
        &path,
        "SELECT tbl, pk, outcome, detail FROM _tributary_errors",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0][2], V::Text("DEAD_LETTER".into()));
    assert_eq!(
        metric(
            &addr,
            "tributary_destination_dead_letters_total{destination=\"edge1\",kind=\"sqlite\"} "
        ),
        1.0
    );
    // The queue got every change once throughout; the worker runs on,
    // no longer degraded.
    assert_eq!(queued(&mut c), 5);
    assert!(w.running(), "{}", w.log_text());
    w.until(T, "healthz back to streaming", || {
        healthz(&addr) == ("200".to_string(), "streaming\n".to_string())
    });
    // A reader of the table sees the dead letter; a role that may not read
    // it does not.
    c.batch_execute("CREATE ROLE nobody; SET ROLE nobody")
        .unwrap();
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM sync_dead_letters"), 0);
    c.batch_execute("RESET ROLE").unwrap();
}

#[test]
fn a_peer_the_workers_role_may_not_speak_for_waits_alone_until_it_is_registered() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let (e1, e9) = (dir.path().join("edge1.db"), dir.path().join("edge9.db"));
    let dests = format!(
        "{}\n{}\n[[destination]]\nname = \"audit\"\nkind = \"queue\"\ntables = [\"public.items\"]\n",
        sqlite_dest("edge1", &e1).replace("tables =", "pull_interval_ms = 50\ntables ="),
        sqlite_dest("edge9", &e9).replace("tables =", "pull_interval_ms = 50\ntables =")
    );
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", &dests), &[]);
    caught_up(&mut w, &mut c, &e9);
    // edge9 is not registered for the worker's role: its edits wait.
    lite(&e9)
        .execute("INSERT INTO items (id, v) VALUES (9, 'from edge9')", [])
        .unwrap();
    let log = w.log.clone();
    w.until(T, "edge9's pull to be refused", || {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        l.contains("pull failed") && l.contains("permission denied to write as peer 'edge9'")
    });
    // The others go on: edge1's edit lands, hub changes reach the queue and
    // both files.
    lite(&e1)
        .execute("INSERT INTO items (id, v) VALUES (1, 'from edge1')", [])
        .unwrap();
    c.batch_execute("INSERT INTO items (id, v) VALUES (2, 'hub')")
        .unwrap();
    w.until(T, "edge1's edit at the hub", || {
        scalar(&mut c, "SELECT count(*) FROM items WHERE id = 1") == 1
    });
    caught_up(&mut w, &mut c, &e1);
    w.until(T, "the queue", || {
        scalar(&mut c, "SELECT count(*) FROM tributary.queue_audit") == 2
    });
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM items WHERE id = 9"), 0);
    assert!(w.running(), "{}", w.log_text());
    // Registered, it catches up by itself.
    c.batch_execute("SELECT sync_set_peer('edge9', 3, 'worker')")
        .unwrap();
    w.until(T, "edge9's edit at the hub", || {
        scalar(
            &mut c,
            "SELECT count(*) FROM items WHERE id = 9 AND sync_origin = 'edge9'",
        ) == 1
    });
    assert!(w.running());
}

#[test]
fn an_edit_made_while_its_predecessor_is_at_the_hub_follows_it_without_a_conflict() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    setup(&mut c);
    c.batch_execute("INSERT INTO items (id, v) VALUES (1, 'one')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let e1 = dir.path().join("edge1.db");
    let cfg = config(&cluster, &db, "w", &two_peers(dir.path()));
    let mut w = WorkerProc::start(&cfg, &[]);
    caught_up(&mut w, &mut c, &e1);
    // The pull holds still after the hub committed the first edit, before
    // the file records it; the app edits the row again meanwhile.
    w.kill9();
    w.spawn(&[("TRIBUTARY_FAILPOINT", "pull.after_hub_commit:1:sleep=3000")]);
    lite(&e1)
        .execute_batch("UPDATE items SET v = 'first' WHERE id = 1")
        .unwrap();
    let v = |c: &mut Client| -> String {
        c.query_one("SELECT v FROM items WHERE id = 1", &[])
            .unwrap()
            .get(0)
    };
    w.until(T, "the first edit at the hub", || v(&mut c) == "first");
    lite(&e1)
        .execute_batch("UPDATE items SET v = 'second' WHERE id = 1")
        .unwrap();
    w.until(T, "the second edit at the hub", || v(&mut c) == "second");
    w.until(T, "the outbox to drain", || outbox_len(&e1) == 0);
    caught_up(&mut w, &mut c, &e1);
    assert!(w.log_text().contains("pausing"), "{}", w.log_text());
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM tributary.conflicts"),
        0,
        "no conflict of the peer with itself"
    );
    assert!(rows(&e1, "SELECT * FROM _tributary_errors").is_empty());
    assert_eq!(
        hub_rows(&mut c, "SELECT v, sync_version::text FROM items"),
        [["second".to_string(), "3".to_string()]]
    );
    assert_eq!(peer_items(&e1), hub_items(&mut c));
    assert!(w.running());
}
