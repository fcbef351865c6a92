//! The sync gateway end to end: a real cluster, real gateway processes
//! (`tributary-worker gateway`), real HTTP over loopback.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tributary_e2e::gateway::*;
use tributary_e2e::*;

/// customers and orders (tracked, the peer's), and vault (tracked, not
/// granted to the peer). Peer kiosk-1 speaks through role device.
fn hub(cluster: &Cluster) -> Db<'_> {
    let db = cluster.db();
    db.connect()
        .batch_execute(
            "CREATE TABLE customers (id int PRIMARY KEY, name text, tenant text);
             CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, amount numeric);
             CREATE TABLE vault (id int PRIMARY KEY, secret text);
             SELECT sync_track('customers'), sync_track('orders'), sync_track('vault');
             INSERT INTO customers SELECT g, 'c' || g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END FROM generate_series(1, 10) g;
             INSERT INTO vault VALUES (1, 'gold');",
        )
        .unwrap();
    setup_gateway_role(&db);
    add_peer(&db, "kiosk-1", "device", &["customers", "orders"]);
    db
}

fn kiosk() -> String {
    token("kiosk-1", json!({"tenant": "a"}), 300)
}

#[test]
fn tokens_missing_bad_expired_unknown_or_for_another_audience_get_401() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let g = GatewayProc::start(&cluster, &db, "[gateway.auth]\naudience = \"tributary\"");
    let good = token("kiosk-1", json!({"aud": "tributary"}), 300);
    g.get("/v1/schema", &good).expect(200);
    let forged = token_with(
        json!({"sub": "kiosk-1", "exp": 4_000_000_000i64, "aud": "tributary"}),
        json!({}),
        "another-secret-another-secret-another",
    );
    let cases = [
        (None, "no token"),
        (Some(forged), "signature"),
        (
            Some(token("kiosk-1", json!({"aud": "tributary"}), -120)),
            "expired",
        ),
        (
            Some(token("nobody", json!({"aud": "tributary"}), 300)),
            "unknown peer",
        ),
        (
            Some(token("kiosk-1", json!({"aud": "elsewhere"}), 300)),
            "audience",
        ),
        (Some("not-a-jwt".to_string()), "not a JWT"),
    ];
    for (t, want) in cases {
        let a = g.call("GET", "/v1/schema", t.as_deref(), None, &[]);
        let e = a.expect_error(401, "28000");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(want),
            "{want}: {e:#}"
        );
    }
    // A peer registered without a role cannot come in either.
    db.connect()
        .batch_execute("SELECT sync_set_peer('roleless', 5)")
        .unwrap();
    g.get("/v1/schema", &token("roleless", json!({}), 300))
        .expect_error(401, "28000");
    // No token ever reaches the log.
    assert!(!g.proc.log_text().contains(&good), "the log holds a token");
}

