//! The SQLite peer file, on its own: what a file holds besides the app's
//! tables, how hub values are stored in it, how the app's edits are
//! captured, and the writes a sync makes. The worker's SQLite destination
//! (push and pull) is built on it, and so is any other process that keeps
//! the same file in step (a device syncing over HTTP): nothing here knows
//! the replication stream.
//!
//! ```text
//!  schema    _tributary_* bookkeeping tables, versioned, with migrations
//!  encoding  hub column type -> SQLite type; hub value text -> SQLite value; keys as JSON
//!  outbox    capture triggers per table (app edits -> _tributary_outbox, collapsed per key),
//!            reading it, and clearing what was sent (+ outcomes -> _tributary_errors)
//!  file      PeerFile: open (busy timeout, WAL), tables created from hub columns,
//!            upsert / delete / truncate under `applying`, progress in the same transaction
//!  alter     PeerFile::alter: a hub table's change of shape (renames, drops, rebuild),
//!            followed by the file table, its outbox and its revisions, in the sync's transaction
//! ```
//!
//! Every connection this crate opens sets a busy timeout: apps hold locks.

pub mod alter;
pub mod encoding;
pub mod file;
pub mod outbox;
pub mod schema;

pub use alter::SchemaChange;
pub use file::{Mapped, PeerFile, Position};

/// A hub column as the peer file needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// The hub's type OID (see `tributary_core::pgtype`).
    pub type_oid: u32,
    /// Part of the primary key.
    pub key: bool,
}

/// A hub table as the peer file holds it: its schema and name at the hub,
/// and its data columns (tracking columns left out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDef {
    pub schema: String,
    pub name: String,
    pub columns: Vec<ColumnDef>,
}

impl TableDef {
    /// The table's name in the file: `public.t` is `t`; a table of another
    /// schema `s.t` is the single identifier `s.t`.
    pub fn file_name(&self) -> String {
        if self.schema == "public" {
            self.name.clone()
        } else {
            format!("{}.{}", self.schema, self.name)
        }
    }

    /// The hub table, quoted for PostgreSQL (`"s"."t"`).
    pub fn hub_name(&self) -> String {
        tributary_core::quote::qualified(&self.schema, &self.name)
    }
}

/// What went wrong with a peer file.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file was laid out by a newer Tributary.
    #[error("the file's Tributary layout is version {found}; this build knows up to {known}")]
    NewerLayout { found: i64, known: i64 },
}

impl PeerError {
    /// SQLite's error code, when SQLite reported the error.
    pub fn code(&self) -> Option<rusqlite::ErrorCode> {
        match self {
            PeerError::Sqlite(e) => e.sqlite_error_code(),
            PeerError::NewerLayout { .. } => None,
        }
    }

    /// Whether the file refused one write for what it holds or its rules
    /// say (a UNIQUE index or CHECK the app added, a value too big), not
    /// for the state of the file as a whole: the same write is refused
    /// again on retry, and the next one may pass.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.code(),
            Some(
                rusqlite::ErrorCode::ConstraintViolation
                    | rusqlite::ErrorCode::TypeMismatch
                    | rusqlite::ErrorCode::TooBig
            )
        )
    }

    /// Whether waiting can fix it: the file is locked by the app (past the
    /// busy timeout), cannot be opened now, or the disk failed or is full.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.code(),
            Some(
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DiskFull
            )
        )
    }
}

pub type Result<T, E = PeerError> = std::result::Result<T, E>;
