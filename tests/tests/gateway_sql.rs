//! The SQL the HTTP gateway runs (sql/gateway.sql, sql/pull.sql): acting
//! for a peer as its role with the token's claims, payloads in pages, one
//! row by key, the schema a client sees, and the shared watcher. Run as
//! plain roles against a real cluster, with hostile names: a table
//! `tab'le`, a column `"`, a role `ro"le]`.

use tributary_e2e::*;

/// The gateway's login role `gw` (NOINHERIT: no data privileges of its
/// own), the peer `dev1` spoken for by the NOLOGIN role `ro"le]`, which may
/// read and write `tab'le` and sees the rows of its tenant (an RLS policy
/// on the claims). `dev2` is registered without a role.
fn gateway(c: &mut Client) {
    c.batch_execute(
        r#"CREATE TABLE "tab'le" ("""" int PRIMARY KEY, tenant text, t text, n numeric);
           SELECT sync_track('"tab''le"');
           INSERT INTO "tab'le" VALUES (1, 't1', 'a', 1.50), (2, 't2', 'b', 2), (3, 't1', 'c''q"', NULL);
           CREATE ROLE gw LOGIN NOINHERIT;
           CREATE ROLE "ro""le]" NOLOGIN;
           GRANT "ro""le]" TO gw;
           GRANT SELECT, INSERT, UPDATE, DELETE ON "tab'le" TO "ro""le]";
           ALTER TABLE "tab'le" ENABLE ROW LEVEL SECURITY;
           CREATE POLICY by_tenant ON "tab'le" TO "ro""le]" USING (tenant = sync_claim('tenant'));
           SELECT sync_set_peer('dev1', 5, '"ro""le]"'), sync_set_peer('dev2', 6);
           SELECT sync_gateway_grant('gw');"#,
    )
    .unwrap();
}

