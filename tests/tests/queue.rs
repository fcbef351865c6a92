//! The outbound queue's SQL consumer API, against a throwaway cluster.

use tributary_e2e::*;

fn put(c: &mut Client, lsn: &str, ord: i32, id: i32) -> u64 {
    // What the worker writes: keyed by source position, so a replay is a no-op.
    c.execute(
        "INSERT INTO tributary.queue_audit (lsn, ord, tbl, op, pk, data, committed_at)
         VALUES ($1::text::pg_lsn, $2, 'public.items', 'I', jsonb_build_object('id', $3::int), '{}', now())
         ON CONFLICT (hub, lsn, ord) DO NOTHING",
        &[&lsn, &ord, &id],
    )
    .unwrap()
}

fn read(c: &mut Client, n: i32, lease: &str) -> Vec<i64> {
    c.query(
        "SELECT id FROM sync_queue_read('audit', $1, $2::text::interval)",
        &[&n, &lease],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn queue_reads_in_order_with_leases_acks_and_dead_letters() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("SELECT sync_queue_create('audit', 3); SELECT sync_queue_create('audit', 3);")
        .unwrap();
    for i in 0..10 {
        assert_eq!(put(&mut c, "0/100", i, i), 1);
    }
    assert_eq!(
        put(&mut c, "0/100", 3, 3),
        0,
        "a replayed change is written once"
    );

    // Two consumers in open transactions get disjoint rows (SKIP LOCKED).
    let mut a = db.connect();
    let mut b = db.connect();
    a.batch_execute("BEGIN").unwrap();
    b.batch_execute("BEGIN").unwrap();
    let got_a = read(&mut a, 3, "30 seconds");
    let got_b = read(&mut b, 3, "30 seconds");
    a.batch_execute("COMMIT").unwrap();
    b.batch_execute("COMMIT").unwrap();
    assert_eq!(got_a, vec![1, 2, 3], "oldest first");
    assert_eq!(got_b, vec![4, 5, 6]);

    // Acked rows are done; a nacked row comes back at once, with its error.
    let n = scalar(
        &mut c,
        "SELECT sync_queue_ack('audit', ARRAY[1, 2]::bigint[])",
    );
    assert_eq!(n, 2);
    c.execute(
        "SELECT sync_queue_nack('audit', ARRAY[3]::bigint[], 'peer down')",
        &[],
    )
    .unwrap();
    assert_eq!(read(&mut c, 2, "30 seconds"), vec![3, 7]);

    // A lease that runs out without an ack: the rows come back.
    let short = read(&mut c, 3, "50 milliseconds");
    assert_eq!(short, vec![8, 9, 10]);
    std::thread::sleep(std::time::Duration::from_millis(120));
    assert_eq!(read(&mut c, 3, "50 milliseconds"), vec![8, 9, 10]);
    // Read a third time (max_attempts = 3), then they are dead letters.
    std::thread::sleep(std::time::Duration::from_millis(120));
    assert_eq!(read(&mut c, 3, "50 milliseconds"), vec![8, 9, 10]);
    std::thread::sleep(std::time::Duration::from_millis(120));
    assert!(read(&mut c, 3, "50 milliseconds").is_empty());
    let s = c
        .query_one(
            "SELECT ready, leased, acked, dead FROM sync_queue_stats('audit')",
            &[],
        )
        .unwrap();
    assert_eq!((s.get::<_, i64>(2), s.get::<_, i64>(3)), (2, 3));
    let err: String = c
        .query_one(
            "SELECT last_error FROM tributary.queue_audit WHERE id = 8",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(err.contains("not acknowledged after 3 reads"), "{err}");

    // Retention removes acked rows.
    c.batch_execute("SET tributary.retention = '0'").unwrap();
    let n = scalar(&mut c, "SELECT sync_queue_cleanup('audit')");
    assert_eq!(n, 2);
    // The queue's own table is never published (it would feed itself).
    let published = scalar(
        &mut c,
        "SELECT count(*) FROM pg_publication_tables WHERE tablename LIKE 'queue_%'",
    );
    assert_eq!(published, 0);
}

#[test]
fn queue_bad_input_is_refused_with_sqlstate_detail_and_hint() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    for name in ["tab'le", "\"", "]", "Upper", "", "a-b"] {
        expect_error(
            &mut c,
            &format!("SELECT sync_queue_create('{}')", name.replace('\'', "''")),
            "22023",
        );
    }
    expect_error(&mut c, "SELECT sync_queue_create(NULL)", "22023");
    expect_error(&mut c, "SELECT sync_queue_create('q', 0)", "22023");
    expect_error(
        &mut c,
        "SELECT * FROM sync_queue_read('missing', 10)",
        "TB006",
    );
    c.batch_execute("SELECT sync_queue_create('q')").unwrap();
    expect_error(&mut c, "SELECT * FROM sync_queue_read('q', 0)", "22023");
    expect_error(
        &mut c,
        "SELECT * FROM sync_queue_read('q', 10, '-1 second')",
        "22023",
    );
    expect_error(
        &mut c,
        "SELECT sync_queue_ack('missing', ARRAY[1]::bigint[])",
        "TB006",
    );
}
