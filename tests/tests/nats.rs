//! The NATS JetStream destination against a real `nats-server -js`, a real
//! cluster and the real worker: whole and in commit order, exactly once
//! across kill -9 and past the duplicate window, a NATS restart, a full
//! stream (that destination waits, a queue beside it goes on).

use async_nats::jetstream::stream;
use std::collections::HashSet;
use std::time::Duration;
use tributary_e2e::nats::*;
use tributary_e2e::worker::*;
use tributary_e2e::*;

const T: Duration = Duration::from_secs(60);

/// Tables `items` and the hostile `"sa.les"."tab'le"`, tracked; the
/// worker's role with the queue `audit`.
fn hub(cluster: &Cluster) -> Db<'_> {
    let db = cluster.db();
    db.connect()
        .batch_execute(
            r#"CREATE TABLE items (id int PRIMARY KEY, v text);
               CREATE SCHEMA "sa.les"; CREATE TABLE "sa.les"."tab'le" ("]" int PRIMARY KEY, """" text);
               SELECT sync_track('items'), sync_track('"sa.les"."tab''le"');"#,
        )
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    db
}

const AUDIT: &str = "[[destination]]\nname = \"audit\"\nkind = \"queue\"\n";

fn worker(cluster: &Cluster, db: &Db, n: &Nats, stream: &str) -> (String, String) {
    let cfg = config(
        cluster,
        db,
        "w",
        &format!(
            "{AUDIT}\n{}",
            nats_dest("bus", &n.url(), stream, r#"["*.*"]"#)
        ),
    );
    let listen = http_listen(&cfg);
    (cfg, listen)
}

fn queue_len(c: &mut Client) -> i64 {
    scalar(c, "SELECT count(*) FROM tributary.queue_audit")
}

/// Every message once: as many distinct ids (`Nats-Msg-Id`, and the
/// body's (lsn, ord)) as messages, each id the body's.
fn exactly_once(msgs: &[Msg]) -> HashSet<String> {
    let mut ids = HashSet::new();
    for m in msgs {
        let id = m.header("Nats-Msg-Id").unwrap().to_string();
        assert_eq!(
            id,
            format!("{}:{}", m.body["lsn"].as_str().unwrap(), m.body["ord"]),
            "{m:?}"
        );
        assert!(ids.insert(id), "published twice: {m:?}");
    }
    ids
}

fn lsn_ord(m: &Msg) -> (u64, u64) {
    let (hi, lo) = m.body["lsn"].as_str().unwrap().split_once('/').unwrap();
    (
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap(),
        m.body["ord"].as_u64().unwrap(),
    )
}

#[test]
fn changes_reach_the_stream_whole_in_commit_order_and_as_the_queue_has_them() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    let n = Nats::start();
    let (cfg, _) = worker(&cluster, &db, &n, "TRIBUTARY");
    let mut w = WorkerProc::start(&cfg, &[]);
    w.until_slot(&mut db.connect(), "w");
    c.batch_execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 300) g")
        .unwrap();
    for i in 0..10 {
        c.batch_execute(&format!("UPDATE items SET v = 'u{i}' WHERE id <= 5"))
            .unwrap();
    }
    c.batch_execute(
        r#"DELETE FROM items WHERE id > 290;
           INSERT INTO "sa.les"."tab'le" VALUES (1, 'a'), (2, 'b');
           UPDATE "sa.les"."tab'le" SET """" = 'c' WHERE "]" = 1;
           DELETE FROM "sa.les"."tab'le" WHERE "]" = 2;"#,
    )
    .unwrap();
    let want = 300 + 50 + 10 + 4;
    w.until(T, "every change in the queue and the stream", || {
        queue_len(&mut c) == want && messages(&n.url(), "TRIBUTARY").len() as i64 == want
    });
    let msgs = messages(&n.url(), "TRIBUTARY");
    exactly_once(&msgs);
    // One publisher: stream order is commit order (and ord within it).
    assert!(msgs.windows(2).all(|p| lsn_ord(&p[0]) < lsn_ord(&p[1])));
    let subjects: HashSet<&str> = msgs.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        HashSet::from(["tributary.public.items", "tributary.sa%2Eles.tab%27le"])
    );
    // The body is the queue row, field by field.
    let rows = c
        .query(
            "SELECT lsn::text, tbl, op, pk::text, data::text, origin, committed_at::text, hub
               FROM tributary.queue_audit ORDER BY lsn, ord",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), msgs.len());
    for (r, m) in rows.iter().zip(&msgs) {
        let json = |s: Option<String>| {
            s.map_or(serde_json::Value::Null, |s| {
                serde_json::from_str(&s).unwrap()
            })
        };
        assert_eq!(m.body["lsn"], r.get::<_, String>(0));
        assert_eq!(m.body["hub"], r.get::<_, String>(7));
        assert_eq!(m.header("Tributary-Lsn"), Some(r.get::<_, &str>(0)));
        assert_eq!(m.body["tbl"], r.get::<_, String>(1));
        assert_eq!(m.body["op"], r.get::<_, String>(2));
        assert_eq!(m.header("Tributary-Op"), Some(r.get::<_, &str>(2)));
        assert_eq!(m.body["pk"], json(r.get(3)));
        assert_eq!(m.body["data"], json(r.get(4)));
        assert_eq!(
            m.body["origin"],
            r.get::<_, Option<String>>(5)
                .map_or(serde_json::Value::Null, Into::into)
        );
        let same_time: bool = c
            .query_one(
                "SELECT $1::text::timestamptz = $2::text::timestamptz",
                &[
                    &m.body["committed_at"].as_str().unwrap(),
                    &r.get::<_, String>(6),
                ],
            )
            .unwrap()
            .get(0);
        assert!(same_time, "{m:?}");
    }
    assert!(w.running());
}

