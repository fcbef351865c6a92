//! Ordinary (non-replication) connections to the hub, and the session
//! settings every connection that reads values pins.

use crate::error::{Context, Error};
use crate::source::ConnectOptions;
use tokio_postgres::Client;

/// How values are printed: pgoutput prints them with the walsender's
/// settings, and the initial copy and the pull read them as text, so all
/// three pin the same ones and values map the same way everywhere.
pub const SESSION_SETTINGS: [(&str, &str); 4] = [
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
];

/// `SET [LOCAL] name = 'value'; …` for [`SESSION_SETTINGS`].
pub fn session_settings_sql(local: bool) -> String {
    let scope = if local { "LOCAL " } else { "" };
    SESSION_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {scope}{k} = {};", tributary_core::quote::literal(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Connects an ordinary client, with TLS as `o.sslmode` says (see
/// [`crate::tls`]). A TLS failure is [`crate::error::Cause::Tls`].
/// This process's tag, in the application_name of every connection it
/// makes (`tributary-worker … [tag]`): a worker that takes the slot over
/// from a hung one ends that one's sessions by it (see
/// [`crate::standby`]).
pub fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{:x}.{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
    })
}

/// `name [tag]` (see [`process_tag`]).
pub fn tagged(name: &str) -> String {
    format!("{name} [{}]", process_tag())
}

pub async fn connect(o: &ConnectOptions, application_name: &str) -> Result<Client, Error> {
    let (tls, mode) = crate::tls::postgres_connector(o)?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&o.host)
        .port(o.port)
        .user(&o.user)
        .dbname(&o.dbname)
        .application_name(tagged(application_name))
        .ssl_mode(mode);
    if let Some(p) = &o.password {
        cfg.password(p);
    }
    let (client, conn) = match cfg.connect(tls).await {
        Ok(c) => c,
        Err(e) => {
            return Err(match crate::tls::postgres_failure(&e, o) {
                Some(tls) => tls.into(),
                None => Error::Postgres {
                    context: "connecting to the hub".into(),
                    source: e,
                },
            })
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "hub connection ended");
        }
    });
    Ok(client)
}

/// The hub's identity, `system identifier/database OID`: what a stored WAL
/// position belongs to. A restored hub (another cluster, or another
/// database) has another one.
pub async fn identity(o: &ConnectOptions, client: &Client) -> Result<String, Error> {
    let mut repl = crate::source::Connection::connect(o).await?;
    let system = repl.identify_system().await?;
    let db: u32 = client
        .query_one(
            "SELECT oid FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .context("reading the database's identity")?
        .get(0);
    Ok(format!("{}/{db}", system.system_id))
}

/// The oldest extension version this worker works with: it reads
/// `tributary.schema_changes` and the `tributary.ddl` messages, and writes
/// queue rows keyed by `(hub, lsn, ord)` (all of 0.4.0).
pub const EXTENSION_AT_LEAST: (u32, u32, u32) = (0, 4, 0);

/// Stops with what to do when the hub's extension is older than this
/// worker needs.
pub async fn check_extension(client: &Client) -> Result<(), Error> {
    let v: Option<String> = client
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'tributary'",
            &[],
        )
        .await
        .context("reading the extension's version")?
        .map(|r| r.get(0));
    let parse = |v: &str| -> Option<(u32, u32, u32)> {
        let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    };
    let (a, b, c) = EXTENSION_AT_LEAST;
    match v.as_deref() {
        Some(v) if parse(v).is_some_and(|found| found >= EXTENSION_AT_LEAST) => Ok(()),
        found => Err(Error::Definite {
            message: match found {
                Some(v) => format!("the hub's tributary extension is {v}; this worker needs {a}.{b}.{c} or later"),
                None => "the extension tributary is not installed in the configured database".into(),
            },
            hint: match found {
                Some(_) => "install the new build on the hub's server, then in the database: ALTER EXTENSION tributary UPDATE;".into(),
                None => "CREATE EXTENSION tributary; in the database the [source] url names".into(),
            },
            cause: crate::error::Cause::MissingObject,
        }),
    }
}

/// Warns when the hub holds tables restored from another cluster's dump
/// that `sync_restored()` has not adopted: the worker serves them (WAL
/// positions do not depend on it), but their readers get TB008 until it
/// runs.
pub async fn warn_unadopted_restore(client: &Client) -> Result<(), Error> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM tributary.tracked WHERE active AND hub IS DISTINCT FROM tributary._hub_identity()",
            &[],
        )
        .await
        .context("checking for a restore not adopted")?
        .get(0);
    if n > 0 {
        tracing::warn!(tables = n,
            "tracked tables were restored from another cluster and not adopted: readers get TB008 until a superuser runs SELECT sync_restored()");
    }
    Ok(())
}
