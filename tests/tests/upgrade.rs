//! Releases and upgrades. The first release, 0.1.0, is kept as it was
//! released (`extension/sql/tributary--0.1.0.sql`); each later release
//! ships `tributary--A--B.sql`. A hub installed at 0.1.0 and brought up to
//! date with `ALTER EXTENSION tributary UPDATE` must equal a fresh install
//! of the current version, object for object, and keep its data.

use std::collections::BTreeSet;
use tributary_e2e::*;

/// Every object of the extension, with its properties, one line each.
const CATALOG: &str = include_str!("../sql/extension_catalog.sql");

fn catalog(c: &mut Client) -> BTreeSet<String> {
    c.query(CATALOG, &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

fn version(c: &mut Client) -> (String, String) {
    let r = c
        .query_one(
            "SELECT e.extversion, a.default_version FROM pg_extension e
               JOIN pg_available_extensions a ON a.name = e.extname WHERE e.extname = 'tributary'",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// A database at the first release.
fn at_first_release(cluster: &Cluster) -> Db<'_> {
    let db = cluster.empty_db();
    db.connect()
        .batch_execute("CREATE EXTENSION tributary VERSION '0.1.0'")
        .expect("tributary--0.1.0.sql is installed by scripts/setup.sh");
    db
}

fn assert_same(upgraded: &BTreeSet<String>, fresh: &BTreeSet<String>) {
    let only_up: Vec<&String> = upgraded.difference(fresh).collect();
    let only_fresh: Vec<&String> = fresh.difference(upgraded).collect();
    assert!(
        only_up.is_empty() && only_fresh.is_empty(),
        "the upgraded hub differs from a fresh install.\nonly after the upgrade:\n  {}\nonly in a fresh install:\n  {}",
        only_up.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        only_fresh.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn an_upgrade_from_the_first_release_equals_a_fresh_install_and_can_be_run_again() {
    let cluster = Cluster::start();
    let old = at_first_release(&cluster);
    let mut c = old.connect();
    let first = catalog(&mut c);
    c.batch_execute("ALTER EXTENSION tributary UPDATE").unwrap();
    let (now, default) = version(&mut c);
    assert_eq!(
        now, default,
        "ALTER EXTENSION UPDATE reaches the current version"
    );
    let fresh = cluster.db();
    let want = catalog(&mut fresh.connect());
    assert_ne!(first, want, "the current version has changes of its own");
    assert_same(&catalog(&mut c), &want);
    // Every step can run again over what it already did.
    c.batch_execute(
        "UPDATE pg_extension SET extversion = '0.1.0' WHERE extname = 'tributary';
         ALTER EXTENSION tributary UPDATE;",
    )
    .unwrap();
    assert_same(&catalog(&mut c), &want);
}

#[test]
fn an_upgrade_keeps_tracking_versions_peers_policies_conflicts_pending_and_queues() {
    let cluster = Cluster::start();
    let db = at_first_release(&cluster);
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE customers (id text PRIMARY KEY, name text, email text);
           CREATE TABLE orders (id int PRIMARY KEY, customer text REFERENCES customers, total numeric);
           CREATE TABLE "tab'le" ("]" int PRIMARY KEY, """" text);
           SELECT sync_track('customers'); SELECT sync_track('orders'); SELECT sync_track('"tab''le"');
           INSERT INTO customers VALUES ('C1', 'Ann', 'ann@x'), ('C2', 'Bob', 'bob@x');
           INSERT INTO "tab'le" VALUES (1, 'q"uote');
           UPDATE customers SET name = 'Ann B' WHERE id = 'C1';
           DELETE FROM customers WHERE id = 'C2';
           SELECT sync_set_peer('crm', 5); SELECT sync_set_peer('erp', 5);
           SELECT sync_set_policy('"tab''le"', 'last_writer_wins');
           SELECT sync_queue_create('audit');
           INSERT INTO tributary.queue_audit (lsn, ord, tbl, op, pk, data, origin)
           VALUES ('0/10', 0, 'customers', 'I', '{"id": "C1"}', '{"id": "C1"}', NULL);"#,
    )
    .unwrap();
    // The library is the new release's: against the first release's SQL,
    // sync_apply refuses to run and says how to update.
    let e = expect_error(
        &mut c,
        r#"SELECT * FROM sync_apply('customers', '[]', 'crm')"#,
        "55000",
    );
    assert!(e.hint.unwrap().contains("ALTER EXTENSION tributary UPDATE"));
    // A conflict between two peers of equal priority, and an order parked
    // until its customer arrives, as the first release stored them.
    c.batch_execute(
        r#"INSERT INTO tributary.conflicts (relid, pk, columns, local, remote, local_version, remote_version,
                                           remote_origin, remote_op, interim, detail)
           VALUES ('customers'::regclass, '{"id": "C1"}', '{email}', '{"id": "C1", "email": "crm@x"}',
                   '{"email": "erp@x"}', 3, 3, 'erp', 'U', 'local', 'same priority');
           INSERT INTO tributary.pending (relid, pk, origin, change, parent_relid, last_error)
           VALUES ('orders'::regclass, '{"id": 7}', 'crm',
                   '{"op": "I", "pk": {"id": 7}, "data": {"id": 7, "customer": "C9", "total": 5}, "version": 1}',
                   'customers'::regclass, 'no customer C9');"#,
    )
    .unwrap();
    let apply = |c: &mut Client, tbl: &str, change: &str, origin: &str| -> String {
        c.query_one(
            &format!("SELECT outcome FROM sync_apply('{tbl}', '[{change}]', $1)"),
            &[&origin],
        )
        .unwrap()
        .get(0)
    };
    let v_before: i64 = scalar(&mut c, "SELECT sync_current_version()");
    let state = |c: &mut Client| -> Vec<i64> {
        [
            "SELECT count(*) FROM sync_tracked_tables()",
            "SELECT count(*) FROM tributary.tombstones",
            "SELECT count(*) FROM tributary.peers",
            "SELECT count(*) FROM sync_policies WHERE policy = 'last_writer_wins'",
            "SELECT count(*) FROM sync_conflicts",
            "SELECT count(*) FROM sync_pending",
            "SELECT count(*) FROM tributary.queues",
            "SELECT sum(sync_version)::int8 FROM customers",
        ]
        .iter()
        .map(|q| scalar(c, q))
        .collect()
    };
    let before = state(&mut c);
    assert_eq!(&before[..7], &[3, 1, 2, 1, 1, 1, 1]);

    c.batch_execute("ALTER EXTENSION tributary UPDATE").unwrap();
    assert_eq!(state(&mut c), before, "the upgrade keeps the hub's state");

    // Tracking goes on: a write after the upgrade is one change since the
    // version taken before it, at the next revision.
    c.batch_execute("UPDATE customers SET name = 'Ann C' WHERE id = 'C1'")
        .unwrap();
    let changes: Vec<(String, i64)> = c
        .query(
            "SELECT pk->>'id', row_version FROM sync_changes_since($1) WHERE tbl = 'customers'::regclass",
            &[&v_before],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let v_now: i64 = scalar(&mut c, "SELECT sync_version FROM customers WHERE id = 'C1'");
    assert_eq!(changes, vec![("C1".to_string(), v_now)]);
    // The order parked before 0.5.0 has no known parker: it is a dead
    // letter, never replayed as whoever writes its customer, and is applied
    // by hand from what sync_pending keeps.
    let (status, why): (String, String) = c
        .query_one("SELECT status, last_error FROM sync_pending", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(status, "dead");
    assert!(why.contains("parked before 0.5.0"), "{why}");
    assert_eq!(
        apply(
            &mut c,
            "customers",
            r#"{"op":"I","pk":{"id":"C9"},"data":{"id":"C9","name":"Cy"},"version":1}"#,
            "crm",
        ),
        "NEW_RECORD"
    );
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM orders WHERE id = 7"),
        0
    );
    let change: String = c
        .query_one("SELECT change::text FROM sync_pending", &[])
        .unwrap()
        .get(0);
    assert_eq!(apply(&mut c, "orders", &change, "crm"), "NEW_RECORD");
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM orders WHERE id = 7"),
        1
    );
    // The conflict can still be resolved; the queue is still read.
    let id: i64 = scalar(&mut c, "SELECT id FROM sync_conflicts");
    c.batch_execute(&format!(
        "SELECT sync_resolve_conflict({id}, '{{\"email\": \"both@x\"}}')"
    ))
    .unwrap();
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) FROM customers WHERE email = 'both@x'"
        ),
        1
    );
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM sync_queue_read('audit', 10)"),
        1
    );
}

#[test]
fn a_worker_newer_than_the_hubs_extension_stops_and_says_how_to_update() {
    use tributary_e2e::worker::*;
    let cluster = Cluster::start();
    let db = cluster.empty_db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE EXTENSION tributary VERSION '0.3.0';
         CREATE TABLE items (id int PRIMARY KEY); SELECT sync_track('items');",
    )
    .unwrap();
    setup_worker_role(&db, &[]);
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", ""), &[]);
    let status = w
        .wait(std::time::Duration::from_secs(60))
        .expect("the worker stops");
    assert_eq!(status.code(), Some(2), "{}", w.log_text());
    let log = w.log_text();
    assert!(
        log.contains("extension is 0.3.0") && log.contains("ALTER EXTENSION tributary UPDATE"),
        "{log}"
    );
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM pg_replication_slots"),
        0,
        "nothing was set up on the hub"
    );
}
