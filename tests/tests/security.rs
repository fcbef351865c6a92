//! Safe to expose: who may write as a peer, who may touch Tributary's own
//! state, and whose privileges user code runs with. Each case is run as
//! plain (non-superuser) roles against a real cluster, with hostile names.

use tributary_e2e::*;

fn apply_as(c: &mut Client, tbl: &str, changes: &str, origin: &str) -> Result<Vec<String>, PgErr> {
    c.query(
        "SELECT outcome FROM sync_apply($1::text::regclass, $2::text::jsonb, $3)",
        &[&tbl, &changes, &origin],
    )
    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
    .map_err(db_error)
}

/// Roles: `peer_a` speaks for the peer `tab'le`, `peer_b` for `"`,
/// `member_a` is a member of peer_a, `app` may write the table but speaks
/// for nobody. All may run sync_apply.
fn peers(c: &mut Client) {
    c.batch_execute(
        r#"CREATE TABLE "it]ems" (id int PRIMARY KEY, v text);
           SELECT sync_track('"it]ems"');
           CREATE ROLE peer_a LOGIN; CREATE ROLE peer_b LOGIN; CREATE ROLE app LOGIN;
           CREATE ROLE member_a LOGIN IN ROLE peer_a;
           GRANT SELECT, INSERT, UPDATE, DELETE ON "it]ems" TO peer_a, peer_b, app, member_a;
           GRANT EXECUTE ON FUNCTION sync_apply(regclass, jsonb, text) TO peer_a, peer_b, app, member_a;
           SELECT sync_set_peer('tab''le', 5, 'peer_a'), sync_set_peer('"', 6, 'peer_b'),
                  sync_set_peer(']', 7);"#,
    )
    .unwrap();
}

