//! TLS on both of the worker's connections to the hub (the ordinary one and
//! the replication one), against a real server with `ssl = on` and a
//! pg_hba.conf that admits TCP only over TLS.
//!
//! ```text
//!  openssl  a CA, a server certificate for DNS:localhost only, another CA,
//!           in a directory whose name has a space and quotes
//!  one cluster, ssl = on, hostssl only (the harness uses the Unix socket)
//!    streams  prefer (the default), require, verify-ca (host 127.0.0.1), verify-full (localhost)
//!    exit 2   verify-full to 127.0.0.1, verify-ca or require with the other CA,
//!             an unreadable sslrootcert, disable (no silent plaintext)
//!  the same cluster with ssl = off
//!    exit 2   require ("does not support TLS");  prefer streams in plaintext
//! ```
//!
//! The cases run in one test, one after the other, to share the cluster
//! and the certificates.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tributary_e2e::worker::*;
use tributary_e2e::*;
use tributary_worker::error::Cause;
use tributary_worker::source::{ConnectOptions, Connection};

const T: Duration = Duration::from_secs(60);
const QUEUE: &str =
    "[[destination]]\nname = \"audit\"\nkind = \"queue\"\ntables = [\"public.*\"]\n";

struct Certs {
    _dir: tempfile::TempDir,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// A CA that signed nothing the server has.
    other_ca: PathBuf,
    /// A CA with the same name as `ca`, and another key.
    impostor_ca: PathBuf,
    server_crt: Vec<u8>,
    server_key: Vec<u8>,
}

fn make_certs() -> Certs {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs \"q\" 'x' y");
    std::fs::create_dir(&dir).unwrap();
    for (name, subject) in [
        ("ca", "/CN=Tributary test CA"),
        ("impostor-ca", "/CN=Tributary test CA"),
        ("other-ca", "/CN=Another CA"),
    ] {
        certs::ca(&dir, name, subject);
    }
    certs::server(&dir, "ca");
    Certs {
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        impostor_ca: dir.join("impostor-ca.crt"),
        server_crt: std::fs::read(dir.join("server.crt")).unwrap(),
        server_key: std::fs::read(dir.join("server.key")).unwrap(),
        _dir: tmp,
    }
}

/// `?sslrootcert=` with every byte but unreserved ones and `/` %-escaped.
fn root(path: &Path) -> String {
    let escaped: String = path
        .to_str()
        .unwrap()
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("sslrootcert={escaped}")
}

/// The hub the cases connect to: the cluster, its database, a socket
/// connection for the checks, and the next row id.
struct Hub<'a> {
    cluster: &'a Cluster,
    db: String,
    c: Client,
    next_id: i32,
}

impl Hub<'_> {
    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://worker@{host}:{}/{}?{query}",
            self.cluster.port, self.db
        )
    }

    fn config(&self, host: &str, query: &str) -> String {
        format!(
            "[source]\nurl = \"{}\"\nslot = \"w\"\n\n[http]\nlisten = \"127.0.0.1:{}\"\n\n{QUEUE}",
            self.url(host, query),
            free_port()
        )
    }

    /// The worker streams a change with these settings; both its
    /// connections use TLS exactly when `tls`.
    fn streams(&mut self, host: &str, query: &str, tls: bool) {
        let what = format!("{host} ?{query}");
        let mut w = WorkerProc::start(&self.config(host, query), &[(PASSWORD_ENV, PASSWORD)]);
        // The first run creates the slot; writes before it are not owed.
        w.until_slot(&mut self.c, "w");
        self.next_id += 1;
        let id = self.next_id;
        self.c
            .execute("INSERT INTO items VALUES ($1, 'x')", &[&id])
            .unwrap();
        let c = &mut self.c;
        w.until(T, &format!("row {id} in the queue ({what})"), || {
            scalar(
                c,
                &format!(
                    "SELECT count(*) FROM tributary.queue_audit WHERE pk = '{{\"id\": {id}}}'"
                ),
            ) == 1
        });
        let conns: Vec<(String, bool)> = c
            .query(
                "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                  WHERE a.usename = 'worker' ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for kind in ["client backend", "walsender"] {
            assert!(
                conns.iter().any(|(k, _)| k == kind),
                "no {kind} for {what}: {conns:?}"
            );
        }
        assert!(
            conns.iter().all(|(_, ssl)| *ssl == tls),
            "{what}: every connection should have ssl = {tls}: {conns:?}"
        );
        let st = w.sigterm(T);
        assert!(st.success(), "{what}: SIGTERM exits 0:\n{}", w.log_text());
    }

    /// The worker stops at once with exit code 2, its message holding
    /// each of `wants`; it never streamed.
    fn refused(&self, host: &str, query: &str, wants: &[&str]) {
        let mut w = WorkerProc::start(&self.config(host, query), &[(PASSWORD_ENV, PASSWORD)]);
        let st = w
            .wait(T)
            .unwrap_or_else(|| panic!("?{query}: still running:\n{}", w.log_text()));
        let log = w.log_text();
        assert_eq!(st.code(), Some(2), "?{query}: a definite error:\n{log}");
        for want in wants {
            assert!(log.contains(want), "?{query}: {want:?} not in\n{log}");
        }
        assert!(!log.contains("streaming"), "?{query}: it streamed:\n{log}");
    }

    /// The replication connection alone fails with `cause`, its message
    /// holding each of `wants`.
    fn replication_refused(&self, host: &str, query: &str, cause: Cause, wants: &[&str]) {
        let opts = ConnectOptions::from_url(&self.url(host, query), Some(PASSWORD.into())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = match rt.block_on(Connection::connect(&opts)) {
            Ok(_) => panic!("?{query}: the replication connection was accepted"),
            Err(e) => e,
        };
        let text = e.to_string();
        assert_eq!(e.cause(), cause, "?{query}: {text}");
        for want in wants {
            assert!(text.contains(want), "?{query}: {want:?} not in {text:?}");
        }
    }
}