fn text(c: &mut impl postgres::GenericClient, sql: &str) -> Option<String> {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn who(c: &mut impl postgres::GenericClient) -> (String, String, Option<String>) {
    let r = c
        .query_one(
            "SELECT current_user::text, session_user::text, sync_claim('tenant')",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[test]
fn acting_for_a_peer_takes_its_role_and_claims_until_commit_or_rollback() {
    let cluster = Cluster::start();
    let db = cluster.db();
    gateway(&mut db.connect());
    let mut gw = db.connect_as("gw");
    let before = ("gw".to_string(), "gw".to_string(), None);
    assert_eq!(who(&mut gw), before);

    let mut tx = gw.transaction().unwrap();
    let role: String = tx
        .query_one(
            "SELECT sync_act_for_peer($1, $2::text::jsonb)",
            &[&"dev1", &r#"{"tenant": "t1", "level": 3}"#],
        )
        .unwrap()
        .get(0);
    assert_eq!(role, "ro\"le]", "the role's name, unquoted");
    assert_eq!(
        who(&mut tx),
        ("ro\"le]".into(), "gw".into(), Some("t1".into()))
    );
    assert_eq!(
        text(&mut tx, "SELECT sync_claim('level')").as_deref(),
        Some("3")
    );
    // The peer's privileges and RLS apply: it sees its tenant's rows only.
    assert_eq!(
        scalar_in(&mut tx, r#"SELECT count(*) FROM "tab'le""#),
        2,
        "the policy reads the claims"
    );
    tx.commit().unwrap();
    assert_eq!(who(&mut gw), before, "reset at COMMIT");

    let mut tx = gw.transaction().unwrap();
    tx.execute(
        "SELECT sync_act_for_peer('dev1', '{\"tenant\": \"t2\"}')",
        &[],
    )
    .unwrap();
    assert_eq!(who(&mut tx).2.as_deref(), Some("t2"));
    tx.rollback().unwrap();
    assert_eq!(who(&mut gw), before, "reset at ROLLBACK");

    // Without claims: none, and the policy lets nothing through.
    let mut tx = gw.transaction().unwrap();
    tx.execute("SELECT sync_act_for_peer('dev1')", &[]).unwrap();
    assert_eq!(who(&mut tx).2, None);
    assert_eq!(scalar_in(&mut tx, r#"SELECT count(*) FROM "tab'le""#), 0);
    tx.commit().unwrap();
    // The gateway itself (NOINHERIT) reads nothing.
    let e = db_error(gw.query(r#"SELECT * FROM "tab'le""#, &[]).unwrap_err());
    assert_eq!(e.code, "42501");
}

fn scalar_in(c: &mut impl postgres::GenericClient, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[test]
fn acting_for_a_peer_is_refused_for_unknown_or_roleless_peers_the_hub_bad_claims_and_non_members() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    gateway(&mut c);
    c.batch_execute("CREATE ROLE stranger LOGIN").unwrap();
    let mut gw = db.connect_as("gw");

    let e = expect_error(&mut gw, "SELECT sync_act_for_peer('gh''ost')", "28000");
    assert!(e.message.contains("unknown peer 'gh''ost'"), "{e:?}");
    assert!(
        e.hint
            .unwrap()
            .contains("sync_set_peer('gh''ost', <priority>, <role>)"),
        "the hint names the fix"
    );
    let e = expect_error(&mut gw, "SELECT sync_act_for_peer('dev2')", "28000");
    assert!(e.message.contains("has no role"), "{e:?}");
    assert!(e.hint.unwrap().contains("sync_set_peer('dev2', 6, <role>)"));
    let e = expect_error(&mut gw, "SELECT sync_act_for_peer('')", "28000");
    assert!(e.message.contains("hub"), "{e:?}");
    expect_error(&mut gw, "SELECT sync_act_for_peer(NULL)", "22004");
    for claims in ["'[1]'", "'\"t1\"'", "'null'", "NULL"] {
        expect_error(
            &mut gw,
            &format!("SELECT sync_act_for_peer('dev1', {claims}::jsonb)"),
            "22023",
        );
    }

    // A login role that is not a member of the peer's role.
    let mut s = db.connect_as("stranger");
    let e = expect_error(&mut s, "SELECT sync_act_for_peer('dev1')", "42501");
    let detail = e.detail.unwrap();
    assert!(
        detail.contains("\"ro\"\"le]\"") && detail.contains("stranger"),
        "{detail}"
    );
    assert!(
        e.hint.unwrap().contains("GRANT \"ro\"\"le]\" TO stranger"),
        "the hint is the GRANT that allows it"
    );
    assert_eq!(
        text(&mut s, "SELECT current_user::text").as_deref(),
        Some("stranger")
    );
    // Once granted, it may.
    c.batch_execute("GRANT \"ro\"\"le]\" TO stranger").unwrap();
    s.batch_execute("BEGIN; SELECT sync_act_for_peer('dev1'); COMMIT")
        .unwrap();
}

#[test]
fn a_claim_gives_a_string_its_value_and_other_json_its_text() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"SET tributary.claims = '{"sub": "d\"1", "n": 12.50, "ok": true, "none": null, "roles": ["a", "b"], "org": {"id": 1}}'"#,
    )
    .unwrap();
    let get = |c: &mut Client, name: &str| -> Option<String> {
        c.query_one("SELECT sync_claim($1)", &[&name])
            .unwrap()
            .get(0)
    };
    assert_eq!(get(&mut c, "sub").as_deref(), Some("d\"1"));
    assert_eq!(
        get(&mut c, "n").as_deref(),
        Some("12.50"),
        "numbers exactly"
    );
    assert_eq!(get(&mut c, "ok").as_deref(), Some("true"));
    assert_eq!(get(&mut c, "roles").as_deref(), Some(r#"["a", "b"]"#));
    assert_eq!(get(&mut c, "org").as_deref(), Some(r#"{"id": 1}"#));
    assert_eq!(get(&mut c, "none"), None);
    assert_eq!(get(&mut c, "absent"), None);
    assert_eq!(text(&mut c, "SELECT sync_claim(NULL)"), None, "STRICT");
    // A new value is read anew; empty means no claims.
    c.batch_execute(r#"SET tributary.claims = '{"sub": "d2"}'"#)
        .unwrap();
    assert_eq!(get(&mut c, "sub").as_deref(), Some("d2"));
    c.batch_execute("RESET tributary.claims").unwrap();
    assert_eq!(get(&mut c, "sub"), None);

    for bad in ["'[1]'", "'\"x\"'", "'{\"a\": '", "'nope'"] {
        let e = expect_error(&mut c, &format!("SET tributary.claims = {bad}"), "22023");
        assert!(e.detail.unwrap().contains("JSON object"), "{bad}");
    }
}

/// `sync_payload`'s Data as 0.5.0 built it, from sync_changes_since.
const DATA_AS_BEFORE: &str = "
    SELECT coalesce(jsonb_agg(CASE WHEN c.op = 'D' THEN c.pk ELSE c.data::jsonb END
                              || jsonb_build_object('$operation', c.op) ORDER BY c.pk), '[]'::jsonb)::text
      FROM sync_changes_since($1, $2, ARRAY[$3::text::regclass]) AS c";

/// Compares, in one snapshot, sync_payload with the 0.5.0 Data and with the
/// items of sync_payload_rows over the window sync_payload_window gives.
/// Returns (Type, ReasonCode, number of items).
fn payload_agrees(c: &mut Client, tbl: &str, from: i64) -> (String, i32, usize) {
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    let w = tx
        .query_one(
            "SELECT version, type, reason_code, since FROM sync_payload_window($1::text::regclass, $2)",
            &[&tbl, &from],
        )
        .unwrap();
    let (version, kind, reason, since): (i64, String, i32, i64) =
        (w.get(0), w.get(1), w.get(2), w.get(3));
    let payload = tx
        .query_one(
            "SELECT (p->'Metadata'->'Sync')::text, (p->'Data')::text FROM sync_payload($1::text::regclass, $2) p",
            &[&tbl, &from],
        )
        .unwrap();
    let meta: serde_json::Value = serde_json::from_str(payload.get(0)).unwrap();
    assert_eq!(meta["Version"], version);
    assert_eq!(meta["Type"], kind.as_str());
    assert_eq!(meta["ReasonCode"], reason);
    let data: String = payload.get(1);
    let before: String = tx
        .query_one(DATA_AS_BEFORE, &[&since, &version, &tbl])
        .unwrap()
        .get(0);
    assert_eq!(data, before, "sync_payload's Data is as it was");
    let items: Vec<String> = tx
        .query(
            "SELECT item::text FROM sync_payload_rows($1::text::regclass, $2, $3)",
            &[&tbl, &since, &version],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let from_rows: String = tx
        .query_one(
            "SELECT coalesce(jsonb_agg(x::jsonb ORDER BY n), '[]')::text FROM unnest($1::text[]) WITH ORDINALITY AS u(x, n)",
            &[&items],
        )
        .unwrap()
        .get(0);
    assert_eq!(data, from_rows, "sync_payload is made of sync_payload_rows");
    tx.commit().unwrap();
    (kind, reason, items.len())
}

#[test]
fn sync_payload_is_unchanged_and_made_of_the_window_and_the_rows() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    gateway(&mut c);
    let t = "\"tab'le\"";
    assert_eq!(payload_agrees(&mut c, t, 0), ("Full".into(), 1, 3));
    let v = scalar(&mut c, "SELECT sync_current_version()");
    c.batch_execute(
        r#"UPDATE "tab'le" SET t = 'changed' WHERE """" = 1;
           DELETE FROM "tab'le" WHERE """" = 2;
           INSERT INTO "tab'le" VALUES (4, 't1', 'new', 4);"#,
    )
    .unwrap();
    assert_eq!(payload_agrees(&mut c, t, v), ("Diff".into(), 0, 3));
    let items: Vec<String> = c
        .query(
            "SELECT item::text FROM sync_payload_rows($1::text::regclass, $2, NULL)",
            &[&t, &v],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        items,
        [
            r#"{"$operation": "U", "\"": 1, "tenant": "t1", "t": "changed", "n": 1.50}"#,
            r#"{"$operation": "D", "\"": 2}"#,
            r#"{"$operation": "I", "\"": 4, "tenant": "t1", "t": "new", "n": 4}"#,
        ],
        "the operation first, then the row's columns in table order, as JSON text"
    );
    // A truncate: Full with ReasonCode 3, read from 0.
    c.batch_execute(r#"TRUNCATE "tab'le"; INSERT INTO "tab'le" VALUES (9, 't1', 'z', 0)"#)
        .unwrap();
    assert_eq!(payload_agrees(&mut c, t, v), ("Full".into(), 3, 1));

    // A column named "$operation" is the operation's key: left out, as before.
    c.batch_execute(
        r#"CREATE TABLE ops (id int PRIMARY KEY, "$operation" text); SELECT sync_track('ops');
           INSERT INTO ops VALUES (1, 'mine');"#,
    )
    .unwrap();
    payload_agrees(&mut c, "ops", 0);
    assert_eq!(
        text(
            &mut c,
            "SELECT item::text FROM sync_payload_rows('ops', 0, NULL)"
        )
        .as_deref(),
        Some(r#"{"$operation": "I", "id": 1}"#)
    );
}

#[test]
fn the_payload_window_gives_sync_payloads_errors() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    gateway(&mut c);
    c.batch_execute("CREATE TABLE plain (id int PRIMARY KEY)")
        .unwrap();
    let t = "'\"tab''le\"'";
    for (sql, code) in [
        (
            format!("SELECT * FROM sync_payload_window({t}, NULL)"),
            "22004",
        ),
        (
            format!("SELECT * FROM sync_payload_window({t}, -1)"),
            "22023",
        ),
        (
            format!("SELECT * FROM sync_payload_window({t}, sync_current_version() + 10)"),
            "TB001",
        ),
        (
            "SELECT * FROM sync_payload_window('plain', 0)".to_string(),
            "TB003",
        ),
        (
            "SELECT * FROM sync_payload_rows('plain', 0, NULL)".to_string(),
            "TB003",
        ),
        (
            format!("SELECT * FROM sync_payload_rows({t}, 0, NULL, '{{\"\\\"\": 1}}')"),
            "22023",
        ),
    ] {
        expect_error(&mut c, &sql, code);
        // The same errors as sync_payload.
        if sql.contains("sync_payload_window") {
            let same = sql.replace("* FROM sync_payload_window", "sync_payload");
            expect_error(&mut c, &same, code);
        }
    }
}

#[test]
fn paging_the_payload_rows_with_after_pk_gives_every_row_exactly_once() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE "tab'le" ("""" text, k int, v text, PRIMARY KEY ("""", k));
           SELECT sync_track('"tab''le"');
           INSERT INTO "tab'le" SELECT 'g' || (i % 4), i, 'v' || i FROM generate_series(1, 53) i;"#,
    )
    .unwrap();
    let v0 = scalar(&mut c, "SELECT sync_current_version()");
    c.batch_execute(
        r#"DELETE FROM "tab'le" WHERE k % 10 = 0; UPDATE "tab'le" SET v = 'u' WHERE k % 7 = 0"#,
    )
    .unwrap();
    let v1 = scalar(&mut c, "SELECT sync_current_version()");
    let t = "\"tab'le\"";
    for since in [0, v0] {
        let all: Vec<(String, String)> = c
            .query(
                "SELECT pk::text, item::text FROM sync_payload_rows($1::text::regclass, $2, $3)",
                &[&t, &since, &v1],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut paged: Vec<(String, String)> = vec![];
        let mut after: Option<String> = None;
        loop {
            let page: Vec<(String, String)> = c
                .query(
                    "SELECT pk::text, item::text FROM sync_payload_rows($1::text::regclass, $2, $3, $4::text::jsonb, 7)",
                    &[&t, &since, &v1, &after],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let last = page.len() < 7;
            after = page.last().map(|p| p.0.clone());
            paged.extend(page);
            if last {
                break;
            }
        }
        assert!(all.len() > 7, "several pages");
        assert_eq!(paged, all, "every item once, in pk order (since {since})");
    }
}

#[test]
fn a_row_by_key_is_read_as_the_caller_shaped_as_the_changes_and_locked_on_request() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    gateway(&mut c);
    let (data, version): (String, i64) = c
        .query_one(
            r#"SELECT data::text, row_version FROM sync_row('"tab''le"', '{"\"": 3}')"#,
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let (want, want_version): (String, i64) = c
        .query_one(
            r#"SELECT data::text, row_version FROM sync_changes_since(0) WHERE pk = '{"\"": 3}'"#,
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((data, version), (want, want_version));
    assert_eq!(
        scalar(
            &mut c,
            r#"SELECT count(*) FROM sync_row('"tab''le"', '{"\"": 99}')"#
        ),
        0,
        "absent: no row"
    );

    // As the peer: RLS hides the other tenant's row.
    let mut gw = db.connect_as("gw");
    let mut tx = gw.transaction().unwrap();
    tx.execute(
        "SELECT sync_act_for_peer('dev1', '{\"tenant\": \"t1\"}')",
        &[],
    )
    .unwrap();
    assert_eq!(
        scalar_in(
            &mut tx,
            r#"SELECT count(*) FROM sync_row('"tab''le"', '{"\"": 2}')"#
        ),
        0
    );
    // Locked: another transaction cannot take the row until this one ends.
    assert_eq!(
        scalar_in(
            &mut tx,
            r#"SELECT row_version FROM sync_row('"tab''le"', '{"\"": 1}', true)"#
        ),
        1
    );
    let mut other = db.connect();
    let e = db_error(
        other
            .batch_execute(r#"SELECT 1 FROM "tab'le" WHERE """" = 1 FOR UPDATE NOWAIT"#)
            .unwrap_err(),
    );
    assert_eq!(e.code, "55P03", "the row is locked");
    other
        .batch_execute(r#"SELECT 1 FROM "tab'le" WHERE """" = 3 FOR UPDATE NOWAIT"#)
        .unwrap();
    tx.commit().unwrap();
    other
        .batch_execute(r#"SELECT 1 FROM "tab'le" WHERE """" = 1 FOR UPDATE NOWAIT"#)
        .unwrap();

    // Without the table's privileges: refused.
    c.batch_execute("CREATE ROLE nobody LOGIN").unwrap();
    let mut n = db.connect_as("nobody");
    let e = db_error(
        n.batch_execute(r#"SELECT * FROM sync_row('"tab''le"', '{"\"": 1}')"#)
            .unwrap_err(),
    );
    assert_eq!(e.code, "42501");
}

#[test]
fn a_row_by_key_refuses_a_bad_key_with_a_specific_sqlstate() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    gateway(&mut c);
    c.batch_execute("CREATE TABLE plain (id int PRIMARY KEY)")
        .unwrap();
    let row = |pk: &str| format!("SELECT * FROM sync_row('\"tab''le\"', '{pk}')");
    expect_error(
        &mut c,
        "SELECT * FROM sync_row('plain', '{\"id\": 1}')",
        "TB003",
    );
    expect_error(&mut c, &row("[1]"), "22023");
    expect_error(
        &mut c,
        "SELECT * FROM sync_row('\"tab''le\"', NULL)",
        "22023",
    );
    let e = expect_error(&mut c, &row("{}"), "22023");
    assert!(e.message.contains("lacks"), "{e:?}");
    let e = expect_error(&mut c, &row(r#"{"\"": 1, "tenant": "t1"}"#), "42703");
    assert!(e.message.contains("not part of its primary key"), "{e:?}");
    let e = expect_error(&mut c, &row(r#"{"\"": 1, "gh''ost": 1}"#), "42703");
    assert!(
        e.message
            .contains("\"gh'ost\" of \"tab'le\" does not exist"),
        "{e:?}"
    );
    assert!(e.hint.unwrap().contains('"'), "the hint names the key");
    let e = db_error(c.batch_execute(&row(r#"{"\"": "x"}"#)).unwrap_err());
    assert_eq!(e.code, "22P02", "a value of the wrong type: {e:?}");
}

#[test]
fn the_schema_lists_only_the_tables_and_columns_the_caller_may_select() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE "tab'le" ("""" int PRIMARY KEY, secret text, gen int GENERATED ALWAYS AS ("""" * 2) STORED,
                                  made timestamptz NOT NULL DEFAULT now());
           CREATE TABLE b_items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name varchar(20));
           CREATE TABLE hidden (id int PRIMARY KEY);
           CREATE TABLE untracked (id int PRIMARY KEY);
           SELECT sync_track('"tab''le"'), sync_track('b_items'), sync_track('hidden');
           CREATE ROLE reader LOGIN;
           GRANT SELECT ("""", gen, made), INSERT ("""") ON "tab'le" TO reader;
           GRANT SELECT, UPDATE ON b_items, untracked TO reader;
           INSERT INTO b_items (name) VALUES ('a'), ('b'), ('c'); ANALYZE b_items;"#,
    )
    .unwrap();
    let mut r = db.connect_as("reader");
    let s: String = text(&mut r, "SELECT sync_schema()::text").unwrap();
    let s: serde_json::Value = serde_json::from_str(&s).unwrap();
    // estimated_rows: the planner's estimate (analyzed: b_items), NULL
    // before a table was analyzed.
    let want = serde_json::json!({"tables": [
        {"table": "b_items", "schema": "public", "name": "b_items", "primary_key": ["id"],
         "columns": [
            {"name": "id", "type": "bigint", "type_oid": 20, "nullable": false, "generated": false, "has_default": true},
            {"name": "name", "type": "character varying(20)", "type_oid": 1043, "nullable": true, "generated": false, "has_default": false}],
         "privileges": {"insert": false, "update": true, "delete": false},
         "estimated_rows": 3},
        {"table": "\"tab'le\"", "schema": "public", "name": "tab'le", "primary_key": ["\""],
         "columns": [
            {"name": "\"", "type": "integer", "type_oid": 23, "nullable": false, "generated": false, "has_default": false},
            {"name": "gen", "type": "integer", "type_oid": 23, "nullable": true, "generated": true, "has_default": false},
            {"name": "made", "type": "timestamp with time zone", "type_oid": 1184, "nullable": false, "generated": false, "has_default": true}],
         "privileges": {"insert": false, "update": false, "delete": false},
         "estimated_rows": null}
    ]});
    assert_eq!(s, want);
    // Nothing readable: no tables.
    c.batch_execute("CREATE ROLE nobody LOGIN").unwrap();
    let mut n = db.connect_as("nobody");
    assert_eq!(
        text(&mut n, "SELECT sync_schema()::text").as_deref(),
        Some(r#"{"tables": []}"#)
    );
}

fn changed(c: &mut Client, since: i64, until: i64) -> Vec<String> {
    c.query(
        "SELECT t::text FROM sync_tables_changed($1, $2) AS t",
        &[&since, &until],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn the_watcher_finds_exactly_the_tables_changed_in_the_window_and_is_refused_to_public() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    gateway(&mut c);
    c.batch_execute(
        r#"CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE gone (id int PRIMARY KEY);
           SELECT sync_track('quiet'), sync_track('gone');
           INSERT INTO quiet VALUES (1); INSERT INTO gone VALUES (1), (2);
           CREATE ROLE app LOGIN;
           GRANT SELECT ON "tab'le", quiet, gone TO app;"#,
    )
    .unwrap();
    let mut gw = db.connect_as("gw");
    let v0 = scalar(&mut gw, "SELECT sync_current_version()");
    assert_eq!(changed(&mut gw, v0, v0), Vec::<String>::new());
    c.batch_execute(r#"UPDATE "tab'le" SET t = 'x' WHERE """" = 2; DELETE FROM gone WHERE id = 1"#)
        .unwrap();
    let v1 = scalar(&mut gw, "SELECT sync_current_version()");
    assert_eq!(
        changed(&mut gw, v0, v1),
        ["\"tab'le\"", "gone"],
        "a live change and a delete, nothing else"
    );
    let v2 = scalar(&mut gw, "SELECT sync_current_version()");
    assert_eq!(changed(&mut gw, v1, v2), Vec::<String>::new());
    assert_eq!(
        changed(&mut gw, 0, v2).len(),
        3,
        "a first look: every table with rows"
    );

    for (sql, code) in [
        ("SELECT * FROM sync_tables_changed(NULL, 1)", "22004"),
        ("SELECT * FROM sync_tables_changed(5, 1)", "22023"),
        (
            "SELECT * FROM sync_tables_changed(0, sync_current_version() + 5)",
            "TB001",
        ),
    ] {
        expect_error(&mut gw, sql, code);
    }
    // Not granted to PUBLIC, nor its grant.
    let mut app = db.connect_as("app");
    for sql in [
        "SELECT * FROM sync_tables_changed(0, 1)",
        "SELECT sync_gateway_grant('app')",
    ] {
        let e = db_error(app.batch_execute(sql).unwrap_err());
        assert_eq!(e.code, "42501", "{sql}: {e:?}");
    }
}

/// A function's signature, volatility, strictness, parallel safety,
/// SECURITY DEFINER, SET clauses and whether PUBLIC may run it.
type FunctionProps = (
    String,
    String,
    bool,
    String,
    bool,
    Option<Vec<String>>,
    bool,
);

#[test]
fn the_gateway_functions_declare_volatility_strictness_parallel_safety_and_security() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    let rows: Vec<FunctionProps> = c
        .query(
            "SELECT p.oid::regprocedure::text, p.provolatile::text, p.proisstrict, p.proparallel::text, p.prosecdef,
                    p.proconfig, has_function_privilege('public', p.oid, 'EXECUTE')
               FROM pg_proc p
              WHERE p.proname IN ('sync_claim', 'sync_act_for_peer', 'sync_payload_window', 'sync_payload_rows',
                                  'sync_row', 'sync_schema', 'sync_tables_changed', 'sync_gateway_grant')
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
        .collect();
    let pinned = Some(vec!["search_path=pg_catalog, pg_temp".to_string()]);
    let quiet = Some(vec!["client_min_messages=warning".to_string()]);
    let want = vec![
        (
            "sync_act_for_peer(text,jsonb)",
            "v",
            false,
            "u",
            false,
            None,
            true,
        ),
        ("sync_claim(text)", "s", true, "s", false, None, true),
        (
            "sync_gateway_grant(regrole)",
            "v",
            false,
            "u",
            false,
            quiet,
            false,
        ),
        (
            "sync_payload_rows(regclass,bigint,bigint,jsonb,integer)",
            "s",
            false,
            "u",
            false,
            None,
            true,
        ),
        (
            "sync_payload_window(regclass,bigint)",
            "s",
            false,
            "u",
            false,
            None,
            true,
        ),
        (
            "sync_row(regclass,jsonb,boolean)",
            "v",
            false,
            "u",
            false,
            None,
            true,
        ),
        ("sync_schema()", "s", false, "u", false, None, true),
        (
            "sync_tables_changed(bigint,bigint)",
            "s",
            false,
            "u",
            true,
            pinned,
            false,
        ),
    ];
    let want: Vec<_> = want
        .into_iter()
        .map(|(a, b, c, d, e, f, g)| (a.to_string(), b.to_string(), c, d.to_string(), e, f, g))
        .collect();
    assert_eq!(rows, want);
    let uncommented = scalar(
        &mut c,
        "SELECT count(*) FROM pg_proc WHERE proname LIKE 'sync\\_%' AND obj_description(oid, 'pg_proc') IS NULL
            AND proname IN ('sync_claim', 'sync_act_for_peer', 'sync_payload_window', 'sync_payload_rows',
                            'sync_row', 'sync_schema', 'sync_tables_changed', 'sync_gateway_grant')",
    );
    assert_eq!(uncommented, 0, "every gateway function has a COMMENT");
}

#[test]
fn columns_named_like_the_internal_aliases_do_not_hide_the_row() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE aliases (id int PRIMARY KEY, t text, r text, k text, c text);
           SELECT sync_track('aliases'), sync_set_peer('p1', 1, 'postgres');
           INSERT INTO aliases VALUES (1, 'tt', 'rr', 'kk', 'cc');"#,
    )
    .unwrap();
    let row = r#"{"id": 1, "t": "tt", "r": "rr", "k": "kk", "c": "cc"}"#;
    assert_eq!(
        text(&mut c, "SELECT data::text FROM sync_changes_since(0)").as_deref(),
        Some(row)
    );
    assert_eq!(
        text(
            &mut c,
            r#"SELECT data::text FROM sync_row('aliases', '{"id": 1}')"#
        )
        .as_deref(),
        Some(row)
    );
    assert_eq!(
        text(
            &mut c,
            r#"SELECT outcome FROM sync_apply('aliases', '[{"op": "U", "pk": {"id": 1}, "data": {"r": "r2"}, "version": 2}]', 'p1')"#
        )
        .as_deref(),
        Some("VERSION_WIN")
    );
    assert_eq!(text(&mut c, "SELECT r FROM aliases").as_deref(), Some("r2"));
    // row_json reads only rows: anything else is refused, never read as one.
    let e = db_error(c.batch_execute("SELECT tributary.row_json(1)").unwrap_err());
    assert_eq!(e.code, "42804", "{e:?}");
}