#[test]
fn the_schema_lists_the_tables_the_peer_may_read_with_their_keys() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let g = GatewayProc::start(&cluster, &db, "");
    let s = g.get("/v1/schema", &kiosk()).expect(200).clone();
    let names: Vec<&str> = s["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["customers", "orders"], "{s:#}");
    let c = &s["tables"][0];
    assert_eq!(c["primary_key"], json!(["id"]));
    let cols: Vec<&str> = c["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        vec!["id", "name", "tenant"],
        "tracking columns are not the app's"
    );
    // A table outside the peer's privileges: 403 on every endpoint.
    let t = kiosk();
    g.get("/v1/tables/vault/sync?fromVersion=0", &t)
        .expect_error(403, "42501");
    g.get("/v1/tables/vault/rows/1", &t)
        .expect_error(403, "42501");
    g.get("/v1/changes?since=0&tables=vault", &t)
        .expect_error(403, "42501");
    g.call(
        "POST",
        "/v1/tables/vault/changes",
        Some(&t),
        Some(&json!([])),
        &[],
    )
    .expect_error(403, "42501");
    // An unknown table is 404, an unknown route too; both JSON.
    g.get("/v1/tables/nowhere/sync?fromVersion=0", &t)
        .expect_error(404, "42P01");
    g.get("/v1/nothing", &t).expect_error(404, "P0002");
}

#[test]
fn a_table_payload_is_paged_exactly_with_one_version_while_writers_run() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    db.connect()
        .batch_execute(
            "INSERT INTO customers SELECT g, 'c' || g, 'a' FROM generate_series(11, 2000) g",
        )
        .unwrap();
    let g1 = GatewayProc::start(&cluster, &db, "");
    let g2 = GatewayProc::start(&cluster, &db, "");
    let t = kiosk();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let url = cluster.url(&db.name);
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&url, NoTls).unwrap();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                c.batch_execute(&format!(
                    "UPDATE customers SET name = 'w{i}' WHERE id = {};
                     INSERT INTO customers VALUES ({}, 'new', 'a');
                     DELETE FROM customers WHERE id = {};",
                    1 + (i * 37) % 2000,
                    5000 + i,
                    100 + i
                ))
                .unwrap();
            }
        })
    };
    // Pages alternate between two gateway processes: the token carries the window.
    let (items, versions, pages) = all_pages(&[&g1, &g2], "customers", 0, 150, &t);
    assert!(pages > 5, "{pages} pages");
    assert!(
        versions.iter().all(|v| *v == versions[0]),
        "every page of one window has the same Version: {versions:?}"
    );
    let mut keys = BTreeSet::new();
    for it in &items {
        assert!(keys.insert(it["id"].as_i64().unwrap()), "{it} twice");
        assert_eq!(it["$operation"], "I", "a first sync is all inserts");
    }
    // Then the diff from that Version catches up: the client's copy equals the hub.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let mut copy: BTreeMap<i64, Value> = items
        .into_iter()
        .map(|i| (i["id"].as_i64().unwrap(), i))
        .collect();
    let (diff, _, _) = all_pages(&[&g2, &g1], "customers", versions[0], 150, &t);
    for it in diff {
        let id = it["id"].as_i64().unwrap();
        match it["$operation"].as_str().unwrap() {
            "D" => {
                copy.remove(&id);
            }
            _ => {
                copy.insert(id, it);
            }
        }
    }
    let mut c = db.connect();
    let hub_rows: BTreeMap<i64, String> = c
        .query("SELECT id, name FROM customers", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i32>(0) as i64, r.get(1)))
        .collect();
    let client_rows: BTreeMap<i64, String> = copy
        .iter()
        .map(|(k, v)| (*k, v["name"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(client_rows, hub_rows);
}

#[test]
fn the_changes_feed_long_polls_until_a_change_commits() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let g = GatewayProc::start(&cluster, &db, "");
    let t = kiosk();
    let first = g.get("/v1/changes?since=0", &t).expect(200).clone();
    assert_eq!(first["changes"].as_array().unwrap().len(), 10);
    let v = first["version"].as_i64().unwrap();
    // Nothing new: an empty answer at the timeout.
    let t0 = Instant::now();
    let empty = g
        .get(&format!("/v1/changes?since={v}&wait=1"), &t)
        .expect(200)
        .clone();
    assert!(empty["changes"].as_array().unwrap().is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    // A change to another table than the one waited on does not answer it.
    let url = cluster.url(&db.name);
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(&url, NoTls).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        c.batch_execute("INSERT INTO vault VALUES (2, 'x')")
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        c.batch_execute("UPDATE customers SET name = 'live' WHERE id = 3")
            .unwrap();
        Instant::now()
    });
    let a = g
        .get(
            &format!("/v1/changes?since={v}&wait=20&tables=customers,orders"),
            &t,
        )
        .expect(200)
        .clone();
    let answered = Instant::now();
    let committed = writer.join().unwrap();
    let ch = a["changes"].as_array().unwrap();
    assert_eq!(ch.len(), 1, "{a:#}");
    assert_eq!(ch[0]["table"], "customers");
    assert_eq!(ch[0]["op"], "U");
    assert_eq!(ch[0]["data"]["name"], "live");
    assert!(
        answered.duration_since(committed) < Duration::from_secs(2),
        "answered {:?} after the commit",
        answered.duration_since(committed)
    );
    // The metrics count the requests and show no poll waiting now.
    let m = g.call("GET", "/metrics", None, None, &[]);
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains("tributary_gateway_requests_total{route=\"/v1/changes\",status=\"200\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("tributary_gateway_long_polls_waiting 0"),
        "{text}"
    );
    // A version the hub never gave out is refused; so is a bad wait.
    g.get("/v1/changes?since=999999999", &t)
        .expect_error(400, "TB001");
    g.get(&format!("/v1/changes?since={v}&wait=9999"), &t)
        .expect_error(400, "22023");
    g.get("/v1/changes?since=abc", &t)
        .expect_error(400, "22023");
}

