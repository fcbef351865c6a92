//! Standby workers: two workers with the same configuration, one streams,
//! the other takes over when it dies (kill -9) or hangs (SIGSTOP: its
//! kernel still answers keepalives), within 10 s, and the queue and the
//! NATS stream hold every change exactly once.

use std::collections::HashSet;
use std::time::{Duration, Instant};
use tributary_e2e::nats::*;
use tributary_e2e::worker::*;
use tributary_e2e::*;

const T: Duration = Duration::from_secs(60);

fn get(listen: &str, path: &str) -> (u16, String) {
    match reqwest::blocking::get(format!("http://{listen}{path}")) {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

fn active(listen: &str) -> bool {
    get(listen, "/metrics")
        .1
        .contains("\ntributary_worker_active 1")
}

fn standing_by(listen: &str) -> bool {
    let (status, body) = get(listen, "/healthz");
    status == 200
        && body.starts_with("standby")
        && get(listen, "/metrics")
            .1
            .contains("\ntributary_worker_active 0")
}

fn signal(w: &WorkerProc, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &w.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[test]
fn a_standby_takes_over_from_a_dead_or_hung_worker_within_10_s_and_nothing_is_lost_or_repeated() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text); SELECT sync_track('items')")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let n = Nats::start();
    let cfg = config(
        &cluster,
        &db,
        "w",
        &format!(
            "[[destination]]\nname = \"audit\"\nkind = \"queue\"\n\n{}",
            nats_dest("bus", &n.url(), "TRIBUTARY", r#"["*.*"]"#)
        ),
    );
    let listen_a = http_listen(&cfg);
    // The same file; only the HTTP port differs (two processes, one host).
    let listen_b = format!("127.0.0.1:{}", free_port());
    let env_b = [("TRIBUTARY_HTTP_LISTEN", listen_b.as_str())];
    let mut a = WorkerProc::start(&cfg, &[]);
    a.until(T, "A to be active", || active(&listen_a));
    a.until_slot(&mut c, "w");
    let mut b = WorkerProc::start(&cfg, &env_b);
    b.until(T, "B to stand by", || standing_by(&listen_b));
    assert!(active(&listen_a), "one active at a time");

    let url = cluster.url(&db.name);
    let writer = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        for i in 1..=900 {
            c.execute("INSERT INTO items VALUES ($1, 'x')", &[&i])
                .unwrap();
            std::thread::sleep(Duration::from_millis(8));
        }
    });
    let took_over = |who: &mut WorkerProc, listen: &str, what: &str| {
        let t0 = Instant::now();
        who.until(T, what, || active(listen));
        t0.elapsed()
    };

    // A dies mid-stream: B takes over.
    std::thread::sleep(Duration::from_millis(1500));
    a.kill9();
    let d = took_over(&mut b, &listen_b, "B to take over from a dead A");
    assert!(d <= Duration::from_secs(10), "took {d:?}");
    // A comes back: it stands by.
    a.spawn(&[]);
    a.until(T, "A to stand by", || standing_by(&listen_a));

    // B hangs (its connections stay open, its kernel answers keepalives):
    // A takes over once B's lease goes unchecked.
    std::thread::sleep(Duration::from_millis(1000));
    signal(&b, "-STOP");
    let d = took_over(&mut a, &listen_a, "A to take over from a hung B");
    assert!(d <= Duration::from_secs(10), "took {d:?}");
    // B wakes up: it finds its lease gone and stands by.
    signal(&b, "-CONT");
    b.until(T, "B to stand by again", || standing_by(&listen_b));
    assert!(b.running() && a.running());
    assert!(
        b.log_text().contains("lost the slot's lock"),
        "{}",
        b.log_text()
    );

    writer.join().unwrap();
    a.until(T, "every change in the queue and the stream", || {
        scalar(&mut c, "SELECT count(*) FROM tributary.queue_audit") >= 900
            && messages(&n.url(), "TRIBUTARY").len() >= 900
    });
    std::thread::sleep(Duration::from_millis(1000));
    // Exactly once: each key once in the queue and once in the stream.
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(DISTINCT pk->>'id') FROM tributary.queue_audit"
        ),
        900
    );
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM tributary.queue_audit"),
        900
    );
    let msgs = messages(&n.url(), "TRIBUTARY");
    let ids: HashSet<&str> = msgs
        .iter()
        .map(|m| m.header("Nats-Msg-Id").unwrap())
        .collect();
    let keys: HashSet<i64> = msgs
        .iter()
        .map(|m| m.body["pk"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!((msgs.len(), ids.len(), keys.len()), (900, 900, 900));
    assert!(active(&listen_a) && !active(&listen_b));
}
