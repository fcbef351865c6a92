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

/// Connects an ordinary client.
pub async fn connect(o: &ConnectOptions, application_name: &str) -> Result<Client, Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&o.host)
        .port(o.port)
        .user(&o.user)
        .dbname(&o.dbname)
        .application_name(application_name);
    if let Some(p) = &o.password {
        cfg.password(p);
    }
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to the hub")?;
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