#[test]
fn the_changes_feed_pages_across_tables_exactly() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    db.connect()
        .batch_execute("INSERT INTO orders SELECT g, 1 + g % 10, g FROM generate_series(1, 95) g")
        .unwrap();
    let g = GatewayProc::start(&cluster, &db, "");
    let t = kiosk();
    let mut seen = BTreeSet::new();
    let mut next: Option<String> = None;
    let mut versions = BTreeSet::new();
    loop {
        let q = match &next {
            None => "/v1/changes?since=0&pageSize=7".to_string(),
            Some(n) => format!("/v1/changes?next={n}&pageSize=7"),
        };
        let a = g.get(&q, &t).expect(200).clone();
        versions.insert(a["version"].as_i64().unwrap());
        for c in a["changes"].as_array().unwrap() {
            assert!(
                seen.insert((c["table"].to_string(), c["pk"].to_string())),
                "{c} twice"
            );
        }
        next = a["next"].as_str().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 105, "10 customers and 95 orders");
    assert_eq!(versions.len(), 1);
    // A forged continuation token is refused, not trusted.
    g.get("/v1/changes?next=eyJzaW5jZSI6OX0&pageSize=7", &t)
        .expect_error(400, "22023");
}

#[test]
fn posted_changes_are_applied_as_the_peer_and_bad_batches_apply_nothing() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let g = GatewayProc::start(&cluster, &db, "max_body_bytes = 4096");
    let t = kiosk();
    let a = g.call(
        "POST",
        "/v1/tables/customers/changes",
        Some(&t),
        Some(&json!([
            {"op": "U", "pk": {"id": 1}, "data": {"name": "from kiosk"}, "version": 2},
            {"op": "I", "pk": {"id": 50}, "data": {"name": "new", "tenant": "a"}, "version": 1},
            {"op": "D", "pk": {"id": 2}, "version": 2}
        ])),
        &[],
    );
    let o = a.expect(200)["outcomes"].as_array().unwrap().clone();
    let outcomes: Vec<&str> = o.iter().map(|x| x["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, vec!["VERSION_WIN", "NEW_RECORD", "VERSION_WIN"]);
    let mut c = db.connect();
    let origin: String = c
        .query_one("SELECT sync_origin FROM customers WHERE id = 50", &[])
        .unwrap()
        .get(0);
    assert_eq!(origin, "kiosk-1");
    let before = scalar(&mut c, "SELECT count(*) FROM customers");
    // Bad input: nothing of the batch applied, the change named.
    let bad = [
        (
            json!([{"op": "I", "pk": {"id": 60}, "data": {"name": "x"}, "version": 1},
                {"op": "I", "pk": {"id": 61}, "data": {"nope": 1}, "version": 1}]),
            "42703",
        ),
        (
            json!([{"op": "X", "pk": {"id": 62}, "version": 1}]),
            "22023",
        ),
        (json!({"op": "I"}), "22023"),
    ];
    for (body, code) in bad {
        let e = g
            .call(
                "POST",
                "/v1/tables/customers/changes",
                Some(&t),
                Some(&body),
                &[],
            )
            .expect_error(400, code)
            .clone();
        assert!(e["error"]["detail"].is_string(), "{e:#}");
    }
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM customers"), before);
    // Malformed JSON and a body over the limit.
    let http = &g.http;
    let r = http
        .post(format!("{}/v1/tables/customers/changes", g.base))
        .bearer_auth(&t)
        .body("[{\"op\": ")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().unwrap();
    assert_eq!(e["error"]["sqlstate"], "22P02");
    let big: Vec<Value> = (0..200)
        .map(|i| json!({"op": "I", "pk": {"id": 1000 + i}, "data": {"name": "x".repeat(40)}, "version": 1}))
        .collect();
    g.call(
        "POST",
        "/v1/tables/customers/changes",
        Some(&t),
        Some(&Value::Array(big)),
        &[],
    )
    .expect_error(413, "54000");
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM customers"), before);
}

#[test]
fn single_rows_answer_with_etags_and_honour_preconditions() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let g = GatewayProc::start(&cluster, &db, "");
    let t = kiosk();
    let a = g.get("/v1/tables/customers/rows/4", &t);
    assert_eq!(a.expect(200)["name"], "c4");
    let etag = a.header("etag").unwrap().to_string();
    // Unchanged: 304.
    let nm = g.call(
        "GET",
        "/v1/tables/customers/rows/4",
        Some(&t),
        None,
        &[("If-None-Match", &etag)],
    );
    assert_eq!(nm.status, 304);
    // A write at the current ETag: 200, the row and a new ETag.
    let w = g.call(
        "PUT",
        "/v1/tables/customers/rows/4",
        Some(&t),
        Some(&json!({"name": "renamed"})),
        &[("If-Match", &etag)],
    );
    assert_eq!(w.expect(200)["name"], "renamed");
    assert_eq!(w.body["tenant"], "a", "columns it did not set are kept");
    let etag2 = w.header("etag").unwrap().to_string();
    assert_ne!(etag, etag2);
    // The stale ETag: 412 with the current row, nothing written.
    let stale = g.call(
        "PUT",
        "/v1/tables/customers/rows/4",
        Some(&t),
        Some(&json!({"name": "lost"})),
        &[("If-Match", &etag)],
    );
    let b = stale.expect_error(412, "TB010");
    assert_eq!(b["current"]["name"], "renamed");
    assert_eq!(stale.header("etag"), Some(etag2.as_str()));
    // Create only: If-None-Match: * on an existing row is 412; on a new key it creates.
    g.call(
        "PUT",
        "/v1/tables/customers/rows/4",
        Some(&t),
        Some(&json!({"name": "x"})),
        &[("If-None-Match", "*")],
    )
    .expect_error(412, "TB010");
    let created = g.call(
        "PUT",
        "/v1/tables/customers/rows/77",
        Some(&t),
        Some(&json!({"name": "fresh", "tenant": "a"})),
        &[("If-None-Match", "*")],
    );
    assert_eq!(created.expect(200)["id"], 77);
    assert_eq!(created.header("tributary-outcome"), Some("NEW_RECORD"));
    // A body naming another key is refused.
    g.call(
        "PUT",
        "/v1/tables/customers/rows/77",
        Some(&t),
        Some(&json!({"id": 78})),
        &[],
    )
    .expect_error(400, "22023");
    // Delete with the stale ETag: 412; with the current one: 200 and gone.
    g.call(
        "DELETE",
        "/v1/tables/customers/rows/4",
        Some(&t),
        None,
        &[("If-Match", &etag)],
    )
    .expect_error(412, "TB010");
    let d = g.call(
        "DELETE",
        "/v1/tables/customers/rows/4",
        Some(&t),
        None,
        &[("If-Match", &etag2)],
    );
    assert_eq!(d.expect(200)["name"], "renamed");
    g.get("/v1/tables/customers/rows/4", &t)
        .expect_error(404, "P0002");
    g.call("DELETE", "/v1/tables/customers/rows/4", Some(&t), None, &[])
        .expect_error(404, "P0002");
    // An order whose customer is missing is parked: 202.
    let p = g.call(
        "PUT",
        "/v1/tables/orders/rows/1",
        Some(&t),
        Some(&json!({"customer_id": 999, "amount": 5})),
        &[],
    );
    assert_eq!(p.expect(202)["outcome"], "DEFERRED");
    // A key deleted at a newer revision than the write: 409 STALE.
    let mut c = db.connect();
    c.batch_execute(
        "SELECT sync_set_peer('erp', 1);
         SELECT * FROM sync_apply('customers', '[{\"op\": \"D\", \"pk\": {\"id\": 9}, \"version\": 2}]', 'erp')",
    )
    .unwrap();
    let s = g.call(
        "PUT",
        "/v1/tables/customers/rows/9",
        Some(&t),
        Some(&json!({"name": "back"})),
        &[],
    );
    s.expect_error(409, "TB012");
    // Keys that are not the table's.
    g.get("/v1/tables/customers/rows/abc", &t)
        .expect_error(400, "22P02");
    g.get(
        &format!(
            "/v1/tables/customers/rows/{}",
            enc("{\"id\": 1, \"nope\": 1}")
        ),
        &t,
    )
    .expect_error(400, "42703");
}

