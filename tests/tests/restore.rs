//! A hub dumped with pg_dump and restored into another cluster: tracking,
//! peers, policies and queues work there; readers holding the old
//! cluster's versions get a full resync, never a silent diff; the worker
//! copies its SQLite peer anew and its queue never confuses old and new
//! positions.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tributary_e2e::peer::*;
use tributary_e2e::worker::*;
use tributary_e2e::*;

const T: Duration = Duration::from_secs(60);

fn ok(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const SCHEMA: &str = r#"
    CREATE TABLE items (id int PRIMARY KEY, v text);
    CREATE TABLE "tab'le" ("]" int PRIMARY KEY, v text);
    CREATE TABLE marker (id serial PRIMARY KEY);
    SELECT sync_track('items'); SELECT sync_track('"tab''le"'); SELECT sync_track('marker');
    SELECT sync_set_peer('edge1', 2);
    SELECT sync_set_policy('"tab''le"', 'hub_wins');
"#;

fn dests(path: &Path) -> String {
    format!(
        "{}\n[[destination]]\nname = \"audit\"\nkind = \"queue\"\ntables = [\"public.items\"]\n",
        sqlite_dest("edge1", path)
    )
}

fn queue_rows_of(c: &mut Client, hub: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM tributary.queue_audit WHERE hub = $1",
        &[&hub],
    )
    .unwrap()
    .get(0)
}

fn identity(c: &mut Client) -> String {
    c.query_one("SELECT tributary._hub_identity()", &[])
        .unwrap()
        .get(0)
}

