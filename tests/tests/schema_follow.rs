//! Schema changes while everything runs: a writer at the hub, the worker, a
//! queue and a SQLite peer that edits before and after each change. The
//! peer ends equal to the hub, in the hub's shape, renamed columns keep
//! their values, edits made in the old shape arrive or are reported, and
//! the worker never exits.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tributary_e2e::peer::*;
use tributary_e2e::worker::*;
use tributary_e2e::*;

const T: Duration = Duration::from_secs(60);

/// Inserts into the table of `oid` (found by oid: the tests rename it)
/// every few milliseconds until dropped. `insert` makes the statement from
/// the table's current name and a counter.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(url: String, oid: u32, insert: fn(&str, u64) -> String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), written.clone());
        let handle = std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut i = 0;
            while !s.load(Relaxed) {
                i += 1;
                let name: String = c
                    .query_one("SELECT $1::oid::regclass::text", &[&oid])
                    .unwrap()
                    .get(0);
                // A statement made for the shape just before a change may
                // fail once; the next one is made for the new shape.
                if c.batch_execute(&insert(&name, i)).is_ok() {
                    n.fetch_add(1, Relaxed);
                }
                std::thread::sleep(Duration::from_millis(15));
            }
        });
        Writer {
            stop,
            written,
            handle: Some(handle),
        }
    }

    /// Stops it; returns how many inserts it committed.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.written.load(Relaxed)
    }
}

