//! SQL Server peers, the parts that need no SQL Server, against a real hub:
//! - `mssql-setup` prints the setup script of a destination's tables, and
//!   a real T-SQL parser (sqlglot, read="tsql") accepts it;
//! - the pull's rows, as SQL Server renders them, go through the hub's
//!   resolver as the peer's edits (the hub half the SQLite pull uses);
//! - a SQL Server that cannot be reached is detached, and the other
//!   destinations go on.
//!
//! No SQL Server can run on these machines: the tests against a live one
//! are in `mssql_live.rs`, run when `TRIBUTARY_MSSQL_URL` is set.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tributary_e2e::worker::*;
use tributary_e2e::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `tributary-worker args…` with `config` in a file: (exit code, stdout, stderr).
fn worker(args: &[&str], config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("worker.toml");
    std::fs::write(&f, config).unwrap();
    let out = Command::new(worker_bin())
        .args(args)
        .arg("--config")
        .arg(&f)
        .env_remove("TRIBUTARY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// scripts/check_tsql.py on `sql` (sqlglot from scripts/setup.sh).
fn parses_as_tsql(sql: &str) -> (bool, String) {
    let python = root().join("target/tools-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it installs sqlglot)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("setup.sql");
    std::fs::write(&f, sql).unwrap();
    let out = Command::new(python)
        .arg(root().join("scripts/check_tsql.py"))
        .arg(&f)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const ERP: &str = r#"[[destination]]
name = "erp"
kind = "mssql"
url = "server=tcp:10.0.0.5,1433;database=erp;user=tributary;encrypt=true"
schema = "dbo"
tables = ["public.customers", "sa.les.*"]
"#;

#[test]
fn mssql_setup_prints_the_destinations_tables_as_t_sql_a_parser_accepts() {
    let cluster = Cluster::start();
    let db = cluster.db();
    db.connect()
        .batch_execute(
            r#"CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2),
                                       at timestamptz, tags int[], code varchar(20));
               CREATE SCHEMA "sa.les"; CREATE TABLE "sa.les"."tab'le]" ("k""ey" text PRIMARY KEY, v uuid);
               CREATE TABLE other (id int PRIMARY KEY);
               SELECT sync_track('customers'), sync_track('"sa.les"."tab''le]"'), sync_track('other');"#,
        )
        .unwrap();
    setup_worker_role(&db, &[]);
    let cfg = config(&cluster, &db, "w", ERP);
    let (code, sql, err) = worker(&["mssql-setup", "--destination", "erp"], &cfg);
    assert_eq!(code, 0, "{err}");
    for want in [
        "CREATE TABLE [dbo].[customers] (\n    [id] int NOT NULL,\n    [name] nvarchar(max) NOT NULL,\n    \
         [price] decimal(10,2) NULL,\n    [at] datetimeoffset(6) NULL,\n    [tags] nvarchar(max) NULL,\n    \
         [code] nvarchar(20) NULL,\n    PRIMARY KEY ([id])\n);",
        "CREATE TABLE [dbo].[sa.les.tab'le]]] (\n    [k\"ey] nvarchar(450) NOT NULL,\n    [v] uniqueidentifier NULL,\n    PRIMARY KEY ([k\"ey])\n);",
        "ALTER TABLE [dbo].[customers] ENABLE CHANGE_TRACKING WITH (TRACK_COLUMNS_UPDATED = ON);",
        "ALTER DATABASE CURRENT SET CHANGE_TRACKING = ON",
        "CREATE TABLE [dbo].[_tributary_state]",
        "CREATE TABLE [dbo].[_tributary_errors]",
        "CREATE TABLE [dbo].[_tributary_versions]",
        "CREATE TABLE [dbo].[_tributary_tables]",
    ] {
        assert!(sql.contains(want), "missing {want:?} in:\n{sql}");
    }
    assert!(!sql.contains("[other]"), "only the destination's tables");
    assert!(!sql.contains("sync_version"), "no tracking columns");
    let (ok, out) = parses_as_tsql(&sql);
    assert!(ok, "{out}\n{sql}");
    // The parser can fail: a broken script is refused.
    let (ok, _) = parses_as_tsql(&sql.replace("PRIMARY KEY ([id])", "PRIMARY KEY ([id]"));
    assert!(!ok, "the check cannot fail");

    // Bad input: words, exit code 2.
    let (code, _, err) = worker(&["mssql-setup", "--destination", "nope"], &cfg);
    assert_eq!(code, 2);
    assert!(err.contains("no destination named \"nope\""), "{err}");
    let queue = config(
        &cluster,
        &db,
        "w",
        "[[destination]]\nname = \"audit\"\nkind = \"queue\"\n",
    );
    let (code, _, err) = worker(&["mssql-setup", "--destination", "audit"], &queue);
    assert_eq!(code, 2);
    assert!(err.contains("of kind queue, not mssql"), "{err}");
    let none = config(
        &cluster,
        &db,
        "w",
        &ERP.replace(
            r#"["public.customers", "sa.les.*"]"#,
            r#"["public.missing"]"#,
        ),
    );
    let (code, _, err) = worker(&["mssql-setup", "--destination", "erp"], &none);
    assert_eq!(code, 2);
    assert!(err.contains("no tracked table"), "{err}");
    // A password in the connection string: refused, with where it goes.
    let secret = config(
        &cluster,
        &db,
        "w",
        &ERP.replace("user=tributary;", "user=tributary;password=hunter2;"),
    );
    let (code, _, err) = worker(&["mssql-setup", "--destination", "erp"], &secret);
    assert_eq!(code, 2);
    assert!(err.contains("TRIBUTARY_MSSQL_PASSWORD_ERP"), "{err}");
    assert!(!err.contains("hunter2"), "the secret is not echoed: {err}");
}

/// The rows a pull reads, as SQL Server renders them (CONVERT styles 126,
/// 1 and the defaults), become edits that the hub's resolver takes as the
/// peer's: new rows, updates on the current revision, deletes, a stale
/// edit that conflicts, a hostile table, and an edit the hub refuses.
#[test]
fn the_pulls_rows_go_through_the_resolver_as_the_peers_edits() {
    use tributary_worker::mssql::pull::{entry_of, peer_tables_from_hub};
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, flag boolean,
                                   doc jsonb, raw bytea, at timestamptz, uid uuid);
           CREATE SCHEMA "sa.les"; CREATE TABLE "sa.les"."tab'le]" ("k""ey" text PRIMARY KEY, "]" text);
           SELECT sync_track('customers'), sync_track('"sa.les"."tab''le]"');
           INSERT INTO customers (id, name) VALUES (1, 'one'), (3, 'three'), (4, 'four');"#,
    )
    .unwrap();
    setup_worker_role(&db, &[]);
    c.batch_execute("SELECT sync_set_peer('erp', 100, 'worker')")
        .unwrap();
    // The hub edits row 4 after the peer saw revision 1: the peer's edit
    // of the same column is stale.
    c.batch_execute("UPDATE customers SET name = 'four at the hub' WHERE id = 4")
        .unwrap();
    let cfg = config(&cluster, &db, "w", ERP);
    let config = tributary_worker::config::Config::parse(&cfg, |_| None).unwrap();
    let dest = config.destinations[0].clone();
    let opts =
        tributary_worker::source::ConnectOptions::from_url(&config.source.url, None).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcomes = rt.block_on(async {
        let tables = peer_tables_from_hub(&opts, &dest).await.unwrap();
        let t = tables.iter().find(|t| t.name == "customers").unwrap();
        let h = tables.iter().find(|t| t.name == "sa.les.tab'le]").unwrap();
        let s = |v: &str| Some(v.to_string());
        let row = |vals: [Option<String>; 7]| vals.to_vec();
        let all = vec![true; 6];
        let edits = vec![
            // An update of revision 1, every type as SQL Server prints it.
            entry_of(
                t,
                "U",
                Some(1),
                &row([
                    s("1"),
                    s("One ]'"),
                    s("1"),
                    s("{\"a\":[1]}"),
                    s("0x00FF"),
                    s("2024-05-01T10:00:00.1234560+02:00"),
                    s("6F9619FF-8B86-D011-B42D-00C04FC964FF"),
                ]),
                &all,
                1,
            )
            .unwrap(),
            // A new row (no base revision).
            entry_of(
                t,
                "I",
                None,
                &row([s("2"), s("two"), s("0"), None, None, None, None]),
                &all,
                1,
            )
            .unwrap(),
            // A delete of revision 1.
            entry_of(
                t,
                "D",
                Some(1),
                &row([s("3"), None, None, None, None, None, None]),
                &all,
                1,
            )
            .unwrap(),
            // A stale edit of the column the hub changed.
            entry_of(
                t,
                "U",
                Some(1),
                &row([s("4"), s("four at the peer"), None, None, None, None, None]),
                &[true, false, false, false, false, false],
                1,
            )
            .unwrap(),
            // NULL into NOT NULL: the hub refuses it.
            entry_of(
                t,
                "I",
                None,
                &row([s("5"), None, None, None, None, None, None]),
                &all,
                1,
            )
            .unwrap(),
            entry_of(h, "I", None, &[s("k'1]"), s("v\"")], &[true], 1).unwrap(),
        ];
        let mut hub = tributary_worker::pull::HubSide::connect(&opts, "erp", &dest.tables)
            .await
            .unwrap();
        hub.send(edits).await.unwrap()
    });
    let got: Vec<(String, String)> = outcomes
        .iter()
        .map(|(e, o)| (e.pk.clone(), o.outcome.clone()))
        .collect();
    assert_eq!(
        got[0],
        (r#"{"id":1}"#.into(), "VERSION_WIN".into()),
        "{got:?}"
    );
    assert_eq!(got[1].1, "NEW_RECORD", "{got:?}");
    assert_eq!(got[2].1, "VERSION_WIN", "{got:?}");
    assert_eq!(
        got[3].1, "PRIORITY_WIN",
        "a stale edit of the same column is decided by the peers' priorities: {got:?}"
    );
    assert_eq!(got[4].1, "REJECTED", "{got:?}");
    assert!(
        outcomes[4]
            .1
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("23502"),
        "the hub's words: {:?}",
        outcomes[4].1.detail
    );
    assert_eq!(got[5].1, "NEW_RECORD", "{got:?}");
    // What the hub now holds, typed.
    let r = c
        .query_one(
            "SELECT name, flag, doc::text, encode(raw, 'hex'), at = '2024-05-01 08:00:00.123456+00', uid::text, sync_origin
               FROM customers WHERE id = 1",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "One ]'");
    assert!(r.get::<_, bool>(1));
    assert_eq!(r.get::<_, String>(2), r#"{"a": [1]}"#);
    assert_eq!(r.get::<_, String>(3), "00ff");
    assert!(r.get::<_, bool>(4), "the offset is kept");
    assert_eq!(
        r.get::<_, String>(5),
        "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    );
    assert_eq!(
        r.get::<_, Option<String>>(6).as_deref(),
        Some("erp"),
        "the peer is the origin"
    );
    let gone: i64 = c
        .query_one("SELECT count(*) FROM customers WHERE id IN (3, 5)", &[])
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);
    let v: String = c
        .query_one(
            r#"SELECT "]" FROM "sa.les"."tab'le]" WHERE "k""ey" = 'k''1]'"#,
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(v, "v\"");
    // The stale edit did not overwrite the hub's change.
    let name4: String = c
        .query_one("SELECT name FROM customers WHERE id = 4", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        name4, "four at the hub",
        "the hub's own write outranks the peer's; its row goes back to the peer as the write-back"
    );
}

/// A SQL Server peer that cannot be reached (nothing listens on its port)
/// is detached and probed; the queue beside it goes on.
#[test]
fn a_sql_server_that_cannot_be_reached_is_detached_and_the_others_go_on() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text); SELECT sync_track('items');")
        .unwrap();
    setup_worker_role(&db, &["audit"]);
    let down = free_port();
    let cfg = config(
        &cluster,
        &db,
        "w",
        &format!(
            "[[destination]]\nname = \"audit\"\nkind = \"queue\"\n\n\
             [[destination]]\nname = \"erp\"\nkind = \"mssql\"\n\
             url = \"server=tcp:127.0.0.1,{down};database=erp;user=tributary\"\n"
        ),
    );
    let listen = http_listen(&cfg);
    let mut w = WorkerProc::start(&cfg, &[]);
    w.until_slot(&mut c, "w");
    c.batch_execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
        .unwrap();
    w.until(Duration::from_secs(30), "the queue's rows", || {
        c.query_one("SELECT count(*) FROM tributary.queue_audit", &[])
            .unwrap()
            .get::<_, i64>(0)
            == 2
    });
    let metrics = || {
        reqwest::blocking::get(format!("http://{listen}/metrics"))
            .and_then(|r| r.text())
            .unwrap_or_default()
    };
    w.until(Duration::from_secs(30), "erp detached", || {
        metrics().contains("tributary_destination_detached{destination=\"erp\",kind=\"mssql\"} 1")
    });
    assert!(w.running(), "the worker goes on");
    let log = w.log_text();
    assert!(
        log.contains("cannot reach SQL Server at 127.0.0.1"),
        "{log}"
    );
}
