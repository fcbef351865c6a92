//! The worker's pgoutput decoder against a real PostgreSQL 15: the bytes a
//! walsender sends, read through the SQL interface of a pgoutput slot.

use tributary_e2e::*;
use tributary_worker::pgoutput::{Decoder, Message, Value};

fn messages(c: &mut Client, slot: &str) -> Vec<(Option<u32>, Message)> {
    let rows = c
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
               'proto_version', '2', 'publication_names', 'tributary', 'streaming', 'on')",
            &[&slot],
        )
        .unwrap();
    let mut d = Decoder::new();
    rows.iter()
        .map(|r| {
            let bytes: Vec<u8> = r.get(0);
            let m = d
                .decode(&bytes)
                .unwrap_or_else(|e| panic!("cannot decode {bytes:?}: {e}"));
            (m.xid, m.message)
        })
        .collect()
}

#[test]
fn real_pgoutput_decodes_including_unchanged_toast_and_streamed_transactions() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    // Decoding happens in this session: stream what exceeds 64kB.
    c.batch_execute("SET logical_decoding_work_mem = '64kB'")
        .unwrap();
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, big text, n int); SELECT sync_track('t')")
        .unwrap();
    c.batch_execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        .unwrap();
    // A value too large and too random to stay inline: it is TOASTed.
    c.batch_execute(
        "INSERT INTO t SELECT 1, string_agg(md5(random()::text), '') FROM generate_series(1, 400)",
    )
    .unwrap();
    c.batch_execute("UPDATE t SET n = 2 WHERE id = 1").unwrap();
    c.batch_execute("DELETE FROM t WHERE id = 1").unwrap();
    let ms = messages(&mut c, "s");
    let kinds: Vec<&str> = ms
        .iter()
        .map(|(_, m)| match m {
            Message::Begin { .. } => "B",
            Message::Commit { .. } => "C",
            Message::Relation(_) => "R",
            Message::Insert { .. } => "I",
            Message::Update { .. } => "U",
            Message::Delete { .. } => "D",
            _ => "?",
        })
        .collect();
    assert_eq!(kinds, ["B", "R", "I", "C", "B", "U", "C", "B", "D", "C"]);
    let rel = ms
        .iter()
        .find_map(|(_, m)| {
            if let Message::Relation(r) = m {
                Some(r)
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("public", "t"));
    assert!(rel.columns.iter().any(|c| c.name == "sync_version"));
    assert!(rel.columns[0].key, "the primary key column is flagged");
    let update = ms
        .iter()
        .find_map(|(_, m)| {
            if let Message::Update { new, .. } = m {
                Some(new)
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(
        update.0[1],
        Value::UnchangedToast,
        "the untouched TOASTed column is 'unchanged', not NULL"
    );
    assert_eq!(update.0[2], Value::Text(b"2".to_vec()));

    // A transaction bigger than logical_decoding_work_mem is streamed: its
    // changes come between Stream Start and Stop, each with its xid, and it
    // ends in Stream Commit. (Stream Abort is covered by the decoder's
    // property tests: PostgreSQL 15 drops the changes of a transaction it
    // already knows to be aborted, so what it emits for one is timing-bound.)
    c.batch_execute("INSERT INTO t SELECT g, repeat('x', 200), g FROM generate_series(10, 3000) g")
        .unwrap();
    let ms = messages(&mut c, "s");
    let starts = ms
        .iter()
        .filter(|(_, m)| matches!(m, Message::StreamStart { .. }))
        .count();
    let stops = ms
        .iter()
        .filter(|(_, m)| matches!(m, Message::StreamStop))
        .count();
    assert!(
        starts >= 1 && starts == stops,
        "streamed in segments ({starts} starts, {stops} stops)"
    );
    let commit_xid = ms
        .iter()
        .find_map(|(_, m)| {
            if let Message::StreamCommit { xid, .. } = m {
                Some(*xid)
            } else {
                None
            }
        })
        .expect("a stream commit");
    let inserts = ms
        .iter()
        .filter(|(xid, m)| *xid == Some(commit_xid) && matches!(m, Message::Insert { .. }))
        .count();
    assert_eq!(
        inserts, 2991,
        "every streamed insert carries its transaction's xid"
    );
}
