//! What can go wrong for the edge client, in words an app's operator can
//! act on, and the exit code the CLI gives each kind.
//!
//! | kind | exit code | what the app does |
//! |---|---|---|
//! | usage | 2 | fix the command |
//! | the hub is unreachable (no connection, a timeout, 502/503/504) | 3 | keep working offline; sync later |
//! | the token is expired or refused (401) | 4 | get a new token |
//! | the file is not a Tributary peer (not SQLite, never initialized) | 5 | point at the right file, or `init` |
//! | the hub refused the request (another 4xx or 5xx, with its SQLSTATE) | 6 | read DETAIL and HINT |
//! | the file failed (locked past the busy timeout, disk full) | 7 | retry; free the file |

use std::fmt;

/// An error answer of the gateway: its HTTP status and JSON error body.
#[derive(Debug, Clone, Default)]
pub struct HubError {
    pub status: u16,
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl HubError {
    /// From a status and the body the gateway sent (`{"error": {...}}`);
    /// a body that is not one keeps its first 200 characters as message.
    pub fn from_body(status: u16, body: &str) -> HubError {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let e = &v["error"];
        let s = |k: &str| e[k].as_str().map(str::to_string);
        HubError {
            status,
            sqlstate: s("sqlstate").unwrap_or_default(),
            message: s("message").unwrap_or_else(|| body.chars().take(200).collect()),
            detail: s("detail"),
            hint: s("hint"),
        }
    }
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if !self.sqlstate.is_empty() {
            write!(f, " ({})", self.sqlstate)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("the hub at {hub} is unreachable: {cause}\nHINT: the file keeps working; sync again when the hub is back")]
    Unreachable { hub: String, cause: String },
    #[error("the hub refused the token: {0}\nHINT: get a new token (expired ones are refused) and pass it with --token-file or TRIBUTARY_EDGE_TOKEN")]
    TokenRefused(HubError),
    #[error("{path} is not a Tributary peer file: {why}")]
    NotAPeer { path: String, why: String },
    #[error("the hub refused the request: {0}")]
    Hub(HubError),
    #[error("the peer file failed: {0}")]
    File(#[from] tributary_sqlite::PeerError),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::File(e.into())
    }
}

impl Error {
    /// The CLI's exit code for this error (see the module's table).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Unreachable { .. } => 3,
            Error::TokenRefused(_) => 4,
            Error::NotAPeer { .. } => 5,
            Error::Hub(_) => 6,
            Error::File(_) => 7,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
