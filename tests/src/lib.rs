//! Test harness: a throwaway PostgreSQL 15 cluster per test.
//!
//! ```text
//!  Cluster::start()  initdb (as the `postgres` OS user when run as root),
//!                    wal_level=logical, a free port on 127.0.0.1, pg_ctl start
//!  cluster.db()      a fresh database with `CREATE EXTENSION tributary`
//!  drop(cluster)     pg_ctl stop -m immediate, and the directory is removed
//! ```
//!
//! The extension must be installed into the server first (`cargo pgrx
//! install`); `scripts/test.sh` does that before running these tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub use postgres::{Client, NoTls};

pub mod certs;
pub mod edge;
pub mod gateway;
pub mod nats;
pub mod peer;
pub mod worker;

pub const PGBIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Cluster {
    dir: tempfile::TempDir,
    pub port: u16,
    next_db: AtomicU32,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a PostgreSQL binary as the cluster's OS user.
fn pg_cmd(bin: &str) -> Command {
    let path = format!("{PGBIN}/{bin}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("tributary-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["postgres:postgres"]).arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let data = dir.path().join("data");
        let mut c = pg_cmd("initdb");
        c.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]);
        run(c, "initdb");
        // A free port can be taken by someone else before we bind it: retry.
        for _ in 0..5 {
            let port = free_port();
            let conf = format!(
                "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
                 max_prepared_transactions = 10\nfsync = off\n",
                dir.path().display()
            );
            std::fs::write(data.join("postgresql.auto.conf"), conf).unwrap();
            let mut hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
            if !hba.contains("host replication all 127.0.0.1/32 trust") {
                hba.push_str("\nhost replication all 127.0.0.1/32 trust\n");
                std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
            }
            let mut c = pg_cmd("pg_ctl");
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .args(["-w", "start"]);
            if c.output().map(|o| o.status.success()).unwrap_or(false) {
                return Cluster {
                    dir,
                    port,
                    next_db: AtomicU32::new(0),
                };
            }
        }
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        panic!("could not start PostgreSQL:\n{log}");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    pub fn connect(&self, db: &str) -> Client {
        Client::connect(&self.url(db), NoTls).unwrap_or_else(|e| panic!("connect to {db}: {e}"))
    }

    /// A new database with the extension created.
    pub fn db(&self) -> Db<'_> {
        let db = self.empty_db();
        db.connect()
            .batch_execute("CREATE EXTENSION tributary")
            .expect("CREATE EXTENSION tributary (run `cargo pgrx install` first)");
        db
    }

    /// A new database without the extension.
    pub fn empty_db(&self) -> Db<'_> {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{n}");
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        Db {
            cluster: self,
            name,
        }
    }

    pub fn psql(&self, db: &str) -> Command {
        let mut c = self.client_tool("psql");
        c.args(["-X", "-d", db]);
        c
    }

    /// A client program (`pg_dump`, `pg_restore`, ...) connected to this
    /// cluster as the superuser.
    pub fn client_tool(&self, bin: &str) -> Command {
        let mut c = Command::new(format!("{PGBIN}/{bin}"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        c
    }

    pub fn pg_ctl(&self, args: &[&str]) {
        let mut c = pg_cmd("pg_ctl");
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(args);
        run(c, "pg_ctl");
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A superuser connection over the Unix socket: for a cluster whose
    /// pg_hba.conf refuses plain TCP.
    pub fn connect_socket(&self, db: &str) -> Client {
        let url = format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.path().display(),
            self.port
        );
        Client::connect(&url, NoTls).unwrap_or_else(|e| panic!("connect to {db} by socket: {e}"))
    }

    /// Writes a file into the data directory with `mode`, owned by the
    /// cluster's OS user (a server key must be).
    pub fn write_data_file(&self, name: &str, contents: &[u8], mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if is_root() {
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(&path);
            run(c, "chown");
        }
    }

    /// Appends `conf` to postgresql.conf, replaces pg_hba.conf with `hba`,
    /// and restarts the server (same port).
    pub fn reconfigure(&self, conf: &str, hba: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .unwrap();
        writeln!(f, "\n{conf}").unwrap();
        std::fs::write(self.data_dir().join("pg_hba.conf"), hba).unwrap();
        self.pg_ctl(&["-w", "restart"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut c = pg_cmd("pg_ctl");
        c.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = c.output();
    }
}

pub struct Db<'a> {
    pub cluster: &'a Cluster,
    pub name: String,
}

impl Db<'_> {
    pub fn connect(&self) -> Client {
        self.cluster.connect(&self.name)
    }

    /// A session as `user` (a LOGIN role the test created), over TCP.
    pub fn connect_as(&self, user: &str) -> Client {
        postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user={user} dbname={}",
                self.cluster.port, self.name
            ),
            postgres::NoTls,
        )
        .unwrap_or_else(|e| panic!("connecting as {user}: {e}"))
    }
}

