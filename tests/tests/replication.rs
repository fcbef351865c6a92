//! The worker's own replication client against a real PostgreSQL 15.

use tributary_e2e::*;
use tributary_worker::lsn::Lsn;
use tributary_worker::pgoutput::{Decoder, Message};
use tributary_worker::source::{ConnectOptions, Connection, Event, SourceError};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn streams_a_committed_change_and_confirms_it() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("ALTER SYSTEM SET wal_sender_timeout = '2s'")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    c.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text); SELECT sync_track('items')")
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", cluster.port, db.name);
    let opts = ConnectOptions::from_url(&url, None).unwrap();

    // The synchronous test client cannot run inside the runtime: the steps
    // alternate.
    let rt = runtime();
    let conn = rt.block_on(async {
        let mut conn = Connection::connect(&opts).await.unwrap();
        let sys = conn.identify_system().await.unwrap();
        assert_eq!(sys.dbname, db.name);
        assert!(sys.xlogpos > Lsn(0));
        let slot = conn.create_slot("w1", true).await.unwrap();
        assert_eq!(slot.name, "w1");
        assert!(
            slot.snapshot.is_some(),
            "an exported snapshot for the initial copy"
        );
        conn
    });
    c.execute("INSERT INTO items VALUES (1, 'hello')", &[])
        .unwrap();
    let (stream, end) = rt.block_on(async {
        let mut stream = conn
            .start_replication("w1", Lsn(0), "tributary")
            .await
            .unwrap();
        let mut dec = Decoder::new();
        let mut seen = vec![];
        let end = loop {
            match tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
                .await
                .unwrap()
                .unwrap()
            {
                Event::XLogData { data, .. } => match dec.decode(&data).unwrap().message {
                    Message::Commit { end_lsn, .. } => break end_lsn,
                    Message::Insert { .. } => seen.push("I"),
                    _ => {}
                },
                Event::Keepalive { .. } => {}
            }
        };
        assert_eq!(seen, ["I"]);
        stream.send_status(end, end, end, false).await.unwrap();
        // An idle stream still gets keepalives (wal_sender_timeout = 2s).
        let got_keepalive = loop {
            match tokio::time::timeout(std::time::Duration::from_secs(10), stream.next()).await {
                Ok(Ok(Event::Keepalive { .. })) => break true,
                Ok(Ok(Event::XLogData { .. })) => continue,
                _ => break false,
            }
        };
        assert!(got_keepalive);
        (stream, end)
    });
    // The status was applied: the slot's confirmed position moved. The
    // walsender reads the status between its own sends, so a keepalive can
    // arrive before it has: wait for the position rather than read it once.
    let mut confirmed = String::new();
    tributary_e2e::worker::wait_until(
        std::time::Duration::from_secs(10),
        "the slot's confirmed position",
        || {
            confirmed = c
                .query_one(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'w1'",
                    &[],
                )
                .unwrap()
                .get(0);
            confirmed.parse::<Lsn>().unwrap() >= end
        },
    );
    assert!(
        confirmed.parse::<Lsn>().unwrap() >= end,
        "confirmed {confirmed}, sent {end}"
    );
    drop(stream);
}

#[test]
fn a_missing_slot_is_a_definite_error_with_a_hint() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", cluster.port, db.name);
    let opts = ConnectOptions::from_url(&url, None).unwrap();
    runtime().block_on(async {
        let conn = Connection::connect(&opts).await.unwrap();
        let err = match conn.start_replication("nope", Lsn(0), "tributary").await {
            Err(e) => e,
            Ok(_) => panic!("started on a missing slot"),
        };
        match err {
            SourceError::Definite { code, hint, .. } => {
                assert_eq!(code.as_deref(), Some("42704"));
                assert!(hint.contains("never recreates"), "{hint}");
            }
            other => panic!("expected a definite error, got {other:?}"),
        }
    });
}

#[test]
fn scram_and_md5_authentication_and_a_wrong_password() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE rep_scram LOGIN REPLICATION PASSWORD 's3cret';
         SET password_encryption = 'md5'; CREATE ROLE rep_md5 LOGIN REPLICATION PASSWORD 'm5pw';",
    )
    .unwrap();
    // Password lines first: pg_hba.conf is read top down. A logical
    // replication connection (replication=database) matches on its
    // database, not on the `replication` keyword.
    let hba = cluster.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all rep_scram 127.0.0.1/32 scram-sha-256\nhost all rep_md5 127.0.0.1/32 md5\n{old}"
        ),
    )
    .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let url = |user: &str| format!("postgres://{user}@127.0.0.1:{}/{}", cluster.port, db.name);
    runtime().block_on(async {
        for (user, pw) in [("rep_scram", "s3cret"), ("rep_md5", "m5pw")] {
            let opts = ConnectOptions::from_url(&url(user), Some(pw.into())).unwrap();
            let mut conn = Connection::connect(&opts)
                .await
                .unwrap_or_else(|e| panic!("{user}: {e}"));
            assert_eq!(conn.identify_system().await.unwrap().dbname, db.name);
        }
        let opts = ConnectOptions::from_url(&url("rep_scram"), Some("wrong".into())).unwrap();
        match Connection::connect(&opts).await {
            Err(SourceError::Definite { code, .. }) => assert_eq!(code.as_deref(), Some("28P01")),
            Err(e) => panic!("expected a definite authentication error, got {e}"),
            Ok(_) => panic!("a wrong password was accepted"),
        }
        let opts = ConnectOptions::from_url(&url("rep_scram"), None).unwrap();
        assert!(
            matches!(
                Connection::connect(&opts).await,
                Err(SourceError::Definite { .. })
            ),
            "no password"
        );
    });
}
