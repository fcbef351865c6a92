//! The tracking vocabulary: the columns `sync_track` adds to a table, the
//! limit on an origin (a peer's name), and the settings that carry it.
//!
//! The SQL files spell these too (`sql/tracking.sql`, `sql/pull.sql`,
//! `sql/apply.sql`); `core/tests/sql_agrees.rs` fails when they disagree.

/// Revision of the row: 1, then +1 per change. Usable as an ETag.
pub const VERSION: &str = "sync_version";
/// Top-level xid of the row's last change: what readers window on.
pub const XID: &str = "sync_xid";
/// Xid that created the row (or its current key).
pub const CREATED_XID: &str = "sync_created_xid";
/// `tributary.origin` of the row's last writer; NULL is the hub itself.
pub const ORIGIN: &str = "sync_origin";
/// Per-column stamps, packed (see [`crate::colvers`]).
pub const COLMETA: &str = "sync_colmeta";

/// Every tracking column, in the order the row trigger replaces them.
pub const COLUMNS: [&str; 5] = [VERSION, XID, CREATED_XID, ORIGIN, COLMETA];

/// Whether `name` is one of Tributary's own columns, which never reach a
/// peer as data.
pub fn is_tracking_column(name: &str) -> bool {
    COLUMNS.contains(&name)
}

/// The longest origin (peer name) in bytes, everywhere: `sync_apply`,
/// `tributary.origin`, `sync_set_peer` and the per-column stamps.
pub const MAX_ORIGIN_BYTES: usize = 255;

/// The session setting that tags a session's writes with an origin.
pub const ORIGIN_GUC: &str = "tributary.origin";

/// Why an origin cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadOrigin {
    Empty,
    TooLong(usize),
}

impl std::fmt::Display for BadOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadOrigin::Empty => write!(f, "an origin must not be empty"),
            BadOrigin::TooLong(n) => write!(
                f,
                "an origin of {n} bytes is too long (at most {MAX_ORIGIN_BYTES})"
            ),
        }
    }
}

/// Checks a peer's name as an origin: 1 to [`MAX_ORIGIN_BYTES`] bytes.
pub fn check_origin(origin: &str) -> Result<(), BadOrigin> {
    match origin.len() {
        0 => Err(BadOrigin::Empty),
        n if n > MAX_ORIGIN_BYTES => Err(BadOrigin::TooLong(n)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_of_one_to_255_bytes_are_accepted() {
        assert_eq!(check_origin(""), Err(BadOrigin::Empty));
        assert_eq!(check_origin("a"), Ok(()));
        assert_eq!(check_origin(&"é".repeat(100)), Ok(()));
        assert_eq!(check_origin(&"o".repeat(255)), Ok(()));
        assert_eq!(check_origin(&"o".repeat(256)), Err(BadOrigin::TooLong(256)));
    }

    #[test]
    fn the_stamp_codec_carries_the_longest_origin() {
        let e = crate::colvers::ColVersion {
            attnum: 1,
            revision: 1,
            xid: 1,
            origin: "o".repeat(MAX_ORIGIN_BYTES),
            ts: 0,
        };
        let bytes = crate::colvers::encode(std::slice::from_ref(&e)).unwrap();
        assert_eq!(crate::colvers::decode(&bytes), vec![e]);
    }
}