#[test]
fn kill_9_at_random_moments_leaves_each_change_in_the_stream_exactly_once() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let n = Nats::start();
    let (cfg, _) = worker(&cluster, &db, &n, "TRIBUTARY");
    let mut w = WorkerProc::start(&cfg, &[]);
    w.until_slot(&mut db.connect(), "w");
    let url = cluster.url(&db.name);
    let writer = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut id = 0;
        for t in 0..400 {
            let rows = 1 + t % 5;
            c.batch_execute(&format!(
                "INSERT INTO items SELECT g, 'w' FROM generate_series({}, {}) g",
                id + 1,
                id + rows
            ))
            .unwrap();
            id += rows;
            std::thread::sleep(Duration::from_millis(5));
        }
        id
    });
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..700)));
        w.kill9();
        // Once at the point where every publish is acknowledged and the
        // position not yet handed on.
        if round == 2 {
            w.spawn(&[("TRIBUTARY_FAILPOINT", "nats.after_acks:3")]);
            let st = w.wait(T).expect("the failpoint is reached");
            assert!(!st.success());
        }
        w.spawn(&[]);
    }
    let written = writer.join().unwrap();
    let mut c = db.connect();
    w.until(T, "every change in the stream", || {
        messages(&n.url(), "TRIBUTARY").len() as i64 >= written && queue_len(&mut c) >= written
    });
    std::thread::sleep(Duration::from_millis(500));
    let msgs = messages(&n.url(), "TRIBUTARY");
    assert_eq!(exactly_once(&msgs).len() as i64, written);
    assert_eq!(msgs.len() as i64, written);
    let keys: HashSet<i64> = msgs
        .iter()
        .map(|m| m.body["pk"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(keys, (1..=written).collect());
    assert!(msgs.windows(2).all(|p| lsn_ord(&p[0]) < lsn_ord(&p[1])));
    assert_eq!(queue_len(&mut c), written);
}

#[test]
fn a_worker_restarted_past_the_duplicate_window_publishes_nothing_twice() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    let n = Nats::start();
    // The server forgets message ids after one second.
    create_stream(
        &n.url(),
        stream::Config {
            name: "SHORT".into(),
            subjects: vec!["tributary.>".into()],
            duplicate_window: Duration::from_secs(1),
            ..Default::default()
        },
    );
    let (cfg, _) = worker(&cluster, &db, &n, "SHORT");
    // Killed once its first transaction's publishes are acknowledged,
    // before its position moves: the slot sends that transaction again.
    let mut w = WorkerProc::start(&cfg, &[("TRIBUTARY_FAILPOINT", "nats.after_acks:1")]);
    w.until_slot(&mut c, "w");
    c.batch_execute("INSERT INTO items SELECT g, 'a' FROM generate_series(1, 50) g")
        .unwrap();
    let st = w
        .wait(T)
        .unwrap_or_else(|| panic!("the failpoint was not reached:\n{}", w.log_text()));
    assert!(!st.success());
    assert_eq!(messages(&n.url(), "SHORT").len(), 50);
    std::thread::sleep(Duration::from_millis(2500));
    w.spawn(&[]);
    c.batch_execute("INSERT INTO items SELECT g, 'b' FROM generate_series(51, 60) g")
        .unwrap();
    w.until(T, "the next changes", || {
        queue_len(&mut c) >= 60 && messages(&n.url(), "SHORT").len() >= 60
    });
    std::thread::sleep(Duration::from_millis(500));
    let msgs = messages(&n.url(), "SHORT");
    assert_eq!(exactly_once(&msgs).len(), 60);
    assert_eq!(
        msgs.len(),
        60,
        "nothing twice, though the window had passed"
    );
    assert!(w.running());
}

