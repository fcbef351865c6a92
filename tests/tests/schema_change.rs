//! Schema changes on tracked tables, at the hub: tracking follows what it
//! can (a renamed key column, a new primary key, added and dropped
//! columns), and refuses what it cannot with TB007, leaving nothing
//! half-changed.

use tributary_e2e::*;

fn tombstone_keys(c: &mut Client, tbl: &str) -> Vec<String> {
    c.query(
        "SELECT pk::text FROM tributary.tombstones WHERE relid = $1::text::regclass ORDER BY 1",
        &[&tbl],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn pk_columns(c: &mut Client, tbl: &str) -> Vec<String> {
    c.query_one(
        "SELECT pk_columns FROM tributary.tracked WHERE relid = $1::text::regclass",
        &[&tbl],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_renamed_key_column_keeps_deletes_keyed_by_the_new_name() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE "tab'le" ("]" int PRIMARY KEY, v text);
           SELECT sync_track('"tab''le"');
           INSERT INTO "tab'le" VALUES (1, 'a'), (2, 'b');
           ALTER TABLE "tab'le" RENAME COLUMN "]" TO "new ""key";"#,
    )
    .unwrap();
    assert_eq!(
        pk_columns(&mut c, "\"tab'le\""),
        vec!["new \"key".to_string()]
    );
    let v: i64 = scalar(&mut c, "SELECT sync_current_version()");
    c.batch_execute(r#"DELETE FROM "tab'le" WHERE "new ""key" = 1; UPDATE "tab'le" SET "new ""key" = 20 WHERE "new ""key" = 2;"#)
        .unwrap();
    assert_eq!(
        tombstone_keys(&mut c, "\"tab'le\""),
        vec![
            r#"{"new \"key": 1}"#.to_string(),
            r#"{"new \"key": 2}"#.to_string()
        ]
    );
    let mut changes: Vec<(String, String)> = c
        .query("SELECT op, pk::text FROM sync_changes_since($1)", &[&v])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    changes.sort();
    assert_eq!(
        changes,
        vec![
            ("D".to_string(), r#"{"new \"key": 1}"#.to_string()),
            ("D".to_string(), r#"{"new \"key": 2}"#.to_string()),
            ("I".to_string(), r#"{"new \"key": 20}"#.to_string()),
        ]
    );
}

#[test]
fn a_new_primary_key_in_one_statement_is_followed() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL, v text);
         SELECT sync_track('items');
         INSERT INTO items VALUES (1, 'A', 'a'), (2, 'B', 'b');
         ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (code);",
    )
    .unwrap();
    assert_eq!(pk_columns(&mut c, "items"), vec!["code".to_string()]);
    // Rows are known by another key now: each is sent again, at a new
    // revision, so that readers and peers hold them under it.
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM items WHERE sync_version = 2"),
        2
    );
    c.batch_execute("DELETE FROM items WHERE code = 'A'")
        .unwrap();
    assert_eq!(
        tombstone_keys(&mut c, "items"),
        vec![r#"{"code": "A"}"#.to_string()]
    );
    let outcome: String = c
        .query_one(
            r#"SELECT outcome FROM sync_apply('items', '[{"op":"U","pk":{"code":"B"},"data":{"v":"peer"},"version":3}]', 'crm')"#,
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(outcome, "VERSION_WIN");
    assert_eq!(
        scalar(&mut c, "SELECT count(*) FROM items WHERE v = 'peer'"),
        1
    );
}

#[test]
fn a_change_that_would_leave_no_primary_key_is_refused_whole() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE TABLE "tab'le" ("]" int PRIMARY KEY, v text);
           SELECT sync_track('"tab''le"');"#,
    )
    .unwrap();
    let e = expect_error(
        &mut c,
        r#"ALTER TABLE "tab'le" DROP CONSTRAINT "tab'le_pkey""#,
        "TB007",
    );
    assert!(e.message.contains("no primary key"), "{e:?}");
    expect_error(
        &mut c,
        r#"ALTER TABLE "tab'le" DROP COLUMN "]" CASCADE"#,
        "TB007",
    );
    expect_error(
        &mut c,
        r#"ALTER TABLE "tab'le" ADD COLUMN w int, DROP CONSTRAINT "tab'le_pkey""#,
        "TB007",
    );
    // Nothing of them happened.
    assert_eq!(pk_columns(&mut c, "\"tab'le\""), vec!["]".to_string()]);
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = '\"tab''le\"'::regclass AND attname = 'w'"
        ),
        0
    );
}

#[test]
fn the_tracking_columns_cannot_be_dropped_renamed_or_retyped() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text); SELECT sync_track('items');")
        .unwrap();
    for ddl in [
        "ALTER TABLE items DROP COLUMN sync_version",
        "ALTER TABLE items RENAME COLUMN sync_colmeta TO meta",
        "ALTER TABLE items ALTER COLUMN sync_xid TYPE numeric",
    ] {
        let e = expect_error(&mut c, ddl, "TB007");
        assert!(
            e.hint.as_deref().unwrap_or("").contains("sync_untrack"),
            "{e:?}"
        );
    }
    // Other columns change freely, and tracking goes on.
    let v: i64 = scalar(&mut c, "SELECT sync_current_version()");
    c.batch_execute(
        "ALTER TABLE items ADD COLUMN n int DEFAULT 7, ADD COLUMN w text;
         ALTER TABLE items DROP COLUMN w;
         INSERT INTO items (id, v) VALUES (1, 'a');",
    )
    .unwrap();
    let data: String = c
        .query_one(
            "SELECT data::jsonb::text FROM sync_changes_since($1)",
            &[&v],
        )
        .unwrap()
        .get(0);
    assert_eq!(data, r#"{"n": 7, "v": "a", "id": 1}"#);
    // Untracking still removes the tracking columns; tracking again works.
    c.batch_execute("SELECT sync_untrack('items'); SELECT sync_track('items');")
        .unwrap();
    assert_eq!(pk_columns(&mut c, "items"), vec!["id".to_string()]);
}