/// Only TLS over TCP, for the worker, with a SCRAM password; the harness's
/// superuser uses the socket.
const HBA_TLS_ONLY: &str = "local all all trust\nhostssl all worker 127.0.0.1/32 scram-sha-256\n";
const PASSWORD_ENV: &str = "TRIBUTARY_SOURCE_PASSWORD";
const PASSWORD: &str = "pw 'with\" quotes";

#[test]
fn the_worker_connects_to_the_hub_only_as_sslmode_allows() {
    let certs = make_certs();
    let cluster = Cluster::start();
    let db = cluster.db();
    db.connect()
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text); SELECT sync_track('items')",
        )
        .unwrap();
    // The worker's role, as setup_worker_role makes it, with a password
    // (only a queue here: no peer to speak for).
    db.connect()
        .batch_execute(&format!(
            "CREATE ROLE worker LOGIN REPLICATION PASSWORD '{}';
             SELECT sync_queue_create('audit'); SELECT sync_worker_grant('worker');",
            PASSWORD.replace('\'', "''")
        ))
        .unwrap();
    cluster.write_data_file("server.crt", &certs.server_crt, 0o644);
    cluster.write_data_file("server.key", &certs.server_key, 0o600);
    cluster.reconfigure("ssl = on", HBA_TLS_ONLY);
    let mut hub = Hub {
        cluster: &cluster,
        c: cluster.connect_socket(&db.name),
        db: db.name.clone(),
        next_id: 0,
    };
    let (ca, other) = (root(&certs.ca), root(&certs.other_ca));

    hub.streams("127.0.0.1", "", true);
    hub.streams("127.0.0.1", "sslmode=require", true);
    hub.streams("localhost", &format!("sslmode=verify-full&{ca}"), true);
    // verify-ca checks the chain, not the name.
    hub.streams("127.0.0.1", &format!("sslmode=verify-ca&{ca}"), true);

    let not_named = [
        "certificate verify failed",
        "not valid for name \"127.0.0.1\"",
    ];
    let q = format!("sslmode=verify-full&{ca}");
    hub.refused("127.0.0.1", &q, &not_named);
    hub.replication_refused("127.0.0.1", &q, Cause::Tls, &not_named);
    let unknown = [
        "certificate verify failed",
        "UnknownIssuer",
        "Hint: Check sslmode",
    ];
    let q = format!("sslmode=verify-ca&{other}");
    hub.refused("localhost", &q, &unknown);
    hub.replication_refused("localhost", &q, Cause::Tls, &unknown);
    // As in libpq, require with a root certificate verifies the chain.
    hub.replication_refused(
        "127.0.0.1",
        &format!("sslmode=require&{}", root(&certs.impostor_ca)),
        Cause::Tls,
        &["certificate verify failed", "BadSignature"],
    );
    hub.refused(
        "localhost",
        "sslmode=verify-full&sslrootcert=/no%20such/ca.crt",
        &["sslrootcert \"/no such/ca.crt\": cannot be read"],
    );
    // No silent plaintext: the server refuses it, and the worker stops.
    let plain = ["no pg_hba.conf entry", "no encryption"];
    hub.refused("127.0.0.1", "sslmode=disable", &plain);
    hub.replication_refused("127.0.0.1", "sslmode=disable", Cause::Login, &plain);

    // A server without TLS: require stops, prefer falls back to plaintext.
    cluster.reconfigure(
        "ssl = off",
        "local all all trust\nhost all worker 127.0.0.1/32 scram-sha-256\n",
    );
    hub.c = cluster.connect_socket(&db.name);
    let no_tls = ["does not support TLS, but sslmode=require requires it"];
    hub.refused("127.0.0.1", "sslmode=require", &no_tls);
    hub.replication_refused("127.0.0.1", "sslmode=require", Cause::Tls, &no_tls);
    hub.streams("127.0.0.1", "sslmode=prefer", false);
}