#[test]
fn a_nats_restart_loses_nothing_and_the_queue_goes_on_meanwhile() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    let mut n = Nats::start();
    let (cfg, listen) = worker(&cluster, &db, &n, "TRIBUTARY");
    let mut w = WorkerProc::start(&cfg, &[]);
    w.until_slot(&mut db.connect(), "w");
    let insert = |c: &mut Client, from: i32, to: i32| {
        c.batch_execute(&format!(
            "INSERT INTO items SELECT g, 'x' FROM generate_series({from}, {to}) g"
        ))
        .unwrap()
    };
    insert(&mut c, 1, 100);
    w.until(T, "the first rows in the stream", || {
        messages(&n.url(), "TRIBUTARY").len() == 100
    });
    n.kill9();
    for i in 0..10 {
        insert(&mut c, 101 + i * 10, 110 + i * 10);
    }
    w.until(T, "the queue to go on while NATS is down", || {
        queue_len(&mut c) == 200
    });
    let metrics = || {
        reqwest::blocking::get(format!("http://{listen}/metrics"))
            .and_then(|r| r.text())
            .unwrap_or_default()
    };
    w.until(T, "the destination to be set aside", || {
        metrics().contains("tributary_destination_detached{destination=\"bus\",kind=\"nats\"} 1")
    });
    assert!(w.running());
    n.spawn();
    insert(&mut c, 201, 250);
    w.until(T, "the stream to catch up", || {
        messages(&n.url(), "TRIBUTARY").len() >= 250
    });
    std::thread::sleep(Duration::from_millis(500));
    let msgs = messages(&n.url(), "TRIBUTARY");
    assert_eq!(exactly_once(&msgs).len(), 250);
    assert_eq!(msgs.len(), 250);
    assert!(msgs.windows(2).all(|p| lsn_ord(&p[0]) < lsn_ord(&p[1])));
    assert!(
        metrics().contains("tributary_destination_detached{destination=\"bus\",kind=\"nats\"} 0")
    );
    assert!(w.running());
}

