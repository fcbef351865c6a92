//! The worker's one error type. Every error has a kind: transient errors
//! are retried with backoff, definite ones stop the worker with a message
//! saying what the operator must do. An error of unknown kind is transient.

use crate::pgoutput::DecodeError;
use crate::source::SourceError;
use crate::transaction::AssembleError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Transient,
    Definite,
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
    /// A peer (SQLite file) failed: locked or unreachable is transient.
    #[error("{message}")]
    Peer { message: String, transient: bool },
    /// A state the operator must resolve.
    #[error("{message}. Hint: {hint}")]
    Definite { message: String, hint: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            // A configuration the operator must fix, or a stream we cannot
            // read (retrying would read the same bytes again).
            Error::Config(_) | Error::Decode(_) | Error::Definite { .. } => ErrorKind::Definite,
            Error::Assemble(AssembleError::Decode(_) | AssembleError::BadWriteback(_)) => {
                ErrorKind::Definite
            }
            Error::Assemble(_) => ErrorKind::Transient,
            Error::Io(_) => ErrorKind::Transient,
            Error::Peer { transient, .. } => {
                if *transient {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Definite
                }
            }
            Error::Source(SourceError::Definite { .. }) => ErrorKind::Definite,
            Error::Source(SourceError::Transient { .. }) => ErrorKind::Transient,
            Error::Postgres { source, .. } => match source.code().map(|c| c.code()) {
                // Undefined objects, missing privileges, bad credentials, a
                // missing database: retrying cannot help.
                Some(c) if c.starts_with("42") || c.starts_with("28") || c == "3D000" => {
                    ErrorKind::Definite
                }
                _ => ErrorKind::Transient,
            },
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