#[test]
fn a_hub_restored_into_another_cluster_works_and_no_reader_or_peer_gets_a_silent_diff() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge1.db");

    // The first cluster: tracking, a peer, a policy, a queue and a SQLite
    // peer, with changes streamed to both.
    let a = Cluster::start();
    let db_a = a.db();
    let mut ca = db_a.connect();
    ca.batch_execute(SCHEMA).unwrap();
    setup_worker_role(&db_a, &["audit"]);
    let mut w = WorkerProc::start(&config(&a, &db_a, "w", &dests(&path)), &[]);
    caught_up(&mut w, &mut ca, &path);
    ca.batch_execute(
        r#"INSERT INTO items SELECT g, 'a' || g FROM generate_series(1, 50) g;
           INSERT INTO "tab'le" VALUES (1, 'x');
           DELETE FROM items WHERE id = 50;"#,
    )
    .unwrap();
    caught_up(&mut w, &mut ca, &path);
    assert!(w.sigterm(T).success());
    // A reader that synced with the first cluster, and one that will ask
    // with a version far ahead of the second cluster's xids.
    let old_version: i64 = ca
        .query_one("SELECT sync_current_version()", &[])
        .unwrap()
        .get(0);
    let hub_a = identity(&mut ca);
    let queued_a = queue_rows_of(&mut ca, &hub_a);
    assert!(queued_a >= 50, "the queue holds the first cluster's rows");

    let dump = dir.path().join("hub.dump");
    let mut d = a.client_tool("pg_dump");
    d.args(["-Fc", "-f"]).arg(&dump).arg(&db_a.name);
    ok(d, "pg_dump");

    // The second cluster: the worker's role first (the dump grants to it).
    let b = Cluster::start();
    let db_b = b.empty_db();
    b.connect(&db_b.name)
        .batch_execute("CREATE ROLE worker LOGIN REPLICATION")
        .unwrap();
    let mut r = b.client_tool("pg_restore");
    r.args(["--exit-on-error", "-d", &db_b.name]).arg(&dump);
    ok(r, "pg_restore");
    let mut cb = db_b.connect();
    let hub_b = identity(&mut cb);
    assert_ne!(hub_a, hub_b);

    // The state came back.
    assert_eq!(scalar(&mut cb, "SELECT count(*) FROM items"), 49);
    assert_eq!(
        scalar(&mut cb, "SELECT count(*) FROM tributary.tombstones"),
        1
    );
    assert_eq!(
        scalar(
            &mut cb,
            "SELECT count(*) FROM tributary.peers WHERE name = 'edge1' AND priority = 2"
        ),
        1
    );
    assert_eq!(
        scalar(
            &mut cb,
            r#"SELECT count(*) FROM sync_policies WHERE policy = 'hub_wins'"#
        ),
        1
    );
    assert_eq!(
        scalar(&mut cb, "SELECT count(*) FROM sync_tracked_tables()"),
        3
    );

    // Before the restore is adopted, readers are told, whatever they hold.
    for since in [0, old_version] {
        let e = expect_error(
            &mut cb,
            &format!(
                "SELECT * FROM sync_changes_since({since}, tables => ARRAY['items'::regclass])"
            ),
            "TB008",
        );
        assert!(e.hint.unwrap().contains("sync_restored()"));
    }
    // Only a superuser adopts it.
    cb.batch_execute("CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA public TO app")
        .unwrap();
    cb.batch_execute("SET ROLE app").unwrap();
    assert_eq!(
        db_error(cb.batch_execute("SELECT sync_restored()").unwrap_err()).code,
        "42501"
    );
    cb.batch_execute("RESET ROLE").unwrap();
    assert_eq!(scalar(&mut cb, "SELECT sync_restored()"), 3);
    assert_eq!(
        scalar(&mut cb, "SELECT sync_restored()"),
        0,
        "once is enough"
    );

    // Every version of this cluster is above every version of the first,
    // and a reader holding one of those resyncs in full.
    let now: i64 = cb
        .query_one("SELECT sync_current_version()", &[])
        .unwrap()
        .get(0);
    assert!(now > old_version + (1 << 39), "{now} vs {old_version}");
    let e = expect_error(
        &mut cb,
        &format!("SELECT * FROM sync_changes_since({old_version})"),
        "TB002",
    );
    assert!(e.detail.unwrap().contains("restore"));
    let payload: String = cb
        .query_one(
            &format!("SELECT sync_payload('items', {old_version})::text"),
            &[],
        )
        .unwrap()
        .get(0);
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["Metadata"]["Sync"]["Type"], "Full");
    assert_eq!(payload["Metadata"]["Sync"]["ReasonCode"], 5);
    assert_eq!(payload["Data"].as_array().unwrap().len(), 49);

    // Tracking works: a full sync, a change, and a diff that holds just it.
    let v0: i64 = cb
        .query_one("SELECT sync_current_version()", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        scalar(
            &mut cb,
            "SELECT count(*) FROM sync_changes_since(0, tables => ARRAY['items'::regclass])"
        ),
        49
    );
    cb.batch_execute("UPDATE items SET v = 'b' WHERE id = 7; DELETE FROM items WHERE id = 8")
        .unwrap();
    let diff: Vec<(String, String)> = cb
        .query(
            &format!("SELECT op, pk::text FROM sync_changes_since({v0}) ORDER BY op"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        diff,
        vec![
            ("D".to_string(), r#"{"id": 8}"#.to_string()),
            ("U".to_string(), r#"{"id": 7}"#.to_string())
        ]
    );

    // The worker, pointed at the restored hub with the same peer file: the
    // file's position is in the first cluster's WAL, so it is copied anew;
    // the queue keeps the first cluster's rows apart from the new ones.
    b.connect(&db_b.name)
        .batch_execute("SELECT sync_worker_grant('worker')")
        .unwrap();
    let mut w = WorkerProc::start(&config(&b, &db_b, "w", &dests(&path)), &[]);
    // Its slot is new: changes from here on reach the queue.
    w.until_slot(&mut cb, "w");
    cb.batch_execute("INSERT INTO items SELECT g, 'b' || g FROM generate_series(100, 140) g")
        .unwrap();
    caught_up(&mut w, &mut cb, &path);
    assert!(
        w.log_text().contains("another hub's WAL"),
        "{}",
        w.log_text()
    );
    assert_eq!(
        rows(&path, "SELECT count(*) FROM items"),
        vec![vec![rusqlite::types::Value::Integer(scalar(
            &mut cb,
            "SELECT count(*) FROM items"
        ))]]
    );
    w.until(T, "the new changes in the queue", || {
        queue_rows_of(&mut cb, &hub_b) == 41
    });
    assert_eq!(queue_rows_of(&mut cb, &hub_a), queued_a);
    assert!(w.running(), "{}", w.log_text());
}
