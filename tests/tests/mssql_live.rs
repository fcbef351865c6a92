//! SQL Server peers against a live SQL Server: they run when
//! `TRIBUTARY_MSSQL_URL` is set (an ADO string without the password, say
//! `server=tcp:127.0.0.1,1433;user=sa;database=tributary_test;TrustServerCertificate=true`)
//! with the password in `TRIBUTARY_MSSQL_PASSWORD`. The login must be
//! allowed to create schemas and tables and to alter the database (the
//! worker applies the setup script itself). Each test works in a schema
//! of its own; the suite runs one test at a time (`scripts/test.sh`).
//!
//! Without a SQL Server, each test says so plainly (`SKIPPED …`) and
//! passes without checking anything; `scripts/test.sh` shows those lines.
//! The names all start with `live_`, so that the main end-to-end run can
//! leave them to that step.

use std::time::Duration;
use tributary_e2e::worker::*;
use tributary_e2e::*;
use tributary_worker::mssql::conn;

const T: Duration = Duration::from_secs(60);

/// The live server, or None after saying plainly that `test` is skipped.
fn live(test: &str) -> Option<(String, String)> {
    match std::env::var("TRIBUTARY_MSSQL_URL") {
        Ok(url) if !url.is_empty() => Some((
            url,
            std::env::var("TRIBUTARY_MSSQL_PASSWORD").unwrap_or_default(),
        )),
        _ => {
            eprintln!(
                "SKIPPED {test}: no live SQL Server (set TRIBUTARY_MSSQL_URL and TRIBUTARY_MSSQL_PASSWORD to run it)"
            );
            None
        }
    }
}

/// A connection to the live server, as an app's, in its own runtime.
struct App {
    rt: tokio::runtime::Runtime,
    peer: conn::Peer,
}

impl App {
    fn connect(url: &str, password: &str) -> App {
        std::env::set_var(conn::password_env("live-app"), password);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let peer = rt.block_on(conn::connect("live-app", url)).unwrap();
        App { rt, peer }
    }