/// The SQLSTATE, message, detail and hint of a database error.
#[derive(Debug)]
pub struct PgErr {
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub fn db_error(e: postgres::Error) -> PgErr {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e}"));
    PgErr {
        code: d.code().code().to_string(),
        message: d.message().to_string(),
        detail: d.detail().map(str::to_string),
        hint: d.hint().map(str::to_string),
    }
}

/// Asserts that `sql` fails with `code`, and that the error has a DETAIL and a HINT.
pub fn expect_error(c: &mut Client, sql: &str, code: &str) -> PgErr {
    let e = match c.batch_execute(sql) {
        Ok(()) => panic!("expected {code} from {sql}, but it succeeded"),
        Err(e) => db_error(e),
    };
    assert_eq!(e.code, code, "wrong SQLSTATE for {sql}: {e:?}");
    assert!(
        e.detail.as_deref().is_some_and(|d| !d.is_empty()),
        "no DETAIL for {sql}: {e:?}"
    );
    assert!(
        e.hint.as_deref().is_some_and(|h| !h.is_empty()),
        "no HINT for {sql}: {e:?}"
    );
    e
}

/// A client following the documented pull protocol:
/// `v := sync_current_version(); read sync_changes_since(last, v); last := v`.
/// It replays what it reads into a map, as an offline client would.
pub struct Reader {
    pub client: Client,
    pub last: i64,
    pub isolation: &'static str,
    /// (table, pk as JSON text) -> row data as JSON
    pub state: std::collections::BTreeMap<(String, String), serde_json::Value>,
    /// every (op, table, pk, data) delivered, in order
    pub delivered: Vec<(String, String, String, Option<serde_json::Value>)>,
}

impl Reader {
    pub fn new(client: Client, isolation: &'static str) -> Reader {
        Reader {
            client,
            last: 0,
            isolation,
            state: Default::default(),
            delivered: vec![],
        }
    }

    /// One poll. Returns how many changes arrived.
    pub fn poll(&mut self) -> usize {
        let mut tx = self
            .client
            .build_transaction()
            .isolation_level(match self.isolation {
                "repeatable read" => postgres::IsolationLevel::RepeatableRead,
                "serializable" => postgres::IsolationLevel::Serializable,
                _ => postgres::IsolationLevel::ReadCommitted,
            })
            .start()
            .unwrap();
        let v: i64 = tx
            .query_one("SELECT sync_current_version()", &[])
            .unwrap()
            .get(0);
        let rows = tx
            .query(
                "SELECT tbl::text, op, pk::text, data::text FROM sync_changes_since($1, $2)",
                &[&self.last, &v],
            )
            .unwrap();
        tx.commit().unwrap();
        for r in &rows {
            let tbl: String = r.get(0);
            let op: String = r.get(1);
            let pk: String = r.get(2);
            let data: Option<String> = r.get(3);
            let data = data.map(|d| serde_json::from_str::<serde_json::Value>(&d).unwrap());
            match op.as_str() {
                "I" | "U" => {
                    self.state
                        .insert((tbl.clone(), pk.clone()), data.clone().unwrap());
                }
                "D" => {
                    self.state.remove(&(tbl.clone(), pk.clone()));
                }
                other => panic!("unknown op {other}"),
            }
            self.delivered.push((op, tbl, pk, data));
        }
        self.last = v;
        rows.len()
    }
}

/// The table's rows as the reader's state map would hold them.
pub fn table_state(
    c: &mut Client,
    tbl: &str,
) -> std::collections::BTreeMap<(String, String), serde_json::Value> {
    let rows = c
        .query(
            "SELECT c.tbl::text, c.pk::text, c.data::text FROM sync_changes_since(0, NULL, ARRAY[$1::text::regclass]) c",
            &[&tbl],
        )
        .unwrap();
    rows.iter()
        .map(|r| {
            let d: String = r.get(2);
            ((r.get(0), r.get(1)), serde_json::from_str(&d).unwrap())
        })
        .collect()
}

/// The single `bigint` a parameterless query returns (counts, mostly).
pub fn scalar(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