#[test]
fn limits_answer_429_400_and_504_with_json_and_answers_are_compressed() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let g = GatewayProc::start(
        &cluster,
        &db,
        "max_concurrent_per_peer = 1\nmax_page_size = 50\nrequest_timeout_ms = 1500",
    );
    let t = kiosk();
    g.get("/v1/tables/customers/sync?fromVersion=0&pageSize=51", &t)
        .expect_error(400, "22023");
    // One request in flight (a long poll) and the next is 429.
    let v = g.get("/v1/changes?since=0", &t).body["version"]
        .as_i64()
        .unwrap();
    let base = g.base.clone();
    let t2 = t.clone();
    let poll = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .get(format!("{base}/v1/changes?since={v}&wait=3"))
            .bearer_auth(t2)
            .send()
            .unwrap()
            .status()
            .as_u16()
    });
    std::thread::sleep(Duration::from_millis(700));
    let busy = g.get("/v1/schema", &t);
    busy.expect_error(429, "53300");
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert_eq!(poll.join().unwrap(), 200);
    // A row locked by another session past the request timeout: 504.
    let mut holder = db.connect();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("SELECT * FROM customers WHERE id = 5 FOR UPDATE")
        .unwrap();
    g.call(
        "PUT",
        "/v1/tables/customers/rows/5",
        Some(&t),
        Some(&json!({"name": "x"})),
        &[],
    )
    .expect_error(504, "57014");
    tx.rollback().unwrap();
    // Compression, as the client accepts it.
    for enc in ["gzip", "zstd"] {
        let r = reqwest::blocking::Client::builder()
            .no_gzip()
            .no_zstd()
            .build()
            .unwrap()
            .get(format!("{}/v1/tables/customers/sync?fromVersion=0", g.base))
            .bearer_auth(&t)
            .header("Accept-Encoding", enc)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers().get("content-encoding").unwrap(), enc);
    }
    // Health, the OpenAPI document, and a request id on every answer.
    let h = g.call("GET", "/healthz", None, None, &[]);
    assert_eq!(h.status, 200);
    assert!(h.header("x-request-id").is_some());
    let doc = g.call("GET", "/v1/openapi.json", None, None, &[]);
    assert!(doc.expect(200)["paths"]["/v1/changes"].is_object());
}

