//! Per-column change versions, packed into one `bytea` column of a tracked
//! row, `sync_colmeta`.
//!
//! ```text
//!  sync_colmeta = entry*            one entry per column changed since the row was created
//!  entry        = attnum u16 LE | revision i64 LE | xid i64 LE     (18 bytes)
//! ```
//!
//! `revision` is the row's `sync_version` at which the column last changed
//! (what the resolver compares with a writer's base version); `xid` is the
//! top-level xid stamp of that change (what `sync_changes_since` compares
//! with `since`). A column with no entry is unchanged since the row was
//! created: revision 1 and the row's `sync_created_xid`. A freshly inserted
//! row stores NULL. Entries are keyed by attribute number, so adding or
//! dropping a column never shifts another column's entry.
//!
//! Packing matters: a tracked UPDATE is not HOT (the `sync_xid` index
//! changes), so every byte of the row is written to WAL again. Two
//! `bigint[]` arrays cost about 100 bytes a row; this costs 18 per changed
//! column.
//!
//! This module is pure logic, with no pgrx, so it is tested with `#[test]`.

pub const ENTRY: usize = 18;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColVersion {
    pub attnum: u16,
    pub revision: i64,
    pub xid: i64,
}

/// Decodes the packed entries. A trailing partial entry (which the trigger
/// never writes) is ignored rather than trusted.
pub fn decode(bytes: &[u8]) -> Vec<ColVersion> {
    bytes
        .chunks_exact(ENTRY)
        .map(|e| ColVersion {
            attnum: u16::from_le_bytes([e[0], e[1]]),
            revision: i64::from_le_bytes(e[2..10].try_into().unwrap()),
            xid: i64::from_le_bytes(e[10..18].try_into().unwrap()),
        })
        .collect()
}

pub fn encode(entries: &[ColVersion]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY);
    for e in entries {
        out.extend_from_slice(&e.attnum.to_le_bytes());
        out.extend_from_slice(&e.revision.to_le_bytes());
        out.extend_from_slice(&e.xid.to_le_bytes());
    }
    out
}

/// The entries after a change of the columns `changed` (attnums, any
/// order) at `revision` by `xid`. Entries stay sorted by attnum. Returns
/// `None` when there is nothing to store.
pub fn bump(
    old: &[ColVersion],
    changed: &[u16],
    revision: i64,
    xid: i64,
) -> Option<Vec<ColVersion>> {
    if old.is_empty() && changed.is_empty() {
        return None;
    }
    let mut out: Vec<ColVersion> = old
        .iter()
        .filter(|e| !changed.contains(&e.attnum))
        .copied()
        .collect();
    out.extend(changed.iter().map(|a| ColVersion {
        attnum: *a,
        revision,
        xid,
    }));
    out.sort_by_key(|e| e.attnum);
    out.dedup_by_key(|e| e.attnum);
    Some(out)
}

/// The (revision, xid) of column `attnum`, given the row's creation stamp.
pub fn version_of(entries: &[ColVersion], attnum: u16, created_xid: i64) -> (i64, i64) {
    entries
        .iter()
        .find(|e| e.attnum == attnum)
        .map(|e| (e.revision, e.xid))
        .unwrap_or((1, created_xid))
}

/// Indexes into `attnums` of the columns whose change xid is at least
/// `since`: the columns changed in a window starting at `since`.
pub fn changed_since_xid(
    entries: &[ColVersion],
    attnums: &[u16],
    since: i64,
    created_xid: i64,
) -> Vec<usize> {
    attnums
        .iter()
        .enumerate()
        .filter(|(_, a)| version_of(entries, **a, created_xid).1 >= since)
        .map(|(i, _)| i)
        .collect()
}

/// Indexes into `attnums` of the columns changed after revision `base`:
/// what the hub changed since the revision a writer edited.
pub fn changed_since_revision(entries: &[ColVersion], attnums: &[u16], base: i64) -> Vec<usize> {
    attnums
        .iter()
        .enumerate()
        .filter(|(_, a)| version_of(entries, **a, 0).0 > base)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cv(attnum: u16, revision: i64, xid: i64) -> ColVersion {
        ColVersion {
            attnum,
            revision,
            xid,
        }
    }

    #[test]
    fn encoding_round_trips() {
        let e = vec![cv(1, 2, 700), cv(3, 9, i64::MAX), cv(u16::MAX, i64::MIN, 0)];
        let bytes = encode(&e);
        assert_eq!(bytes.len(), 3 * ENTRY);
        assert_eq!(decode(&bytes), e);
    }

    #[test]
    fn a_truncated_entry_is_ignored() {
        let mut bytes = encode(&[cv(2, 3, 4)]);
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode(&bytes), vec![cv(2, 3, 4)]);
    }

    #[test]
    fn first_change_of_a_fresh_row_stores_only_the_changed_column() {
        assert_eq!(bump(&[], &[3], 2, 800), Some(vec![cv(3, 2, 800)]));
    }

    #[test]
    fn no_change_on_a_fresh_row_stores_nothing() {
        assert_eq!(bump(&[], &[], 2, 800), None);
    }

    #[test]
    fn unchanged_columns_keep_their_version_and_order_is_by_attnum() {
        let old = vec![cv(2, 3, 10), cv(5, 4, 11)];
        let out = bump(&old, &[4, 2], 6, 20).unwrap();
        assert_eq!(out, vec![cv(2, 6, 20), cv(4, 6, 20), cv(5, 4, 11)]);
    }

    #[test]
    fn a_no_op_update_keeps_the_entries() {
        let old = vec![cv(2, 3, 10)];
        assert_eq!(bump(&old, &[], 6, 20), Some(old.clone()));
    }

    #[test]
    fn version_of_falls_back_to_creation() {
        assert_eq!(version_of(&[cv(2, 5, 50)], 2, 7), (5, 50));
        assert_eq!(version_of(&[cv(2, 5, 50)], 3, 7), (1, 7));
    }

    #[test]
    fn changed_since_xid_includes_the_window_start() {
        let e = [cv(2, 5, 50), cv(3, 6, 60)];
        assert_eq!(changed_since_xid(&e, &[1, 2, 3], 50, 10), vec![1, 2]);
        assert_eq!(
            changed_since_xid(&e, &[1, 2, 3], 61, 10),
            Vec::<usize>::new()
        );
        assert_eq!(changed_since_xid(&e, &[1, 2, 3], 10, 10), vec![0, 1, 2]);
    }

    #[test]
    fn changed_since_revision_is_strict() {
        let e = [cv(2, 5, 50), cv(3, 6, 60)];
        assert_eq!(changed_since_revision(&e, &[1, 2, 3], 5), vec![2]);
        assert_eq!(changed_since_revision(&e, &[1, 2, 3], 1), vec![1, 2]);
        assert_eq!(changed_since_revision(&e, &[1, 2, 3], 0), vec![0, 1, 2]);
    }
}
