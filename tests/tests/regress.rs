//! pg_regress golden files (extension/tests/pg_regress) against a throwaway
//! cluster. `TRIBUTARY_REGRESS_BLESS=1` copies the results over the
//! expected files, for a reviewed change of output.

use std::path::PathBuf;
use std::process::Command;
use tributary_e2e::*;

const TESTS: &[&str] = &["tracking", "errors", "pull", "apply"];

#[test]
fn pg_regress_golden_files_match() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute("CREATE DATABASE tributary_regress")
        .unwrap();
    cluster
        .connect("tributary_regress")
        .batch_execute("CREATE EXTENSION tributary")
        .unwrap();

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../extension/tests/pg_regress");
    let out = cluster.dir().join("regress-out");
    std::fs::create_dir_all(out.join("results")).unwrap();
    let pgxs = Command::new(format!("{PGBIN}/pg_config"))
        .arg("--pgxs")
        .output()
        .unwrap();
    let pgxs = PathBuf::from(String::from_utf8(pgxs.stdout).unwrap().trim());
    let pg_regress = pgxs
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("test/regress/pg_regress");

    let status = Command::new(&pg_regress)
        .arg("--use-existing")
        .args([
            "--host=127.0.0.1",
            &format!("--port={}", cluster.port),
            "--user=postgres",
        ])
        .arg(format!("--bindir={PGBIN}"))
        .arg(format!("--inputdir={}", root.display()))
        .arg(format!("--outputdir={}", out.display()))
        .arg("--dbname=tributary_regress")
        .args(TESTS)
        .status()
        .expect("run pg_regress (from postgresql-server-dev-15)");

    if std::env::var_os("TRIBUTARY_REGRESS_BLESS").is_some() {
        for t in TESTS {
            std::fs::copy(
                out.join(format!("results/{t}.out")),
                root.join(format!("expected/{t}.out")),
            )
            .unwrap();
        }
        return;
    }
    if !status.success() {
        let diffs = std::fs::read_to_string(out.join("regression.diffs")).unwrap_or_default();
        panic!("pg_regress output differs from the expected files:\n{diffs}");
    }
}
