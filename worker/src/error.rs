//! The worker's one error type. Every error has a kind: transient errors
//! are retried with backoff, definite ones stop the worker with a message
//! saying what the operator must do. An error of unknown kind is transient.

use crate::pgoutput::DecodeError;
use crate::source::SourceError;

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
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("source: {0}")]
    Source(#[from] SourceError),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            // A configuration the operator must fix, or a stream we cannot
            // read (retrying would read the same bytes again).
            Error::Config(_) | Error::Decode(_) => ErrorKind::Definite,
            Error::Io(_) => ErrorKind::Transient,
            Error::Source(SourceError::Definite { .. }) => ErrorKind::Definite,
            Error::Source(SourceError::Transient { .. }) => ErrorKind::Transient,
        }
    }
}