    /// Runs `sql`; every column of the last result set as text (the
    /// queries CONVERT what is not text).
    fn query(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        let peer = &mut self.peer;
        self.rt.block_on(async {
            let sets = peer
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .into_results()
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            sets.last()
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            (0..r.len())
                                .map(|i| r.get::<&str, _>(i).map(str::to_string))
                                .collect()
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    fn exec(&mut self, sql: &str) {
        self.query(sql);
    }

    fn count(&mut self, sql: &str) -> i64 {
        self.query(&format!("SELECT CONVERT(nvarchar(20), ({sql}))"))[0][0]
            .as_deref()
            .unwrap_or("0")
            .parse()
            .unwrap()
    }
}

/// A schema of this test's own at the peer.
fn schema(test: &str) -> String {
    format!("tb_{}_{test}", std::process::id())
}

/// The worker's configuration: a queue `audit` and the SQL Server peer `erp`.
fn erp_config(cluster: &Cluster, db: &Db, url: &str, schema: &str) -> String {
    config(
        cluster,
        db,
        "w",
        &format!(
            "[[destination]]\nname = \"audit\"\nkind = \"queue\"\n\n\
             [[destination]]\nname = \"erp\"\nkind = \"mssql\"\nurl = \"{url}\"\nschema = \"{schema}\"\n\
             tables = [\"public.*\", \"sa.les.*\"]\npull_interval_ms = 100\n"
        ),
    )
}

fn hub_tables(c: &mut Client) {
    c.batch_execute(
        r#"CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2),
                                   at timestamptz, flag boolean, raw bytea, doc jsonb);
           CREATE SCHEMA "sa.les"; CREATE TABLE "sa.les"."tab'le]" ("k""ey" text PRIMARY KEY, "]" text);
           SELECT sync_track('customers'), sync_track('"sa.les"."tab''le]"');
           INSERT INTO customers VALUES
             (1, 'one', 1.50, '2024-05-01 10:00:00.5+00', true, '\x00ff', '{"a": 1}'),
             (2, 'two ]''"', NULL, NULL, false, NULL, NULL),
             (3, 'three', 3.00, NULL, NULL, NULL, NULL);
           INSERT INTO "sa.les"."tab'le]" VALUES ('k''1]', 'v"');"#,
    )
    .unwrap();
}

/// The hub's tables and roles, the peer `erp` registered, a schema of
/// the test's own at the peer, an app's connection and the worker's
/// configuration.
fn prepare(
    cluster: &Cluster,
    db: &Db,
    c: &mut Client,
    (url, pw): (&str, &str),
    test: &str,
) -> (String, App, String) {
    hub_tables(c);
    setup_worker_role(db, &["audit"]);
    c.batch_execute("SELECT sync_set_peer('erp', 100, 'worker')")
        .unwrap();
    let s = schema(test);
    let app = App::connect(url, pw);
    let cfg = erp_config(cluster, db, url, &s);
    (s, app, cfg)
}

/// Waits until the peer table `t` exists and holds `n` rows.
fn until_rows(w: &mut WorkerProc, app: &mut App, t: &str, n: i64) {
    w.until(T, &format!("{n} rows in {t}"), || {
        app.query(&format!("SELECT CONVERT(nvarchar(20), OBJECT_ID(N'{t}'))"))[0][0].is_some()
            && app.count(&format!("SELECT count(*) FROM {t}")) == n
    });
}

fn start(cfg: &str, password: &str) -> WorkerProc {
    WorkerProc::start(cfg, &[("TRIBUTARY_MSSQL_PASSWORD_ERP", password)])
}

/// The copy, then every kind of change, arrive whole; values keep their
/// types; the position and revisions are kept with them.
#[test]
fn live_push_copies_then_streams_every_change() {
    let Some((url, pw)) = live("live_push_copies_then_streams_every_change") else {
        return;
    };
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    let (s, mut app, cfg) = prepare(&cluster, &db, &mut c, (&url, &pw), "push");
    let mut w = start(&cfg, &pw);
    let t = format!("[{s}].[customers]");
    until_rows(&mut w, &mut app, &t, 3);
    let row = app.query(&format!(
        "SELECT [name], CONVERT(nvarchar(40), [price]), CONVERT(nvarchar(40), [at], 126), CONVERT(nvarchar(1), [flag]),
                CONVERT(nvarchar(40), [raw], 1), [doc] FROM {t} WHERE [id] = 1"
    ));
    assert_eq!(
        row[0],
        vec![
            Some("one".into()),
            Some("1.50".into()),
            Some("2024-05-01T10:00:00.5000000+00:00".into()),
            Some("1".into()),
            Some("0x00FF".into()),
            Some(r#"{"a": 1}"#.into())
        ]
    );
    assert_eq!(
        app.query(&format!("SELECT [name] FROM {t} WHERE [id] = 2"))[0][0].as_deref(),
        Some("two ]'\"")
    );
    assert_eq!(
        app.query(&format!(
            "SELECT []]] FROM [{s}].[sa.les.tab'le]]] WHERE [k\"ey] = N'k''1]'"
        ))[0][0]
            .as_deref(),
        Some("v\"")
    );
    c.batch_execute(
        "BEGIN; INSERT INTO customers (id, name) VALUES (4, 'four'); UPDATE customers SET name = 'uno' WHERE id = 1;
                DELETE FROM customers WHERE id = 3; COMMIT;
         UPDATE customers SET id = 30 WHERE id = 2;",
    )
    .unwrap();
    w.until(T, "the changes", || {
        app.count(&format!(
            "SELECT count(*) FROM {t} WHERE ([id] = 1 AND [name] = N'uno') OR [id] IN (4, 30)"
        )) == 3
            && app.count(&format!("SELECT count(*) FROM {t}")) == 3
    });
    // The revisions of the hub's rows, the base of the app's edits.
    let hub_v: i64 = c
        .query_one("SELECT sync_version FROM customers WHERE id = 1", &[])
        .unwrap()
        .get(0);
    let peer_v = app.count(&format!(
        "SELECT [version] FROM [{s}].[_tributary_versions] WHERE [tbl] = N'customers' AND [pk] = N'{{\"id\":1}}'"
    ));
    assert_eq!(peer_v, hub_v);
    c.batch_execute(r#"TRUNCATE "sa.les"."tab'le]""#).unwrap();
    w.until(T, "the truncate", || {
        app.count(&format!("SELECT count(*) FROM [{s}].[sa.les.tab'le]]]")) == 0
    });
    let lsn = app.query(&format!(
        "SELECT [lsn] FROM [{s}].[_tributary_state] WHERE [slot] = N'w'"
    ));
    assert!(lsn[0][0].as_deref().unwrap_or("0/0") != "0/0", "{lsn:?}");
    // Nothing the worker wrote came back to the hub as the peer's.
    std::thread::sleep(Duration::from_secs(1));
    let from_erp: i64 = c
        .query_one(
            "SELECT count(*) FROM customers WHERE sync_origin = 'erp'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(from_erp, 0, "no echo");
    w.sigterm(T);
}

/// The app's own writes reach the hub once, with the peer as their
/// origin; the worker's are never pulled back; a conflict converges and
/// is shown in the peer's `_tributary_errors` when it needs a decision.
#[test]
fn live_pull_sends_the_apps_edits_once_and_converges() {
    let Some((url, pw)) = live("live_pull_sends_the_apps_edits_once_and_converges") else {
        return;
    };
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    let (s, mut app, cfg) = prepare(&cluster, &db, &mut c, (&url, &pw), "pull");
    let mut w = start(&cfg, &pw);
    let t = format!("[{s}].[customers]");
    until_rows(&mut w, &mut app, &t, 3);
    let queued_before: i64 = c
        .query_one("SELECT count(*) FROM tributary.queue_audit", &[])
        .unwrap()
        .get(0);
    app.exec(&format!(
        "INSERT INTO {t} ([id], [name], [flag]) VALUES (10, N'from the app ]''', 1);
         UPDATE {t} SET [price] = 9.99 WHERE [id] = 3;
         DELETE FROM {t} WHERE [id] = 2;"
    ));
    w.until(T, "the app's edits at the hub", || {
        c.query_one(
            "SELECT count(*) FROM customers WHERE (id = 10 AND sync_origin = 'erp' AND flag)
                OR (id = 3 AND price = 9.99 AND sync_origin = 'erp')",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 2
            && c.query_one("SELECT count(*) FROM customers WHERE id = 2", &[])
                .unwrap()
                .get::<_, i64>(0)
                == 0
    });
    // Once: the queue saw each of the three edits once, and nothing more
    // comes (the worker's write-back is not pulled again).
    std::thread::sleep(Duration::from_secs(2));
    let queued: i64 = c
        .query_one("SELECT count(*) FROM tributary.queue_audit", &[])
        .unwrap()
        .get(0);
    assert_eq!(queued - queued_before, 3, "each edit once, no echo");
    let name: String = c
        .query_one("SELECT name FROM customers WHERE id = 10", &[])
        .unwrap()
        .get(0);
    assert_eq!(name, "from the app ]'");
    // A conflict: the hub and the app change row 1's name at once.
    c.batch_execute("UPDATE customers SET name = 'hub side' WHERE id = 1")
        .unwrap();
    app.exec(&format!(
        "UPDATE {t} SET [name] = N'app side' WHERE [id] = 1"
    ));
    w.until(T, "row 1 the same on both sides", || {
        let hub: String = c
            .query_one("SELECT name FROM customers WHERE id = 1", &[])
            .unwrap()
            .get(0);
        let peer = app.query(&format!("SELECT [name] FROM {t} WHERE [id] = 1"));
        peer[0][0].as_deref() == Some(hub.as_str())
    });
    let manual: i64 = c
        .query_one(
            "SELECT count(*) FROM sync_conflicts WHERE remote_origin = 'erp' AND status = 'open'",
            &[],
        )
        .unwrap()
        .get(0);
    if manual > 0 {
        assert!(
            app.count(&format!(
                "SELECT count(*) FROM [{s}].[_tributary_errors] WHERE [outcome] = N'MANUAL'"
            )) > 0,
            "a conflict that waits for a decision is shown at the peer"
        );
    }
    w.sigterm(T);
}

/// `kill -9` of the worker at random moments while the hub writes: the
/// peer ends with exactly the hub's rows.
#[test]
fn live_kill9_loses_and_repeats_nothing() {
    let Some((url, pw)) = live("live_kill9_loses_and_repeats_nothing") else {
        return;
    };
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    let (s, mut app, cfg) = prepare(&cluster, &db, &mut c, (&url, &pw), "kill");
    let mut w = start(&cfg, &pw);
    w.until_slot(&mut c, "w");
    for round in 0..5 {
        for i in 0..20 {
            let id = 100 + round * 100 + i;
            c.batch_execute(&format!(
                "BEGIN; INSERT INTO customers (id, name) VALUES ({id}, 'r{round}');
                        UPDATE customers SET name = name || '+' WHERE id = {id}; COMMIT;"
            ))
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 400));
        w.kill9();
        w.spawn(&[("TRIBUTARY_MSSQL_PASSWORD_ERP", pw.as_str())]);
    }
    let t = format!("[{s}].[customers]");
    until_rows(&mut w, &mut app, &t, 103);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM {t} WHERE [id] >= 100 AND [name] LIKE N'r_+'"
        )),
        100,
        "each row once, with its update"
    );
    w.sigterm(T);
}

/// A peer whose login fails is detached and retried; the queue beside it
/// goes on, and once the login works the peer catches up.
#[test]
fn live_a_peer_that_refuses_the_login_is_detached_then_catches_up() {
    let Some((url, pw)) = live("live_a_peer_that_refuses_the_login_is_detached_then_catches_up")
    else {
        return;
    };
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    let (s, mut app, cfg) = prepare(&cluster, &db, &mut c, (&url, &pw), "down");
    let listen = http_listen(&cfg);
    let mut w = start(&cfg, "not the password");
    w.until_slot(&mut c, "w");
    c.batch_execute("INSERT INTO customers (id, name) VALUES (7, 'seven')")
        .unwrap();
    w.until(T, "the queue goes on", || {
        c.query_one(
            "SELECT count(*) FROM tributary.queue_audit WHERE pk = '{\"id\": 7}'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 1
    });
    let metrics = reqwest::blocking::get(format!("http://{listen}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    assert!(
        metrics.contains("tributary_destination_detached{destination=\"erp\",kind=\"mssql\"} 1"),
        "{metrics}"
    );
    w.sigterm(T);
    let mut w = start(&cfg, &pw);
    let t = format!("[{s}].[customers]");
    until_rows(&mut w, &mut app, &t, 4);
    w.sigterm(T);
}

/// Changes of shape at the hub while the worker runs: an added column, a
/// renamed column, a dropped column and a renamed table are followed at
/// the peer, its rows kept.
#[test]
fn live_schema_changes_are_followed() {
    let Some((url, pw)) = live("live_schema_changes_are_followed") else {
        return;
    };
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    let (s, mut app, cfg) = prepare(&cluster, &db, &mut c, (&url, &pw), "shape");
    let mut w = start(&cfg, &pw);
    until_rows(&mut w, &mut app, &format!("[{s}].[customers]"), 3);
    c.batch_execute(
        "ALTER TABLE customers ADD COLUMN note text;
         ALTER TABLE customers RENAME COLUMN price TO amount;
         ALTER TABLE customers DROP COLUMN doc;
         ALTER TABLE customers RENAME TO clients;
         INSERT INTO clients (id, name, amount, note) VALUES (5, 'five', 5.5, 'new ]''');",
    )
    .unwrap();
    let t = format!("[{s}].[clients]");
    until_rows(&mut w, &mut app, &t, 4);
    let row = app.query(&format!(
        "SELECT CONVERT(nvarchar(40), [amount]), [note] FROM {t} WHERE [id] = 5"
    ));
    assert_eq!(row[0], vec![Some("5.50".into()), Some("new ]'".into())]);
    assert_eq!(
        app.query(&format!(
            "SELECT CONVERT(nvarchar(40), [amount]) FROM {t} WHERE [id] = 1"
        ))[0][0]
            .as_deref(),
        Some("1.50"),
        "the renamed column kept its values"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM sys.columns WHERE object_id = OBJECT_ID(N'{t}') AND name = N'doc'"
        )),
        0,
        "the dropped column is gone"
    );
    w.sigterm(T);
}
