//! The worker's one error type and its one policy.
//!
//! ```text
//!  any failure ──> Error ──cause()──> Cause ──action()──> Retry   the session (or the peer's pull) again, with backoff
//!                                                         Detach  set that destination aside, retry it with backoff;
//!                                                                 the others go on
//!                                                         Stop    exit 2 with a hint: the operator must act
//! ```
//!
//! Each error names its cause; [`Cause::action`] is the one table from
//! causes to what the worker does. Server errors are classed in one place,
//! [`classify`], by SQLSTATE (and message where the SQLSTATE is shared),
//! for the replication source, the queue and the pull alike. An error of
//! unknown cause is [`Cause::Server`]: retried.

use crate::pgoutput::DecodeError;
use crate::source::SourceError;
use crate::transaction::AssembleError;

/// What an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The configuration is wrong (file, URL, a destination's settings).
    Config,
    /// The replication slot is missing or invalidated: changes may be lost.
    SlotLost,
    /// The publication does not exist.
    PublicationMissing,
    /// `wal_level` is below logical.
    WalLevel,
    /// The login failed (password, pg_hba.conf, authentication method).
    Login,
    /// The worker's role lacks a privilege (42501).
    Privilege,
    /// A table, function or database the worker needs does not exist
    /// (other class-42 errors, 3D000).
    MissingObject,
    /// A column unknown to the table, or a value of the wrong type
    /// (42703, 42804, 42P18).
    BadColumn,
    /// A value or row the server refused: class 22 (data), 23 (a
    /// constraint), TB (Tributary's own checks).
    RefusedValue,
    /// A deadlock or a serialization failure (40P01, 40001).
    Contention,
    /// TLS to the hub cannot be set up: the server refused TLS that
    /// sslmode requires, its certificate did not verify, or sslrootcert
    /// cannot be read. Every destination depends on the hub.
    Tls,
    /// The connection failed or was lost; the server is shutting down.
    Connection,
    /// Any other server error.
    Server,
    /// The replication stream holds bytes the worker cannot read.
    StreamUnreadable,
    /// A peer file cannot be written now: locked by the app past the busy
    /// timeout, missing, a failing disk.
    PeerUnavailable,
    /// A peer file refused a write in a way waiting cannot fix.
    PeerBroken,
    /// A peer's outbox cannot be read or cleared (locked, or holding what
    /// the pull cannot read): only that peer's pull is concerned.
    PeerOutbox,
    /// The worker's role may not speak for this peer at the hub (42501
    /// from sync_apply's origin check): that peer's pull waits, the rest
    /// goes on.
    PeerIdentity,
    /// A message bus destination cannot take messages now: the server is
    /// down or unreachable, its stream is full or over a quota, a publish
    /// was not acknowledged. That destination waits; the rest goes on.
    BusUnavailable,
    /// An internal invariant broke.
    Bug,
}

/// What the worker does about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the session (or the peer's pull) again after a backoff.
    Retry,
    /// Set that destination (its push or its pull) aside and retry it with
    /// backoff; the other destinations go on.
    Detach,
    /// Stop the worker (exit 2) and tell the operator what to do.
    Stop,
}

impl Cause {
    /// The policy: one row per cause.
    pub const fn action(self) -> Action {
        match self {
            Cause::Config
            | Cause::SlotLost
            | Cause::PublicationMissing
            | Cause::WalLevel
            | Cause::Login
            | Cause::Tls
            | Cause::Privilege
            | Cause::MissingObject
            | Cause::BadColumn
            | Cause::StreamUnreadable
            | Cause::Bug => Action::Stop,
            Cause::RefusedValue | Cause::Contention | Cause::Connection | Cause::Server => {
                Action::Retry
            }
            // One peer's trouble, whatever it is, is that peer's alone.
            Cause::PeerUnavailable
            | Cause::PeerOutbox
            | Cause::PeerBroken
            | Cause::PeerIdentity
            | Cause::BusUnavailable => Action::Detach,
        }
    }