#[test]
fn claims_reach_sql_so_row_level_security_scopes_each_tenant() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    db.connect()
        .batch_execute(
            "ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
             CREATE POLICY by_tenant ON customers USING (tenant = sync_claim('tenant'));",
        )
        .unwrap();
    add_peer(&db, "kiosk-2", "device", &["customers", "orders"]);
    let g = GatewayProc::start(&cluster, &db, "");
    let a = token("kiosk-1", json!({"tenant": "a"}), 300);
    let b = token("kiosk-2", json!({"tenant": "b"}), 300);
    let ids = |t: &str| -> Vec<i64> {
        let (items, _, _) = all_pages(&[&g], "customers", 0, 100, t);
        items.iter().map(|i| i["id"].as_i64().unwrap()).collect()
    };
    assert_eq!(ids(&a), vec![2, 4, 6, 8, 10]);
    assert_eq!(ids(&b), vec![1, 3, 5, 7, 9]);
    g.get("/v1/tables/customers/rows/3", &a)
        .expect_error(404, "P0002");
    // A write the policy does not admit is refused by the hub.
    let e = g.call(
        "PUT",
        "/v1/tables/customers/rows/100",
        Some(&a),
        Some(&json!({"name": "sneaky", "tenant": "b"})),
        &[],
    );
    e.expect_error(403, "42501");
}

