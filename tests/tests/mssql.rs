//! SQL Server peers, the part that needs no SQL Server: `mssql-setup`
//! against a real hub prints the setup script of a destination's tables,
//! and a real T-SQL parser (sqlglot, read="tsql") accepts it. No SQL Server
//! can run on these machines; the live tests are not written yet.

use std::path::PathBuf;
use std::process::Command;
use tributary_e2e::worker::*;
use tributary_e2e::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `tributary-worker args…` with `config` in a file: (exit code, stdout, stderr).
fn worker(args: &[&str], config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("worker.toml");
    std::fs::write(&f, config).unwrap();
    let out = Command::new(worker_bin())
        .args(args)
        .arg("--config")
        .arg(&f)
        .env_remove("TRIBUTARY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// scripts/check_tsql.py on `sql` (sqlglot from scripts/setup.sh).
fn parses_as_tsql(sql: &str) -> (bool, String) {
    let python = root().join("target/tools-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it installs sqlglot)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("setup.sql");
    std::fs::write(&f, sql).unwrap();
    let out = Command::new(python)
        .arg(root().join("scripts/check_tsql.py"))
        .arg(&f)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const ERP: &str = r#"[[destination]]
name = "erp"
kind = "mssql"
url = "server=tcp:10.0.0.5,1433;database=erp;user=tributary;encrypt=true"
schema = "dbo"
tables = ["public.customers", "sa.les.*"]
"#;

#[test]
fn mssql_setup_prints_the_destinations_tables_as_t_sql_a_parser_accepts() {
    let cluster = Cluster::start();
    let db = cluster.db();
    db.connect()
        .batch_execute(
            r#"CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2),
                                       at timestamptz, tags int[], code varchar(20));
               CREATE SCHEMA "sa.les"; CREATE TABLE "sa.les"."tab'le]" ("k""ey" text PRIMARY KEY, v uuid);
               CREATE TABLE other (id int PRIMARY KEY);
               SELECT sync_track('customers'), sync_track('"sa.les"."tab''le]"'), sync_track('other');"#,
        )
        .unwrap();
    setup_worker_role(&db, &[]);
    let cfg = config(&cluster, &db, "w", ERP);
    let (code, sql, err) = worker(&["mssql-setup", "--destination", "erp"], &cfg);
    assert_eq!(code, 0, "{err}");
    for want in [
        "CREATE TABLE [dbo].[customers] (\n    [id] int NOT NULL,\n    [name] nvarchar(max) NOT NULL,\n    \
         [price] decimal(10,2) NULL,\n    [at] datetimeoffset(6) NULL,\n    [tags] nvarchar(max) NULL,\n    \
         [code] nvarchar(20) NULL,\n    PRIMARY KEY ([id])\n);",
        "CREATE TABLE [dbo].[sa.les.tab'le]]] (\n    [k\"ey] nvarchar(450) NOT NULL,\n    [v] uniqueidentifier NULL,\n    PRIMARY KEY ([k\"ey])\n);",
        "ALTER TABLE [dbo].[customers] ENABLE CHANGE_TRACKING WITH (TRACK_COLUMNS_UPDATED = ON);",
        "ALTER DATABASE CURRENT SET CHANGE_TRACKING = ON",
        "CREATE TABLE [dbo].[_tributary_state]",
        "CREATE TABLE [dbo].[_tributary_errors]",
        "CREATE TABLE [dbo].[_tributary_versions]",
    ] {
        assert!(sql.contains(want), "missing {want:?} in:\n{sql}");
    }
    assert!(!sql.contains("[other]"), "only the destination's tables");
    assert!(!sql.contains("sync_version"), "no tracking columns");
    let (ok, out) = parses_as_tsql(&sql);
    assert!(ok, "{out}\n{sql}");
    // The parser can fail: a broken script is refused.
    let (ok, _) = parses_as_tsql(&sql.replace("PRIMARY KEY ([id])", "PRIMARY KEY ([id]"));
    assert!(!ok, "the check cannot fail");

    // Bad input: words, exit code 2.
    let (code, _, err) = worker(&["mssql-setup", "--destination", "nope"], &cfg);
    assert_eq!(code, 2);
    assert!(err.contains("no destination named \"nope\""), "{err}");
    let queue = config(
        &cluster,
        &db,
        "w",
        "[[destination]]\nname = \"audit\"\nkind = \"queue\"\n",
    );
    let (code, _, err) = worker(&["mssql-setup", "--destination", "audit"], &queue);
    assert_eq!(code, 2);
    assert!(err.contains("of kind queue, not mssql"), "{err}");
    let none = config(
        &cluster,
        &db,
        "w",
        &ERP.replace(
            r#"["public.customers", "sa.les.*"]"#,
            r#"["public.missing"]"#,
        ),
    );
    let (code, _, err) = worker(&["mssql-setup", "--destination", "erp"], &none);
    assert_eq!(code, 2);
    assert!(err.contains("no tracked table"), "{err}");
    // `run` says plainly that the destination does not stream yet.
    let (code, _, err) = worker(&["run"], &cfg);
    assert_eq!(code, 2);
    assert!(err.contains("do not stream yet"), "{err}");
}