    /// What the operator can do, for the causes that stop the worker.
    pub fn hint(self) -> &'static str {
        match self {
            Cause::SlotLost => "The slot is gone or invalidated: changes since the worker's last position may be lost. Re-create it and resync the destinations in full; the worker never recreates a slot by itself.",
            Cause::PublicationMissing => "Create the publication (SELECT sync_track(...) creates \"tributary\") or fix source.publication.",
            Cause::WalLevel => "Set wal_level = logical in postgresql.conf and restart PostgreSQL.",
            Cause::Login => "Check the user, the password (TRIBUTARY_SOURCE_PASSWORD) and pg_hba.conf (it needs a replication line).",
            Cause::PeerIdentity => "Register the peer for the worker's role, as an admin: SELECT sync_set_peer('<peer>', <priority>, '<worker role>') (the error's DETAIL names both).",
            Cause::Tls => "Check sslmode and sslrootcert in source.url against the hub: verify-ca needs the CA that signed the server's certificate, verify-full also the host name the certificate names; require and up need ssl = on on the server.",
            Cause::Privilege => "Grant the worker's role what it needs: SELECT sync_worker_grant('<role>'), and the REPLICATION attribute.",
            Cause::MissingObject | Cause::BadColumn => "Check that the extension is installed in the configured database and the configuration names existing objects.",
            Cause::Config => "Fix the configuration (tributary-worker check-config shows it).",
            Cause::StreamUnreadable | Cause::Bug => "Report this as a bug, with the log.",
            Cause::BusUnavailable => "That destination waits and is probed from 0.5 s on (the others go on): start the NATS server, make room in the stream (its limits, a consumer that acks), or raise its quota.",
            Cause::PeerBroken => "Check the peer file: the app may have added a constraint the hub's rows do not meet, or the file is damaged.",
            _ => "It is retried with backoff.",
        }
    }
}

/// Classes a server error by SQLSTATE (and message, where a SQLSTATE is
/// shared). The one classifier of the source, the queue and the pull.
pub fn classify(code: &str, message: &str) -> Cause {
    let m = message.to_ascii_lowercase();
    let slot_missing =
        m.contains("replication slot") && (m.contains("does not exist") || code == "42704");
    if slot_missing || m.contains("can no longer get changes") || m.contains("invalidated") {
        Cause::SlotLost
    } else if m.contains("publication") && m.contains("does not exist") {
        Cause::PublicationMissing
    } else if m.contains("wal_level") {
        Cause::WalLevel
    } else if code.starts_with("28") {
        Cause::Login
    } else if code == "42501" && m.contains("permission denied to write as peer") {
        Cause::PeerIdentity
    } else if code == "42501" {
        Cause::Privilege
    } else if matches!(code, "42703" | "42804" | "42P18") {
        Cause::BadColumn
    } else if code.starts_with("42") || code == "3D000" {
        Cause::MissingObject
    } else if code.starts_with("22") || code.starts_with("23") || code.starts_with("TB") {
        Cause::RefusedValue
    } else if matches!(code, "40001" | "40P01") {
        Cause::Contention
    } else if code.starts_with("08") || code.starts_with("57P") {
        Cause::Connection
    } else {
        Cause::Server
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("replication stream: {0}")]
    Decode(#[from] DecodeError),
    #[error("replication stream: {0}")]
    Assemble(#[from] AssembleError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// An ordinary (non-replication) query failed.
    #[error("{context}: {}{}", source.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| source.to_string()),
            source.code().map(|c| format!(" (SQLSTATE {})", c.code())).unwrap_or_default())]
    Postgres {
        context: String,
        source: tokio_postgres::Error,
    },
    /// A peer file failed.
    #[error("{message}")]
    Peer { message: String, cause: Cause },
    /// A state the operator must resolve, or a broken invariant.
    #[error("{message}. Hint: {hint}")]
    Definite {
        message: String,
        hint: String,
        cause: Cause,
    },
}

