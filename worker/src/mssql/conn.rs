//! Connecting to a SQL Server peer, and what its errors mean.
//!
//! The connection string is ADO-style (`server=tcp:host,1433;database=erp;
//! user=tributary;encrypt=true`), parsed by tiberius. The password never
//! sits in the configuration file: it comes from env
//! `TRIBUTARY_MSSQL_PASSWORD_<NAME>` (the destination's name upper-cased,
//! `-` as `_`). TLS is rustls, with the process's ring provider.

use crate::error::{Cause, Error};
use tiberius::{AuthMethod, Client, Config};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

pub type Peer = Client<Compat<TcpStream>>;

/// `TRIBUTARY_MSSQL_PASSWORD_<NAME>`.
pub fn password_env(dest: &str) -> String {
    format!(
        "TRIBUTARY_MSSQL_PASSWORD_{}",
        dest.to_ascii_uppercase().replace('-', "_")
    )
}

/// The connection string's `user` (or `uid`, `user id`, `username`), and
/// whether it carries a password itself (refused: secrets come from env).
fn user_of(url: &str) -> (Option<String>, bool) {
    let mut user = None;
    let mut password = false;
    for part in url.split(';') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "user" | "uid" | "user id" | "username" => user = Some(v.trim().to_string()),
            "password" | "pwd" => password = true,
            _ => {}
        }
    }
    (user, password)
}

/// Why `url` is not a connection string the worker takes, if it is not.
pub fn check_url(name: &str, url: &str) -> Result<(), String> {
    let (user, password) = user_of(url);
    if password {
        return Err(format!(
            "destination {name:?}: the mssql url holds a password; remove it and set env {} instead",
            password_env(name)
        ));
    }
    if user.is_none() {
        return Err(format!(
            "destination {name:?}: the mssql url names no user (user=…); Windows and Entra logins are not supported"
        ));
    }
    Config::from_ado_string(url)
        .map(|_| ())
        .map_err(|e| format!("destination {name:?}: the mssql url cannot be read: {e}"))
}

/// A peer error: every SQL Server failure concerns that peer alone. A
/// server, network or login failure detaches it and it is probed again;
/// a refusal (a constraint, a missing object or privilege, a value it
/// cannot take) detaches it with a longer backoff.
pub fn peer_err(name: &str, what: &str, e: tiberius::error::Error) -> Error {
    let cause = match &e {
        tiberius::error::Error::Server(t) => match t.code() {
            // Deadlock victim, lock timeout, snapshot update conflict,
            // database unavailable or in recovery.
            1205 | 1222 | 3960 | 942 | 922 | 40613 => Cause::PeerUnavailable,
            // Login failed: retried (a password being rotated).
            18456 | 4060 => Cause::PeerUnavailable,
            _ => Cause::PeerBroken,
        },
        _ => Cause::PeerUnavailable,
    };
    let hint = match &e {
        tiberius::error::Error::Server(t) if matches!(t.code(), 229 | 262 | 297 | 300 | 1088 | 4616) => {
            " (a missing permission: run the script `tributary-worker mssql-setup` prints as a user who may, or grant the worker's login)"
        }
        tiberius::error::Error::Server(t) if matches!(t.code(), 208 | 207 | 4902) => {
            " (a missing table or column: run the script `tributary-worker mssql-setup` prints)"
        }
        _ => "",
    };
    Error::Peer {
        message: format!("destination {name}: {what}: {e}{hint}"),
        cause,
    }
}

/// Runs `sql` (statements without parameters) to its end, results
/// dropped: a failure is the peer's, while doing `what`.
pub async fn batch(
    peer: &mut Peer,
    name: &str,
    what: &str,
    sql: impl Into<String>,
) -> Result<(), Error> {
    let run = async { peer.simple_query(sql.into()).await?.into_results().await };
    run.await.map(|_| ()).map_err(|e| peer_err(name, what, e))
}

/// Connects to the peer of destination `name` at `url`.
pub async fn connect(name: &str, url: &str) -> Result<Peer, Error> {
    // tiberius takes the process's provider: ring, as for the hub.
    crate::tls::install_ring();
    check_url(name, url).map_err(Error::Config)?;
    let mut config = Config::from_ado_string(url)
        .map_err(|e| Error::Config(format!("destination {name:?}: {e}")))?;
    let (user, _) = user_of(url);
    let password = std::env::var(password_env(name)).unwrap_or_default();
    config.authentication(AuthMethod::sql_server(user.unwrap_or_default(), password));
    config.application_name(format!("tributary-worker {name}"));
    let addr = config.get_addr();
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| Error::Peer {
        message: format!("destination {name}: SQL Server at {addr} did not answer in 10 s"),
        cause: Cause::PeerUnavailable,
    })?
    .map_err(|e| Error::Peer {
        message: format!("destination {name}: cannot reach SQL Server at {addr}: {e}"),
        cause: Cause::PeerUnavailable,
    })?;
    tcp.set_nodelay(true).ok();
    Client::connect(config, tcp.compat_write())
        .await
        .map_err(|e| peer_err(name, "logging in", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_a_user_and_holds_no_password() {
        assert!(check_url("erp", "server=tcp:db,1433;database=erp;user=t").is_ok());
        let e = check_url("erp", "server=tcp:db,1433;user=t;Password=x").unwrap_err();
        assert!(e.contains("TRIBUTARY_MSSQL_PASSWORD_ERP"), "{e}");
        assert!(check_url("erp", "server=tcp:db,1433;database=erp")
            .unwrap_err()
            .contains("names no user"));
        assert_eq!(password_env("erp-2"), "TRIBUTARY_MSSQL_PASSWORD_ERP_2");
    }
}