#[test]
fn a_full_stream_holds_that_destination_while_a_queue_keeps_receiving() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    let n = Nats::start();
    let full = |max: i64| stream::Config {
        name: "CAPPED".into(),
        subjects: vec!["tributary.>".into()],
        max_messages: max,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    create_stream(&n.url(), full(20));
    let (cfg, _) = worker(&cluster, &db, &n, "CAPPED");
    let mut w = WorkerProc::start(&cfg, &[]);
    w.until_slot(&mut db.connect(), "w");
    for i in 1..=50 {
        c.execute("INSERT INTO items VALUES ($1, 'f')", &[&i])
            .unwrap();
    }
    w.until(T, "the queue to have every change", || {
        queue_len(&mut c) == 50
    });
    let log = w.log.clone();
    w.until(T, "the worker to set the destination aside", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("detached"))
    });
    assert_eq!(messages(&n.url(), "CAPPED").len(), 20);
    assert!(w.running(), "a full stream is that destination's alone");
    // Room again: the rest follows, each once, in order.
    update_stream(&n.url(), full(-1));
    w.until(T, "the stream to take the rest", || {
        messages(&n.url(), "CAPPED").len() >= 50
    });
    std::thread::sleep(Duration::from_millis(500));
    let msgs = messages(&n.url(), "CAPPED");
    assert_eq!(exactly_once(&msgs).len(), 50);
    let keys: Vec<i64> = msgs
        .iter()
        .map(|m| m.body["pk"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(keys, (1..=50).collect::<Vec<_>>());
    assert!(w.running());
}

#[test]
fn a_refused_nats_login_sets_that_destination_aside_and_the_right_password_catches_it_up() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    let n = Nats::start_with_user("tributary", "s3cret");
    let cfg = config(
        &cluster,
        &db,
        "w",
        &format!(
            "{AUDIT}\n{}user = \"tributary\"\n",
            nats_dest("bus", &n.bare_url(), "TRIBUTARY", r#"["*.*"]"#)
        ),
    );
    let mut w = WorkerProc::start(&cfg, &[("TRIBUTARY_NATS_PASSWORD_BUS", "wrong")]);
    w.until_slot(&mut c, "w");
    c.batch_execute("INSERT INTO items SELECT g, 'p' FROM generate_series(1, 30) g")
        .unwrap();
    w.until(T, "the queue to go on", || queue_len(&mut c) == 30);
    let log = w.log.clone();
    w.until(T, "the refusal to be said", || {
        std::fs::read_to_string(&log).is_ok_and(|l| {
            l.contains("refused the login") && l.contains("TRIBUTARY_NATS_PASSWORD_BUS")
        })
    });
    assert!(w.running(), "one destination's login is no reason to stop");
    assert!(
        !w.log_text().contains("wrong"),
        "the password is never logged"
    );
    assert!(messages(&n.url(), "TRIBUTARY").is_empty());
    w.kill9();
    w.spawn(&[("TRIBUTARY_NATS_PASSWORD_BUS", "s3cret")]);
    w.until(T, "the stream to catch up", || {
        messages(&n.url(), "TRIBUTARY").len() == 30
    });
    assert_eq!(exactly_once(&messages(&n.url(), "TRIBUTARY")).len(), 30);
}

#[test]
fn tls_to_nats_checks_the_servers_certificate_against_tls_ca() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let mut c = db.connect();
    let n = Nats::start_tls();
    // A CA that did not sign the server's certificate: that destination
    // is set aside with words that say so; the queue goes on.
    let other = tempfile::tempdir().unwrap();
    tributary_e2e::certs::ca(other.path(), "ca", "/CN=Another CA");
    let dest = |ca: &std::path::Path| {
        format!(
            "{AUDIT}\n{}tls_ca = \"{}\"\n",
            nats_dest("bus", &n.bare_url(), "TRIBUTARY", r#"["*.*"]"#),
            ca.display()
        )
    };
    let mut w = WorkerProc::start(
        &config(&cluster, &db, "w", &dest(&other.path().join("ca.crt"))),
        &[],
    );
    w.until_slot(&mut c, "w");
    c.batch_execute("INSERT INTO items SELECT g, 't' FROM generate_series(1, 20) g")
        .unwrap();
    w.until(T, "the queue to go on", || queue_len(&mut c) == 20);
    let log = w.log.clone();
    w.until(T, "the TLS failure to be said", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("TLS to NATS"))
    });
    assert!(w.running());
    assert!(n.messages("TRIBUTARY").is_empty());
    drop(w);
    // The right CA: the stream gets every change.
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", &dest(&n.ca().unwrap())), &[]);
    w.until(T, "the stream over TLS", || {
        n.messages("TRIBUTARY").len() == 20
    });
    assert_eq!(exactly_once(&n.messages("TRIBUTARY")).len(), 20);
}