/// The rows of `tributary.schema_changes`, oldest first, as
/// `from -> to | renamed | dropped | added | retyped | rekeyed | refill`.
fn changes(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT format('%s.%s -> %s.%s | %s | %s | %s | %s | %s | %s', from_schema, from_table, to_schema,
                       to_table, renamed, dropped, added, retyped, rekeyed, refill)
           FROM tributary.schema_changes ORDER BY id",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn each_change_of_shape_is_recorded_and_rows_are_sent_again_only_when_their_values_changed() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        r#"CREATE SCHEMA "s]";
           CREATE TABLE items (id int PRIMARY KEY, v text, n int);
           SELECT sync_track('items');
           INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2);"#,
    )
    .unwrap();
    // The table's revisions, found by oid: the steps rename and move it.
    let oid: u32 = c
        .query_one("SELECT 'items'::regclass::oid", &[])
        .unwrap()
        .get(0);
    let revisions = |c: &mut Client| {
        let name: String = c
            .query_one("SELECT $1::oid::regclass::text", &[&oid])
            .unwrap()
            .get(0);
        scalar(c, &format!("SELECT sum(sync_version)::int8 FROM {name}"))
    };
    assert_eq!(revisions(&mut c), 2);
    let steps: [(&str, &str, i64); 8] = [
        (
            r#"ALTER TABLE items RENAME COLUMN v TO "tab'le""#,
            r#"public.items -> public.items | [["v", "tab'le"]] | {} | {} | {} | f | f"#,
            2,
        ),
        (
            "ALTER TABLE items ADD COLUMN note text",
            "public.items -> public.items | [] | {} | {note} | {} | f | f",
            2,
        ),
        (
            "ALTER TABLE items ADD COLUMN flag boolean NOT NULL DEFAULT true",
            "public.items -> public.items | [] | {} | {flag} | {} | f | t",
            4,
        ),
        (
            "ALTER TABLE items DROP COLUMN note",
            "public.items -> public.items | [] | {note} | {} | {} | f | f",
            4,
        ),
        (
            "ALTER TABLE items ALTER COLUMN n TYPE bigint",
            "public.items -> public.items | [] | {} | {} | {n} | f | t",
            6,
        ),
        (
            r#"ALTER TABLE items RENAME TO "it""ems""#,
            r#"public.items -> public.it"ems | [] | {} | {} | {} | f | f"#,
            6,
        ),
        (
            r#"ALTER TABLE "it""ems" SET SCHEMA "s]""#,
            r#"public.it"ems -> s].it"ems | [] | {} | {} | {} | f | f"#,
            6,
        ),
        (r#"ALTER TABLE "s]"."it""ems" SET (fillfactor = 90)"#, "", 6),
    ];
    for (ddl, want, revs) in steps {
        let before = changes(&mut c).len();
        c.batch_execute(ddl).unwrap();
        let now = changes(&mut c);
        if want.is_empty() {
            assert_eq!(now.len(), before, "{ddl}: no change of shape");
        } else {
            assert_eq!(now.len(), before + 1, "{ddl}");
            assert_eq!(now.last().unwrap(), want, "{ddl}");
        }
        assert_eq!(revisions(&mut c), revs, "{ddl}: revisions after it");
    }
}

#[test]
fn rows_are_sent_again_as_the_user_who_altered_the_table_not_as_the_extension() {
    let cluster = Cluster::start();
    let db = cluster.db();
    let mut c = db.connect();
    c.batch_execute(
        "CREATE ROLE app_owner LOGIN;
         GRANT CREATE ON SCHEMA public TO app_owner;
         SET ROLE app_owner;
         CREATE TABLE items (id int PRIMARY KEY, who text);
         -- The app's own trigger: user code, which must never run with the
         -- extension's rights.
         CREATE FUNCTION items_who() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN NEW.who := current_user; RETURN NEW; END $$;
         CREATE TRIGGER items_who BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION items_who();
         INSERT INTO items VALUES (1, 'inserted');
         RESET ROLE;
         SELECT sync_track('items');
         SET ROLE app_owner;
         ALTER TABLE items ADD COLUMN flag int NOT NULL DEFAULT 7;
         RESET ROLE;",
    )
    .unwrap();
    let who: String = c
        .query_one("SELECT who FROM items WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, "app_owner");
    assert_eq!(scalar(&mut c, "SELECT sync_version FROM items"), 2);
    // The DDL guard's bookkeeping is the extension's: the owner cannot
    // write it directly.
    c.batch_execute("SET ROLE app_owner").unwrap();
    let e = db_error(
        c.batch_execute(
        "INSERT INTO tributary.schema_changes (relid, xid, from_schema, from_table, to_schema, to_table,
                                                renamed, dropped, added, retyped, rekeyed, refill)
         VALUES ('items'::regclass, 1, 'public', 'items', 'public', 'x', '[]', '{}', '{}', '{}', false, false)",
        )
        .unwrap_err(),
    );
    assert_eq!(e.code, "42501");
    assert!(e.message.contains("permission denied"), "{e:?}");
}