/// A hub table's data columns (tracking columns left out), in order.
fn hub_columns(c: &mut Client, table: &str) -> Vec<String> {
    c.query(
        "SELECT attname::text FROM pg_attribute
          WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
            AND attname NOT LIKE 'sync\\_%' ORDER BY attnum",
        &[&table],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Every row of the hub table, each column as text, sorted.
fn hub_table(c: &mut Client, table: &str) -> Vec<Vec<Option<String>>> {
    let cols: Vec<String> = hub_columns(c, table)
        .iter()
        .map(|n| format!("{}::text", quoted(n)))
        .collect();
    let mut rows: Vec<Vec<Option<String>>> = c
        .query(&format!("SELECT {} FROM {table}", cols.join(", ")), &[])
        .unwrap()
        .iter()
        .map(|r| (0..cols.len()).map(|i| r.get(i)).collect())
        .collect();
    rows.sort();
    rows
}

/// The file table's columns, in order.
fn peer_columns(path: &Path, file_table: &str) -> Vec<String> {
    let c = lite(path);
    let mut st = c
        .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .unwrap();
    let names = st
        .query_map([file_table], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    names
}

/// Every row of the file table, each column as text, sorted.
fn peer_table(path: &Path, file_table: &str) -> Vec<Vec<Option<String>>> {
    let cols: Vec<String> = peer_columns(path, file_table)
        .iter()
        .map(|n| format!("CAST({} AS TEXT)", quoted(n)))
        .collect();
    let c = lite(path);
    let sql = format!("SELECT {} FROM {}", cols.join(", "), quoted(file_table));
    let mut st = c.prepare(&sql).unwrap();
    let mut rows: Vec<Vec<Option<String>>> = st
        .query_map([], |r| (0..cols.len()).map(|i| r.get(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.sort();
    rows
}

/// `"name"`, with `"` doubled: the same quoting in both databases.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The peer equals the hub: same columns, same rows.
fn assert_same(c: &mut Client, hub_table_name: &str, path: &Path, file_table: &str) {
    assert_eq!(
        peer_columns(path, file_table),
        hub_columns(c, hub_table_name),
        "the file table has the hub's columns"
    );
    assert_eq!(
        peer_table(path, file_table),
        hub_table(c, hub_table_name),
        "the file table holds the hub's rows"
    );
}

/// A cluster, a worker serving SQLite peer edge1 (pulling every 50 ms)
/// and queue `audit`, both taking every public table, and `schema` run
/// first (it must create `marker`, and track it and its tables). `f` gets
/// the database's URL, a connection, the worker and the file.
fn with_worker(schema: &str, f: impl FnOnce(String, &mut Client, &mut WorkerProc, &Path)) {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(schema).unwrap();
    setup_worker_role(&db, &["audit"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge1.db");
    let dests = peer_and_queue(&path, r#""public.*""#);
    let mut w = WorkerProc::start(&config(&cluster, &db, "w", &dests), &[]);
    caught_up(&mut w, &mut c, &path);
    f(cluster.url(&db.name), &mut c, &mut w, &path);
    assert!(w.running(), "the worker never exits:\n{}", w.log_text());
}

fn oid_of(c: &mut Client, table: &str) -> u32 {
    c.query_one("SELECT $1::text::regclass::oid", &[&table])
        .unwrap()
        .get(0)
}

/// The latest queue row of a table: (tbl, data).
fn last_queued(c: &mut Client) -> (String, serde_json::Value) {
    let r = c
        .query_one(
            "SELECT tbl, data::text FROM tributary.queue_audit WHERE tbl <> 'public.marker'
              ORDER BY lsn DESC, ord DESC LIMIT 1",
            &[],
        )
        .unwrap();
    (r.get(0), serde_json::from_str(r.get::<_, &str>(1)).unwrap())
}

#[test]
fn renamed_columns_and_tables_keep_their_values_and_old_shape_edits_follow_them() {
    let schema = "CREATE TABLE items (id int PRIMARY KEY, v text, n int);
                  CREATE TABLE marker (id serial PRIMARY KEY);
                  SELECT sync_track('items'); SELECT sync_track('marker');
                  INSERT INTO items SELECT g, 'v' || g, g FROM generate_series(1, 20) g;";
    with_worker(schema, |url, c, w, path| {
        let oid = oid_of(c, "items");
        let writer = Writer::start(url, oid, |t, i| {
            format!("INSERT INTO {t} (id) VALUES ({})", 1000 + i)
        });

        // Offline: the peer edits in the old shape, the hub renames a
        // column and the table, then the worker comes back. The pull meets
        // the old names first: they wait until the file follows.
        let status = w.sigterm(T);
        assert!(status.success(), "{status:?}");
        lite(path)
            .execute_batch("UPDATE items SET v = 'edge-before' WHERE id = 1;")
            .unwrap();
        c.batch_execute(
            r#"ALTER TABLE items RENAME COLUMN v TO "na""me]";
               ALTER TABLE items RENAME TO "it'ems";
               UPDATE "it'ems" SET "na""me]" = 'hub-after' WHERE id = 5;"#,
        )
        .unwrap();
        w.spawn(&[]);
        w.until(T, "the old-shape edit at the hub, under the new name", || {
            outbox_len(path) == 0
                && scalar(
                    c,
                    r#"SELECT count(*) FROM "it'ems" WHERE id = 1 AND "na""me]" = 'edge-before'"#,
                ) == 1
        });

        // Running: the file has followed; the app edits in the new shape
        // while the hub renames again.
        w.until(T, "the file to follow the renames", || {
            peer_columns(path, "it'ems") == ["id", "na\"me]", "n"]
        });
        lite(path)
            .execute_batch(r#"UPDATE "it'ems" SET "na""me]" = 'edge-after' WHERE id = 2;"#)
            .unwrap();
        c.batch_execute(r#"ALTER TABLE "it'ems" RENAME COLUMN n TO "n 2""#)
            .unwrap();
        w.until(T, "the new-shape edit at the hub", || {
            scalar(
                c,
                r#"SELECT count(*) FROM "it'ems" WHERE id = 2 AND "na""me]" = 'edge-after'"#,
            ) == 1
        });
        let written = writer.finish();
        assert!(written > 0, "the writer wrote through the changes");
        caught_up(w, c, path);
        assert_same(c, r#""it'ems""#, path, "it'ems");
        // A row nobody touched kept its values under the new names.
        assert_eq!(
            peer_table(path, "it'ems")
                .into_iter()
                .find(|r| r[0].as_deref() == Some("3")),
            Some(vec![
                Some("3".to_string()),
                Some("v3".to_string()),
                Some("3".to_string())
            ])
        );
        assert!(
            !peer_columns(path, "items").iter().any(|_| true),
            "no table is left under the old name"
        );
        let errors: i64 = lite(path)
            .query_row("SELECT count(*) FROM _tributary_errors", [], |r| r.get(0))
            .unwrap();
        assert_eq!(errors, 0, "nothing was refused");
        // Queue rows carry the new shape.
        c.batch_execute(r#"UPDATE "it'ems" SET "n 2" = 99 WHERE id = 3"#)
            .unwrap();
        w.until(T, "the queue row in the new shape", || {
            let (tbl, data) = last_queued(c);
            tbl == r#"public."it'ems""# && data.get("n 2") == Some(&serde_json::json!(99))
        });
        let (_, data) = last_queued(c);
        assert_eq!(data.get("na\"me]"), Some(&serde_json::json!("v3")));
    });
}

#[test]
fn added_dropped_retyped_columns_and_a_new_key_are_followed() {
    let schema = "CREATE TABLE items (id int PRIMARY KEY, v text, n int, q int, code text NOT NULL UNIQUE);
                  CREATE TABLE marker (id serial PRIMARY KEY);
                  SELECT sync_track('items'); SELECT sync_track('marker');
                  INSERT INTO items SELECT g, 'v' || g, g, g, 'c' || g FROM generate_series(1, 20) g;";
    with_worker(schema, |url, c, w, path| {
        let oid = oid_of(c, "items");
        let writer = Writer::start(url, oid, |t, i| {
            format!(
                "INSERT INTO {t} (id, v, code) VALUES ({0}, 'w', 'w{0}')",
                1000 + i
            )
        });

        // Offline: two edits in the old shape, then the hub drops the
        // column one of them changed.
        let status = w.sigterm(T);
        assert!(status.success(), "{status:?}");
        lite(path)
            .execute_batch(
                "UPDATE items SET n = 77 WHERE id = 1;
                 UPDATE items SET v = 'edge-v' WHERE id = 2;",
            )
            .unwrap();
        c.batch_execute("ALTER TABLE items DROP COLUMN n").unwrap();
        w.spawn(&[]);
        w.until(T, "the surviving edit at the hub", || {
            outbox_len(path) == 0
                && scalar(
                    c,
                    "SELECT count(*) FROM items WHERE id = 2 AND v = 'edge-v'",
                ) == 1
        });
        let detail: String = lite(path)
            .query_row(
                "SELECT outcome || ': ' || detail FROM _tributary_errors WHERE pk = '{\"id\":1}'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            detail.starts_with("REJECTED") && detail.contains("dropped"),
            "{detail}"
        );

        // Running: columns added (empty, and with a default every row
        // takes), a type changed with a USING expression, the key moved.
        c.batch_execute(
            "ALTER TABLE items ADD COLUMN note text;
             ALTER TABLE items ADD COLUMN flag int NOT NULL DEFAULT 7;",
        )
        .unwrap();
        w.until(T, "the file to gain the columns", || {
            peer_columns(path, "items").contains(&"flag".to_string())
        });
        lite(path)
            .execute_batch("UPDATE items SET note = 'edge-note' WHERE id = 3;")
            .unwrap();
        c.batch_execute("ALTER TABLE items ALTER COLUMN q TYPE text USING 'q' || q")
            .unwrap();
        w.until(T, "the retyped values at the peer", || {
            rows(path, "SELECT typeof(q) || ':' || q FROM items WHERE id = 4")
                == vec![vec![rusqlite::types::Value::Text("text:q4".into())]]
        });
        c.batch_execute("ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (code)")
            .unwrap();
        w.until(T, "the file keyed by code", || {
            rows(
                path,
                "SELECT pk FROM pragma_table_info('items') WHERE name = 'code'",
            ) == vec![vec![rusqlite::types::Value::Integer(1)]]
        });
        lite(path)
            .execute_batch("UPDATE items SET v = 'edge-after-key' WHERE code = 'c5';")
            .unwrap();
        w.until(T, "the edit keyed by code at the hub", || {
            outbox_len(path) == 0
                && scalar(
                    c,
                    "SELECT count(*) FROM items WHERE code = 'c5' AND v = 'edge-after-key'",
                ) == 1
        });
        assert!(writer.finish() > 0);
        caught_up(w, c, path);
        assert_same(c, "items", path, "items");
        assert_eq!(
            scalar(
                c,
                "SELECT count(*) FROM items WHERE id = 3 AND note = 'edge-note'"
            ),
            1
        );
        let errors: i64 = lite(path)
            .query_row("SELECT count(*) FROM _tributary_errors", [], |r| r.get(0))
            .unwrap();
        assert_eq!(errors, 1, "only the edit of the dropped column was refused");
    });
}