fn ins(id: i64, v: &str) -> String {
    format!(r#"[{{"op":"I","pk":{{"id":{id}}},"data":{{"id":{id},"v":"{v}"}},"version":1}}]"#)
}

#[test]
fn only_the_role_registered_for_a_peer_may_write_as_it() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    peers(&mut c);
    let t = "\"it]ems\"";

    // sync_apply: the registered role and its members, nobody else.
    let mut a = db.connect_as("peer_a");
    assert_eq!(
        apply_as(&mut a, t, &ins(1, "a"), "tab'le").unwrap(),
        ["NEW_RECORD"]
    );
    let mut m = db.connect_as("member_a");
    assert_eq!(
        apply_as(&mut m, t, &ins(2, "m"), "tab'le").unwrap(),
        ["NEW_RECORD"]
    );
    let mut b = db.connect_as("peer_b");
    let e = apply_as(&mut b, t, &ins(3, "b"), "tab'le").unwrap_err();
    assert_eq!(e.code, "42501", "{e:?}");
    assert!(e.message.contains("tab''le"), "{e:?}");
    assert!(e.detail.as_deref().unwrap().contains("peer_b"), "{e:?}");
    assert!(
        e.hint
            .as_deref()
            .unwrap()
            .contains("sync_set_peer('tab''le', <priority>, 'peer_b')"),
        "{e:?}"
    );
    let mut app = db.connect_as("app");
    for origin in ["tab'le", "\"", "]", "ghost"] {
        let e = apply_as(&mut app, t, &ins(4, "x"), origin).unwrap_err();
        assert_eq!(e.code, "42501", "{origin}: {e:?}");
    }
    assert_eq!(
        apply_as(&mut b, t, &ins(5, "b"), "\"").unwrap(),
        ["NEW_RECORD"]
    );
    // A peer registered without a role: superusers only.
    assert_eq!(
        apply_as(&mut c, t, &ins(6, "su"), "]").unwrap(),
        ["NEW_RECORD"]
    );
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM \"it]ems\" WHERE id = 4"),
        0,
        "nothing of a refused batch is written"
    );

    // tributary.origin: a local session cannot take a peer's name either.
    for (role, origin) in [("app", "tab'le"), ("peer_b", "tab'le"), ("app", "ghost")] {
        let who = if role == "app" { &mut app } else { &mut b };
        let e = db_error(
            who.batch_execute(&format!("SET tributary.origin = {}", sql_literal(origin)))
                .unwrap_err(),
        );
        assert_eq!(e.code, "42501", "{origin}: {e:?}");
        assert!(
            e.hint.as_deref().unwrap_or("").contains("sync_set_peer"),
            "{e:?}"
        );
        let e = db_error(
            who.query(
                "SELECT set_config('tributary.origin', $1, true)",
                &[&origin],
            )
            .unwrap_err(),
        );
        assert_eq!(e.code, "42501", "set_config too: {e:?}");
    }
    app.batch_execute("BEGIN; SET LOCAL tributary.origin = ''; UPDATE \"it]ems\" SET v = 'app' WHERE id = 1; COMMIT")
        .unwrap();
    a.batch_execute("SET tributary.origin = 'tab''le'; UPDATE \"it]ems\" SET v = 'a2' WHERE id = 2; RESET tributary.origin")
        .unwrap();
    let origins: Vec<Option<String>> = c
        .query(
            "SELECT sync_origin FROM \"it]ems\" WHERE id IN (1, 2) ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(origins, [None, Some("tab'le".to_string())]);

    // Nor through a setting given at connection time: it is checked when
    // the library loads, refused with a warning, and the session is local.
    let mut sneaky = postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster.port)
        .user("app")
        .dbname(&db.name)
        .options("-c tributary.origin=tab'le")
        .connect(postgres::NoTls)
        .unwrap();
    sneaky
        .batch_execute("UPDATE \"it]ems\" SET v = 'sneaky' WHERE id = 5")
        .unwrap();
    let origin: Option<String> = c
        .query_one("SELECT sync_origin FROM \"it]ems\" WHERE id = 5", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        origin, None,
        "the write is the hub's own, and reaches every peer"
    );

    // Changing a peer's role moves the right to speak for it.
    c.batch_execute("SELECT sync_set_peer('tab''le', 5, 'peer_b')")
        .unwrap();
    assert_eq!(
        apply_as(&mut b, t, &ins(7, "b"), "tab'le").unwrap(),
        ["NEW_RECORD"]
    );
    assert_eq!(
        apply_as(&mut a, t, &ins(8, "a"), "tab'le")
            .unwrap_err()
            .code,
        "42501"
    );
    // sync_set_peer itself is for admins.
    let e = db_error(
        app.batch_execute("SELECT sync_set_peer('x', 1, 'app')")
            .unwrap_err(),
    );
    assert_eq!(e.code, "42501");
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[test]
fn internal_state_is_written_only_through_the_api_and_parked_changes_replay_as_their_parker() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE "p'a" (id int PRIMARY KEY);
           CREATE TABLE "c]h" (id int PRIMARY KEY, p int REFERENCES "p'a", v text);
           SELECT sync_track('"p''a"'); SELECT sync_track('"c]h"');
           CREATE TABLE who (who text, tbl text);
           CREATE FUNCTION note_who() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO who VALUES (current_user, TG_TABLE_NAME); RETURN NEW; END $$;
           CREATE TRIGGER note_who BEFORE INSERT ON "c]h" FOR EACH ROW EXECUTE FUNCTION note_who();
           CREATE ROLE peer_a LOGIN; CREATE ROLE peer_b LOGIN; CREATE ROLE orders LOGIN;
           GRANT INSERT ON who TO PUBLIC;
           GRANT SELECT, INSERT, UPDATE, DELETE ON "c]h" TO peer_a;
           GRANT SELECT, INSERT, UPDATE, DELETE ON "p'a" TO peer_b;
           GRANT SELECT ON "p'a" TO peer_a;
           GRANT INSERT ON "c]h" TO orders;
           GRANT EXECUTE ON FUNCTION sync_apply(regclass, jsonb, text) TO peer_a, peer_b;
           SELECT sync_set_peer('A', 1, 'peer_a'), sync_set_peer('B', 2, 'peer_b');"#,
    )
    .unwrap();

    // A role that may only INSERT into a table cannot forge Tributary's state.
    let mut orders = db.connect_as("orders");
    for forge in [
        r#"INSERT INTO tributary.pending (relid, pk, origin, change) VALUES ('"c]h"', '{"id":1}', 'A', '{"op":"D","pk":{"id":1},"version":1000000}')"#,
        r#"INSERT INTO tributary.tombstones (relid, pk, xid, version) VALUES ('"c]h"', '{"id":1}', 1, 1000000)"#,
        r#"UPDATE tributary.tombstones SET version = 1000000"#,
        r#"INSERT INTO tributary.conflicts (relid, pk, columns, remote_version, remote_origin, remote_op, interim) VALUES ('"c]h"', '{"id":1}', '{}', 1, 'A', 'U', 'local')"#,
        r#"UPDATE tributary.conflicts SET status = 'resolved'"#,
        r#"DELETE FROM tributary.pending"#,
        r#"SELECT tributary._close_conflict(1, '"keep_local"')"#,
        r#"SELECT * FROM tributary._replay_parked(NULL)"#,
    ] {
        let e = db_error(orders.batch_execute(forge).unwrap_err());
        assert_eq!(e.code, "42501", "{forge}: {e:?}");
    }

    // peer_a's child arrives before its parent: parked, as peer_a.
    let mut a = db.connect_as("peer_a");
    let child = r#"[{"op":"I","pk":{"id":1},"data":{"id":1,"p":1,"v":"child"},"version":1}]"#;
    assert_eq!(
        apply_as(&mut a, "\"c]h\"", child, "A").unwrap(),
        ["DEFERRED"]
    );
    let parker: String = c
        .query_one("SELECT parked_by::text FROM tributary.pending", &[])
        .unwrap()
        .get(0);
    assert_eq!(parker, "peer_a");

    // peer_b writes the parent: the child is replayed as peer_a, with
    // peer_a's privileges (peer_b may not write "c]h" at all).
    let mut b = db.connect_as("peer_b");
    let parent =
        |id: i64| format!(r#"[{{"op":"I","pk":{{"id":{id}}},"data":{{"id":{id}}},"version":1}}]"#);
    assert_eq!(
        apply_as(&mut b, "\"p'a\"", &parent(1), "B").unwrap(),
        ["NEW_RECORD"]
    );
    let row: (Option<String>, Option<String>) = c
        .query_one("SELECT v, sync_origin FROM \"c]h\" WHERE id = 1", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(row, (Some("child".into()), Some("A".into())));
    let who: Vec<String> = c
        .query("SELECT who FROM who", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(who, ["peer_a"], "the replay acted as the parker");
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM tributary.pending"), 0);

    // A parked change whose parker lost its privileges fails alone: the
    // write that triggered its replay goes through, the change stays
    // parked with the error, then is a dead letter.
    let child2 = r#"[{"op":"I","pk":{"id":2},"data":{"id":2,"p":2,"v":"late"},"version":1}]"#;
    assert_eq!(
        apply_as(&mut a, "\"c]h\"", child2, "A").unwrap(),
        ["DEFERRED"]
    );
    c.batch_execute("REVOKE INSERT ON \"c]h\" FROM peer_a")
        .unwrap();
    b.batch_execute("SET tributary.max_retries = 2").unwrap();
    assert_eq!(
        apply_as(&mut b, "\"p'a\"", &parent(2), "B").unwrap(),
        ["NEW_RECORD"]
    );
    let (status, err): (String, String) = c
        .query_one(
            "SELECT status, last_error FROM tributary.pending WHERE pk = '{\"id\": 2}'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(status, "dead", "two attempts with max_retries = 2");
    assert!(err.contains("42501"), "{err}");
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM \"c]h\" WHERE id = 2"),
        0
    );

    // The views show each role the rows of the tables it may read.
    assert_eq!(scalar(&mut a, "SELECT count(*) FROM sync_pending"), 1);
    assert_eq!(scalar(&mut b, "SELECT count(*) FROM sync_pending"), 0);
}

#[test]
fn definer_code_never_runs_user_code_and_a_resolver_runs_as_its_tables_owner() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE ROLE own LOGIN; CREATE ROLE peer_a LOGIN; CREATE ROLE other LOGIN;
           GRANT CREATE ON SCHEMA public TO own, other;
           CREATE TABLE who (who text, what text); GRANT INSERT ON who TO PUBLIC;
           SELECT sync_set_peer('A', 1, 'peer_a'), sync_set_peer('B', 1, 'peer_a');
           GRANT EXECUTE ON FUNCTION sync_apply(regclass, jsonb, text) TO peer_a;"#,
    )
    .unwrap();
    let mut own = db.connect_as("own");
    // A type of the table's owner, with a cast to json that notes who runs it.
    own.batch_execute(
        r#"CREATE TYPE "mo'od" AS ENUM ('ok', 'sad');
           CREATE FUNCTION mood_json("mo'od") RETURNS json LANGUAGE sql AS
             $$ INSERT INTO who VALUES (current_user, 'cast'); SELECT to_json($1::text) $$;
           CREATE CAST ("mo'od" AS json) WITH FUNCTION mood_json("mo'od");
           CREATE TABLE "fe]el" (id int PRIMARY KEY, m "mo'od", v text);
           INSERT INTO "fe]el" VALUES (1, 'ok', 'x'), (2, 'sad', 'y');"#,
    )
    .unwrap();
    c.batch_execute(r#"SELECT sync_track('"fe]el"'); GRANT SELECT, INSERT, UPDATE, DELETE ON "fe]el" TO peer_a"#)
        .unwrap();
    own.batch_execute(r#"DELETE FROM "fe]el" WHERE id = 1"#)
        .unwrap();
    let mut a = db.connect_as("peer_a");
    let del = r#"[{"op":"D","pk":{"id":2},"version":2}]"#;
    assert_eq!(
        apply_as(&mut a, "\"fe]el\"", del, "A").unwrap(),
        ["VERSION_WIN"]
    );
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) FROM tributary.tombstones WHERE relid = '\"fe]el\"'::regclass"
        ),
        2
    );
    let ran_as: Vec<String> = c
        .query(
            "SELECT DISTINCT who FROM who WHERE what = 'cast' ORDER BY who",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!ran_as.is_empty(), "the cast ran");
    assert!(
        ran_as.iter().all(|w| w == "own" || w == "peer_a"),
        "the cast ran only as the deleting roles: {ran_as:?}"
    );

    // A custom resolver must be owned by the table's owner, and runs as it.
    own.batch_execute(
        r#"CREATE TABLE "mer'ge" (id int PRIMARY KEY, v text);
           CREATE FUNCTION "mi]ne"(l jsonb, r jsonb, b jsonb) RETURNS jsonb LANGUAGE sql AS
             $$ INSERT INTO who VALUES (current_user, 'resolver'); SELECT r || '{"v":"merged"}' $$;"#,
    )
    .unwrap();
    let mut other = db.connect_as("other");
    other
        .batch_execute(r#"CREATE FUNCTION theirs(l jsonb, r jsonb, b jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT r $$"#)
        .unwrap();
    c.batch_execute(
        r#"SELECT sync_track('"mer''ge"'); GRANT SELECT, INSERT, UPDATE, DELETE ON "mer'ge" TO peer_a;
           INSERT INTO "mer'ge" VALUES (1, 'hub');"#,
    )
    .unwrap();
    let e = expect_error(
        &mut c,
        r#"SELECT sync_set_policy('"mer''ge"', 'custom', 'theirs(jsonb,jsonb,jsonb)')"#,
        "42501",
    );
    assert!(e.detail.unwrap().contains("other"));
    c.batch_execute(
        r#"SELECT sync_set_policy('"mer''ge"', 'custom', '"mi]ne"(jsonb,jsonb,jsonb)')"#,
    )
    .unwrap();
    let upd =
        |v: &str| format!(r#"[{{"op":"U","pk":{{"id":1}},"data":{{"v":"{v}"}},"version":2}}]"#);
    apply_as(&mut a, "\"mer'ge\"", &upd("a"), "A").unwrap();
    apply_as(&mut a, "\"mer'ge\"", &upd("b"), "B").unwrap();
    let ran_as: Vec<String> = c
        .query("SELECT DISTINCT who FROM who WHERE what = 'resolver'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ran_as, ["own"], "the resolver ran as the table's owner");
    let v: String = c
        .query_one("SELECT v FROM \"mer'ge\" WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "merged");
    // Handed to another owner later, it is no longer run.
    c.batch_execute(r#"ALTER FUNCTION "mi]ne"(jsonb,jsonb,jsonb) OWNER TO other"#)
        .unwrap();
    let e = apply_as(
        &mut a,
        "\"mer'ge\"",
        &upd("c").replace("\"version\":2", "\"version\":3"),
        "A",
    )
    .and_then(|_| {
        apply_as(
            &mut a,
            "\"mer'ge\"",
            &upd("d").replace("\"version\":2", "\"version\":3"),
            "B",
        )
    })
    .unwrap_err();
    assert_eq!(e.code, "42501", "{e:?}");

    // No SECURITY DEFINER function of the extension is in a language that
    // can run user code through to_jsonb: only the fixed list remains.
    let definers: Vec<String> = c
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
               JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'tributary'
              WHERE p.prosecdef ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !definers.iter().any(|d| d.contains("_on_delete")),
        "{definers:?}"
    );
}