#[test]
fn hostile_table_and_column_names_are_served_safely() {
    let cluster = Cluster::start();
    let db = cluster.db();
    db.connect()
        .batch_execute(
            r#"CREATE TABLE "tab'le" (id int PRIMARY KEY, """" text, "]" text);
               SELECT sync_track('"tab''le"');
               INSERT INTO "tab'le" VALUES (1, 'quote', 'bracket');"#,
        )
        .unwrap();
    setup_gateway_role(&db);
    add_peer(&db, "kiosk-1", "dev\"ice]", &["\"tab'le\""]);
    let g = GatewayProc::start(&cluster, &db, "");
    let t = kiosk();
    let s = g.get("/v1/schema", &t).expect(200).clone();
    assert_eq!(s["tables"][0]["table"], "\"tab'le\"");
    let name = enc("\"tab'le\"");
    let p = g
        .get(&format!("/v1/tables/{name}/sync?fromVersion=0"), &t)
        .expect(200)
        .clone();
    assert_eq!(p["Data"][0]["\""], "quote");
    assert_eq!(p["Data"][0]["]"], "bracket");
    let w = g.call(
        "PUT",
        &format!("/v1/tables/{name}/rows/1"),
        Some(&t),
        Some(&json!({"\"": "still", "]": "safe"})),
        &[],
    );
    assert_eq!(w.expect(200)["]"], "safe");
    let o = g.call(
        "POST",
        &format!("/v1/tables/{name}/changes"),
        Some(&t),
        Some(&json!([{"op": "I", "pk": {"id": 2}, "data": {"\"": "x'); DROP TABLE \"tab'le\"; --"}, "version": 1}])),
        &[],
    );
    assert_eq!(o.expect(200)["outcomes"][0]["outcome"], "NEW_RECORD");
    assert_eq!(
        scalar(&mut db.connect(), r#"SELECT count(*) FROM "tab'le""#),
        2
    );
    // A name that is no table, or a SQL fragment: 404 or 400, never SQL.
    g.get(
        &format!("/v1/tables/{}/sync?fromVersion=0", enc("x; DROP TABLE y")),
        &t,
    )
    .expect(400);
}

#[test]
fn tls_serves_with_a_certificate_made_here() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let dir = tempfile::tempdir().unwrap();
    certs::ca(dir.path(), "ca", "/CN=Gateway test CA");
    certs::server(dir.path(), "ca");
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let (cfg, port) = config(
        &cluster,
        &db,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.crt")).unwrap()).unwrap();
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let g = GatewayProc::start_with(&cfg, &format!("https://localhost:{port}"), http);
    g.get("/v1/schema", &kiosk()).expect(200);
    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send();
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[test]
fn run_serves_the_gateway_beside_the_stream() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    worker::setup_worker_role(&db, &["audit"]);
    let (gw, port) = config(&cluster, &db, "");
    let cfg = format!(
        "{}\n{gw}",
        worker::config(
            &cluster,
            &db,
            "gw_slot",
            "[[destination]]\nname = \"audit\"\nkind = \"queue\"\n"
        )
    );
    let mut w = worker::WorkerProc::start(&cfg, &[("TRIBUTARY_GATEWAY_JWT_SECRET", SECRET)]);
    let mut c = db.connect();
    w.until_slot(&mut c, "gw_slot");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::new();
    w.until(Duration::from_secs(60), "the gateway", || {
        http.get(format!("{base}/healthz"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    // A peer's write through the gateway reaches the queue through the stream.
    let r = http
        .post(format!("{base}/v1/tables/customers/changes"))
        .bearer_auth(kiosk())
        .json(&json!([{"op": "I", "pk": {"id": 321}, "data": {"name": "via http"}, "version": 1}]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    w.until(Duration::from_secs(60), "the queue row", || {
        scalar(
            &mut c,
            "SELECT count(*) FROM tributary.queue_audit WHERE pk = '{\"id\": 321}' AND origin = 'kiosk-1'",
        ) == 1
    });
    assert!(w.sigterm(Duration::from_secs(30)).success());
}

/// orders filtered by tenant; peers a1 (tenant a) and b1 (tenant b).
fn filtered_hub(cluster: &Cluster) -> Db<'_> {
    let db = hub(cluster);
    db.connect()
        .batch_execute(
            "INSERT INTO orders SELECT g, g, g FROM generate_series(1, 10) g;
             ALTER TABLE orders ADD COLUMN tenant text;
             UPDATE orders SET tenant = CASE WHEN id % 2 = 0 THEN 'a' ELSE 'b' END;
             SELECT sync_set_filter('orders', $$tenant = sync_claim('tenant')$$);",
        )
        .unwrap();
    add_peer(&db, "a1", "device", &["customers", "orders"]);
    add_peer(&db, "b1", "device", &["customers", "orders"]);
    db
}

fn ids(items: &[Value]) -> Vec<i64> {
    let mut v: Vec<i64> = items.iter().map(|i| i["id"].as_i64().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn row_filters_scope_each_tenant_exactly_through_http() {
    let cluster = Cluster::start();
    let db = filtered_hub(&cluster);
    let g = GatewayProc::start(&cluster, &db, "");
    let a = token("a1", json!({"tenant": "a"}), 300);
    let b = token("b1", json!({"tenant": "b"}), 300);
    let (full_a, va, _) = all_pages(&[&g], "orders", 0, 3, &a);
    let (full_b, vb, _) = all_pages(&[&g], "orders", 0, 3, &b);
    assert_eq!(ids(&full_a), vec![2, 4, 6, 8, 10]);
    assert_eq!(ids(&full_b), vec![1, 3, 5, 7, 9]);
    let mut c = db.connect();
    // A move from b to a, a move from a to b, and a delete of one of b's rows.
    c.batch_execute(
        "UPDATE orders SET tenant = 'a' WHERE id = 1;
         UPDATE orders SET tenant = 'b' WHERE id = 2;
         DELETE FROM orders WHERE id = 3;",
    )
    .unwrap();
    let (diff_a, _, _) = all_pages(&[&g], "orders", va[0], 100, &a);
    let (diff_b, _, _) = all_pages(&[&g], "orders", vb[0], 100, &b);
    let ops = |d: &[Value]| -> BTreeMap<i64, String> {
        d.iter()
            .map(|i| {
                (
                    i["id"].as_i64().unwrap(),
                    i["$operation"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    // a: row 1 moved in (whole), row 2 moved out (D); never b's deleted key 3.
    assert_eq!(
        ops(&diff_a),
        BTreeMap::from([(1, "U".into()), (2, "D".into())]),
        "{diff_a:?}"
    );
    assert_eq!(diff_a.iter().find(|i| i["id"] == 1).unwrap()["amount"], 1);
    // b: row 1 moved out, row 2 moved in, its own row 3 deleted.
    assert_eq!(
        ops(&diff_b),
        BTreeMap::from([(1, "D".into()), (2, "U".into()), (3, "D".into())]),
        "{diff_b:?}"
    );
    // Writes outside the filter are refused whole (403), nothing applied.
    let before = scalar(&mut c, "SELECT count(*) FROM orders");
    g.call(
        "POST",
        "/v1/tables/orders/changes",
        Some(&a),
        Some(&json!([
            {"op": "I", "pk": {"id": 40}, "data": {"customer_id": 1, "tenant": "a"}, "version": 1},
            {"op": "I", "pk": {"id": 41}, "data": {"customer_id": 1, "tenant": "b"}, "version": 1}
        ])),
        &[],
    )
    .expect_error(403, "42501");
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM orders"), before);
    // b's row is not there for a, and a cannot write it or move its own out.
    g.get("/v1/tables/orders/rows/5", &a)
        .expect_error(404, "P0002");
    g.call(
        "PUT",
        "/v1/tables/orders/rows/5",
        Some(&a),
        Some(&json!({"amount": 0})),
        &[],
    )
    .expect_error(403, "42501");
    g.call(
        "PUT",
        "/v1/tables/orders/rows/4",
        Some(&a),
        Some(&json!({"tenant": "b"})),
        &[],
    )
    .expect_error(403, "42501");
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) FROM orders WHERE tenant = 'b' AND id = 4"
        ),
        0
    );
    // A changed filter: older versions resync in full (ReasonCode 6).
    c.batch_execute(
        "SELECT sync_set_filter('orders', $$tenant = sync_claim('tenant') AND amount > 0$$)",
    )
    .unwrap();
    let p = g
        .get(&format!("/v1/tables/orders/sync?fromVersion={}", va[0]), &a)
        .expect(200)
        .clone();
    assert_eq!(p["Metadata"]["Sync"]["Type"], "Full");
    assert_eq!(p["Metadata"]["Sync"]["ReasonCode"], 6);
    g.get(&format!("/v1/changes?since={}&tables=orders", va[0]), &a)
        .expect_error(410, "TB002");
}

#[test]
fn a_long_poll_wakes_only_for_changes_its_tenant_may_read() {
    let cluster = Cluster::start();
    let db = filtered_hub(&cluster);
    let g = GatewayProc::start(&cluster, &db, "");
    let a = token("a1", json!({"tenant": "a"}), 300);
    let b = token("b1", json!({"tenant": "b"}), 300);
    let v = g.get("/v1/changes?since=0&tables=orders", &a).body["version"]
        .as_i64()
        .unwrap();
    let poll = |t: String| {
        let base = g.base.clone();
        std::thread::spawn(move || {
            let r: Value = reqwest::blocking::Client::new()
                .get(format!("{base}/v1/changes?since={v}&tables=orders&wait=3"))
                .bearer_auth(t)
                .timeout(Duration::from_secs(30))
                .send()
                .unwrap()
                .json()
                .unwrap();
            (r, Instant::now())
        })
    };
    let (pa, pb) = (poll(a.clone()), poll(b));
    std::thread::sleep(Duration::from_millis(500));
    let committed = Instant::now();
    db.connect()
        .batch_execute("UPDATE orders SET amount = 99 WHERE id = 5")
        .unwrap();
    let (rb, tb) = pb.join().unwrap();
    let (ra, ta) = pa.join().unwrap();
    assert_eq!(rb["changes"].as_array().unwrap().len(), 1, "{rb:#}");
    assert!(tb.duration_since(committed) < Duration::from_secs(2));
    assert!(ra["changes"].as_array().unwrap().is_empty(), "{ra:#}");
    assert!(
        ta.duration_since(committed) > Duration::from_secs(2),
        "tenant a answered at the timeout, not at b's commit"
    );
    // A's answer carries the version the watcher checked up to for it:
    // past b's commit, which it may not read.
    let va = ra["version"].as_i64().unwrap();
    assert!(va >= rb["version"].as_i64().unwrap(), "{ra:#} {rb:#}");
    assert!(g
        .get(&format!("/v1/changes?since={v}&tables=orders"), &a)
        .body["changes"]
        .as_array()
        .unwrap()
        .is_empty());
    // Polling again with the version a read just gave starts waiting
    // without a read (nothing later was current), and still wakes for A's
    // own change.
    let without_read = || {
        let m = g.call("GET", "/metrics", None, None, &[]);
        m.body
            .as_str()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("tributary_gateway_long_polls_without_read_total "))
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    let before = without_read();
    let va = g
        .get(&format!("/v1/changes?since={va}&tables=orders"), &a)
        .body["version"]
        .as_i64()
        .unwrap();
    let base = g.base.clone();
    let pa = std::thread::spawn(move || {
        let r: Value = reqwest::blocking::Client::new()
            .get(format!(
                "{base}/v1/changes?since={va}&tables=orders&wait=10"
            ))
            .bearer_auth(a)
            .timeout(Duration::from_secs(30))
            .send()
            .unwrap()
            .json()
            .unwrap();
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(500));
    let committed = Instant::now();
    db.connect()
        .batch_execute("UPDATE orders SET amount = 7 WHERE id = 2")
        .unwrap();
    let (ra, ta) = pa.join().unwrap();
    assert!(
        ta.duration_since(committed) < Duration::from_secs(5),
        "woken by the commit, not at the 10 s deadline"
    );
    assert_eq!(
        ra["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["pk"]["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [2],
        "{ra:#}"
    );
    assert_eq!(without_read(), before + 1);
}

/// base64url without padding.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn tokens_signed_with_a_jwks_key_are_accepted_and_others_are_not() {
    let cluster = Cluster::start();
    let db = hub(&cluster);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An ES256 key and an Ed25519 key; the JWKS holds their public halves.
    certs::openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.pem",
        ],
    );
    certs::openssl(
        d,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "ec.pem", "-out", "ec8.pem",
        ],
    );
    certs::openssl(
        d,
        &[
            "ec", "-in", "ec.pem", "-pubout", "-outform", "DER", "-out", "ec.der",
        ],
    );
    certs::openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"]);
    certs::openssl(
        d,
        &[
            "pkey", "-in", "ed.pem", "-pubout", "-outform", "DER", "-out", "ed.der",
        ],
    );
    let ec = std::fs::read(d.join("ec.der")).unwrap();
    let point = &ec[ec.len() - 64..];
    let ed = std::fs::read(d.join("ed.der")).unwrap();
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "ec1",
         "x": b64url(&point[..32]), "y": b64url(&point[32..])},
        {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "ed1",
         "x": b64url(&ed[ed.len() - 32..])}
    ]});
    std::fs::write(d.join("jwks.json"), jwks.to_string()).unwrap();
    let g = GatewayProc::start(
        &cluster,
        &db,
        &format!(
            "[gateway.auth]\njwt_public_keys = \"{}\"",
            d.join("jwks.json").display()
        ),
    );
    let sign = |alg: jsonwebtoken::Algorithm, kid: &str, key: jsonwebtoken::EncodingKey| {
        let mut h = jsonwebtoken::Header::new(alg);
        h.kid = Some(kid.into());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300;
        jsonwebtoken::encode(&h, &json!({"sub": "kiosk-1", "exp": exp}), &key).unwrap()
    };
    let ec_key = || {
        jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(d.join("ec8.pem")).unwrap()).unwrap()
    };
    let ed_key = || {
        jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(d.join("ed.pem")).unwrap()).unwrap()
    };
    g.get(
        "/v1/schema",
        &sign(jsonwebtoken::Algorithm::ES256, "ec1", ec_key()),
    )
    .expect(200);
    g.get(
        "/v1/schema",
        &sign(jsonwebtoken::Algorithm::EdDSA, "ed1", ed_key()),
    )
    .expect(200);
    // A key the JWKS does not hold under that kid, or not at all.
    g.get(
        "/v1/schema",
        &sign(jsonwebtoken::Algorithm::ES256, "ed1", ec_key()),
    )
    .expect_error(401, "28000");
    certs::openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "other.pem",
        ],
    );
    certs::openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "other.pem",
            "-out",
            "other8.pem",
        ],
    );
    let other =
        jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(d.join("other8.pem")).unwrap())
            .unwrap();
    g.get(
        "/v1/schema",
        &sign(jsonwebtoken::Algorithm::ES256, "ec1", other),
    )
    .expect_error(401, "28000");
}
