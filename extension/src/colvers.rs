//! Per-column change versions, kept in two `bigint[]` columns of a tracked row.
//!
//! ```text
//!  sync_colvers[attnum] = the row revision (sync_version) at which the column last changed
//!  sync_colxids[attnum] = the top-level xid stamp of the transaction that last changed it
//! ```
//!
//! Both arrays are indexed by attribute number, so adding or dropping a
//! column never shifts another column's entry. A NULL array, or a missing
//! or NULL element, means "unchanged since the row was created": revision 1
//! and the row's `sync_created_xid`. A freshly inserted row therefore stores
//! no arrays at all.
//!
//! This module is pure logic, with no pgrx, so it is tested with `#[test]`.

/// Returns the per-column array after a change.
///
/// - `old`: the stored array (element `i` is attnum `i + 1`); may be shorter
///   than `natts` when columns were added since.
/// - `changed`: a mask of length `natts`, `true` where the column changed.
/// - `value`: what a changed column gets (the new revision, or the xid).
///
/// Entries of unchanged columns are copied; columns past the end of `old`
/// stay NULL (their default). Returns `None` when nothing would be stored,
/// so that rows whose columns never changed keep a NULL array.
pub fn bump(old: &[Option<i64>], changed: &[bool], value: i64) -> Option<Vec<Option<i64>>> {
    if old.is_empty() && !changed.iter().any(|c| *c) {
        return None;
    }
    let len = changed.len().max(old.len());
    let mut out = Vec::with_capacity(len);
    for i in 0..len {
        if changed.get(i).copied().unwrap_or(false) {
            out.push(Some(value));
        } else {
            out.push(old.get(i).copied().flatten());
        }
    }
    Some(out)
}

/// The version of column `attnum` (1-based), given the stored array and the
/// default for columns that never changed.
pub fn version_of(stored: &[Option<i64>], attnum: usize, default: i64) -> i64 {
    attnum
        .checked_sub(1)
        .and_then(|i| stored.get(i).copied().flatten())
        .unwrap_or(default)
}

/// Columns (1-based attnums, among `candidates`) whose version is strictly
/// greater than `base`: what changed since a given revision or xid.
pub fn changed_since(
    stored: &[Option<i64>],
    candidates: &[usize],
    base: i64,
    default: i64,
) -> Vec<usize> {
    candidates
        .iter()
        .copied()
        .filter(|a| version_of(stored, *a, default) > base)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_change_of_a_fresh_row_stores_only_the_changed_column() {
        let out = bump(&[], &[false, true, false], 2).unwrap();
        assert_eq!(out, vec![None, Some(2), None]);
    }

    #[test]
    fn no_change_on_a_fresh_row_keeps_the_array_null() {
        assert_eq!(bump(&[], &[false, false], 2), None);
    }

    #[test]
    fn unchanged_columns_keep_their_version() {
        let out = bump(&[Some(3), None, Some(2)], &[false, true, false], 4).unwrap();
        assert_eq!(out, vec![Some(3), Some(4), Some(2)]);
    }

    #[test]
    fn an_added_column_extends_the_array() {
        let out = bump(&[Some(3)], &[false, false, true], 5).unwrap();
        assert_eq!(out, vec![Some(3), None, Some(5)]);
    }

    #[test]
    fn a_longer_stored_array_is_not_truncated() {
        let out = bump(&[Some(3), Some(4), Some(2)], &[true], 5).unwrap();
        assert_eq!(out, vec![Some(5), Some(4), Some(2)]);
    }

    #[test]
    fn version_of_falls_back_to_the_default() {
        assert_eq!(version_of(&[], 2, 1), 1);
        assert_eq!(version_of(&[None, Some(7)], 2, 1), 7);
        assert_eq!(version_of(&[None, Some(7)], 0, 1), 1);
    }

    #[test]
    fn changed_since_compares_strictly() {
        let stored = [Some(2), None, Some(5)];
        assert_eq!(changed_since(&stored, &[1, 2, 3], 2, 1), vec![3]);
        assert_eq!(changed_since(&stored, &[1, 2, 3], 1, 1), vec![1, 3]);
        assert_eq!(changed_since(&stored, &[1, 2, 3], 0, 1), vec![1, 2, 3]);
    }
}