impl Error {
    pub fn cause(&self) -> Cause {
        match self {
            Error::Config(_) => Cause::Config,
            // A stream we cannot read: retrying would read the same bytes.
            Error::Decode(_) => Cause::StreamUnreadable,
            Error::Assemble(AssembleError::Decode(_) | AssembleError::BadMessage(..)) => {
                Cause::StreamUnreadable
            }
            Error::Assemble(_) | Error::Io(_) => Cause::Connection,
            Error::Source(e) => e.cause(),
            Error::Postgres { source, .. } => match source.as_db_error() {
                Some(d) => classify(d.code().code(), d.message()),
                None => Cause::Connection,
            },
            Error::Peer { cause, .. } | Error::Definite { cause, .. } => *cause,
        }
    }

    pub fn action(&self) -> Action {
        self.cause().action()
    }

    /// A broken invariant: stop and ask for a report.
    pub fn bug(message: impl Into<String>) -> Error {
        Error::Definite {
            message: message.into(),
            hint: "report this as a bug".into(),
            cause: Cause::Bug,
        }
    }

    /// A peer file's error: unavailable (locked, missing, I/O) or broken.
    pub fn peer(what: &str, e: tributary_sqlite::PeerError) -> Error {
        // Errors SQLite gives no code for (a value of the wrong type read
        // back) were always retried; a newer layout needs the operator.
        let cause = match &e {
            tributary_sqlite::PeerError::NewerLayout { .. } => Cause::PeerBroken,
            e if e.is_unavailable() || e.code().is_none() => Cause::PeerUnavailable,
            _ => Cause::PeerBroken,
        };
        Error::Peer {
            message: format!("{what}: {e}"),
            cause,
        }
    }

    /// The SQLSTATE of a server error, if it is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Postgres { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// Adds what was being done to an ordinary query's error.
pub trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, tokio_postgres::Error> {
    fn context(self, what: impl Into<String>) -> Result<T, Error> {
        self.map_err(|source| Error::Postgres {
            context: what.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_classed_by_sqlstate_and_message() {
        let c = |code, m| classify(code, m);
        assert_eq!(
            c("42704", "replication slot \"s\" does not exist"),
            Cause::SlotLost
        );
        assert_eq!(
            c(
                "55000",
                "can no longer get changes from replication slot \"s\""
            ),
            Cause::SlotLost
        );
        assert_eq!(
            c("42704", "publication \"p\" does not exist"),
            Cause::PublicationMissing
        );
        assert_eq!(
            c("55000", "logical decoding requires wal_level >= logical"),
            Cause::WalLevel
        );
        assert_eq!(c("28P01", "password authentication failed"), Cause::Login);
        assert_eq!(c("42501", "permission denied"), Cause::Privilege);
        assert_eq!(c("42P01", "relation does not exist"), Cause::MissingObject);
        assert_eq!(c("42703", "column does not exist"), Cause::BadColumn);
        assert_eq!(c("22P02", "invalid input syntax"), Cause::RefusedValue);
        assert_eq!(c("TB003", "not tracked"), Cause::RefusedValue);
        assert_eq!(c("40P01", "deadlock detected"), Cause::Contention);
        assert_eq!(c("57P01", "terminating connection"), Cause::Connection);
        assert_eq!(c("53300", "too many connections"), Cause::Server);
    }

    #[test]
    fn the_policy_stops_only_for_what_the_operator_must_fix() {
        for cause in [
            Cause::SlotLost,
            Cause::PublicationMissing,
            Cause::Login,
            Cause::Tls,
            Cause::Privilege,
        ] {
            assert_eq!(cause.action(), Action::Stop, "{cause:?}");
        }
        for cause in [
            Cause::Connection,
            Cause::Contention,
            Cause::Server,
            Cause::RefusedValue,
        ] {
            assert_eq!(cause.action(), Action::Retry, "{cause:?}");
        }
        assert_eq!(Cause::PeerUnavailable.action(), Action::Detach);
        assert_eq!(Cause::PeerOutbox.action(), Action::Detach);
        assert_eq!(Cause::PeerIdentity.action(), Action::Detach);
        assert_eq!(
            classify("42501", "permission denied to write as peer 'edge''9'"),
            Cause::PeerIdentity
        );
        assert_eq!(
            classify("42501", "permission denied for table items"),
            Cause::Privilege
        );
    }
}
