//! Per-column change stamps, packed into one `bytea` column of a tracked
//! row, `sync_colmeta`.
//!
//! ```text
//!  sync_colmeta = entry*
//!  entry        = attnum u16 LE | revision i64 LE | xid i64 LE | flags_len u8 | [len u8] | [ts i64 LE] | origin bytes
//!                 flags_len: bit 7 = a ts follows; bits 0-6 = origin length (0-126),
//!                 or 127 with bit 15 of attnum set: the length is in the `len` byte (127-255)
//! ```
//!
//! The long form keeps every entry written before it readable: those never
//! carried more than 127 bytes of origin, and never an attnum with bit 15 set
//! (PostgreSQL has at most 1,600 columns), so the pair (127, bit 15) was
//! never written by the short form.
//!
//! - `revision`: the row's `sync_version` at which the column last changed;
//!   what the resolver compares with a writer's version.
//! - `xid`: the top-level xid stamp of that change; what
//!   `sync_changes_since` compares with `since`.
//! - `origin`: who made that change (`tributary.origin`); empty = local.
//! - `ts`: the hybrid-clock time of that change, stored only for tables with
//!   the `last_writer_wins` policy (0 = none).
//!
//! A column with no entry is unchanged since the row was created. Its stamp
//! is then the **creation entry** (attnum 0) when there is one, else
//! revision 1, the row's `sync_created_xid`, and a local origin. A row never
//! updated stores NULL; the first update of a row created by a non-local
//! origin adds the creation entry, since `sync_origin` is about to change.
//! Entries are keyed by attribute number, so adding or dropping a column
//! never shifts another column's entry.
//!
//! Packing matters: a tracked UPDATE is not HOT (the `sync_xid` index
//! changes), so every byte of the row is written to WAL again.
//!
//! This module is pure logic, with no pgrx, so it is tested with `#[test]`.

/// The attribute number of the creation entry.
pub const CREATION: u16 = 0;
const FIXED: usize = 2 + 8 + 8 + 1;
const HAS_TS: u8 = 0x80;
/// In `flags_len`: the origin's length is in the next byte (with [`LONG_ATTNUM`]).
const LONG_LEN: u8 = 0x7f;
/// In `attnum`: marks the long form, together with [`LONG_LEN`].
const LONG_ATTNUM: u16 = 0x8000;
/// The longest origin an entry can carry, in bytes: the one limit on peer
/// names, [`crate::tracking::MAX_ORIGIN_BYTES`].
pub const MAX_ORIGIN: usize = crate::tracking::MAX_ORIGIN_BYTES;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColVersion {
    pub attnum: u16,
    pub revision: i64,
    pub xid: i64,
    /// Empty means local.
    pub origin: String,
    /// Hybrid-clock time, 0 when not recorded.
    pub ts: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub struct OriginTooLong(pub usize);

/// Decodes the packed entries. A trailing partial entry (which is never
/// written) ends the decoding rather than being trusted.
pub fn decode(bytes: &[u8]) -> Vec<ColVersion> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= FIXED {
        let mut attnum = u16::from_le_bytes([rest[0], rest[1]]);
        let flags = rest[18];
        let (mut olen, mut head) = ((flags & !HAS_TS) as usize, FIXED);
        if olen == LONG_LEN as usize && attnum & LONG_ATTNUM != 0 {
            let Some(&len) = rest.get(FIXED) else { break };
            attnum &= !LONG_ATTNUM;
            olen = len as usize;
            head += 1;
        }
        let tslen = if flags & HAS_TS != 0 { 8 } else { 0 };
        if rest.len() < head + tslen + olen {
            break;
        }
        let ts = if tslen > 0 {
            i64::from_le_bytes(rest[head..head + 8].try_into().unwrap())
        } else {
            0
        };
        out.push(ColVersion {
            attnum,
            revision: i64::from_le_bytes(rest[2..10].try_into().unwrap()),
            xid: i64::from_le_bytes(rest[10..18].try_into().unwrap()),
            origin: String::from_utf8_lossy(&rest[head + tslen..head + tslen + olen]).into_owned(),
            ts,
        });
        rest = &rest[head + tslen + olen..];
    }
    out
}

pub fn encode(entries: &[ColVersion]) -> Result<Vec<u8>, OriginTooLong> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| FIXED + 8 + e.origin.len()).sum());
    for e in entries {
        let len = e.origin.len();
        if len > MAX_ORIGIN {
            return Err(OriginTooLong(len));
        }
        let long = len >= LONG_LEN as usize;
        let attnum = if long {
            e.attnum | LONG_ATTNUM
        } else {
            e.attnum
        };
        out.extend_from_slice(&attnum.to_le_bytes());
        out.extend_from_slice(&e.revision.to_le_bytes());
        out.extend_from_slice(&e.xid.to_le_bytes());
        let ts = if e.ts != 0 { HAS_TS } else { 0 };
        if long {
            out.push(LONG_LEN | ts);
            out.push(len as u8);
        } else {
            out.push(len as u8 | ts);
        }
        if e.ts != 0 {
            out.extend_from_slice(&e.ts.to_le_bytes());
        }
        out.extend_from_slice(e.origin.as_bytes());
    }
    Ok(out)
}

/// The entries after a change of the columns `changed` (attnums, any order)
/// at `revision` by `xid` from `origin`. Entries stay sorted by attnum.
/// Returns `None` when there is nothing to store.
pub fn bump(
    old: &[ColVersion],
    changed: &[u16],
    revision: i64,
    xid: i64,
    origin: &str,
    ts: i64,
) -> Option<Vec<ColVersion>> {
    if old.is_empty() && changed.is_empty() {
        return None;
    }
    let mut out: Vec<ColVersion> = old
        .iter()
        .filter(|e| !changed.contains(&e.attnum))
        .cloned()
        .collect();
    out.extend(changed.iter().map(|a| ColVersion {
        attnum: *a,
        revision,
        xid,
        origin: origin.to_string(),
        ts,
    }));
    out.sort_by_key(|e| e.attnum);
    out.dedup_by_key(|e| e.attnum);
    Some(out)
}

/// The stamp of column `attnum`: its entry, else the creation entry, else
/// revision 1 at `created_xid` by a local writer.
pub fn stamp_of<'a>(
    entries: &'a [ColVersion],
    attnum: u16,
    created_xid: i64,
) -> std::borrow::Cow<'a, ColVersion> {
    use std::borrow::Cow;
    entries
        .iter()
        .find(|e| e.attnum == attnum)
        .or_else(|| entries.iter().find(|e| e.attnum == CREATION))
        .map(Cow::Borrowed)
        .unwrap_or_else(|| {
            Cow::Owned(ColVersion {
                attnum,
                revision: 1,
                xid: created_xid,
                origin: String::new(),
                ts: 0,
            })
        })
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
        .filter(|(_, a)| {
            // A creation entry carries the creation xid as well.
            let e = entries.iter().find(|e| e.attnum == **a);
            e.map(|e| e.xid).unwrap_or(created_xid) >= since
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cv(attnum: u16, revision: i64, xid: i64, origin: &str) -> ColVersion {
        ColVersion {
            attnum,
            revision,
            xid,
            origin: origin.to_string(),
            ts: 0,
        }
    }

    #[test]
    fn encoding_round_trips_with_and_without_origin() {
        let e = vec![
            cv(0, 1, 5, "crm"),
            cv(1, 2, 700, ""),
            cv(3, 9, i64::MAX, "tab'le\"]"),
            cv(u16::MAX, i64::MIN, 0, "é"),
        ];
        let bytes = encode(&e).unwrap();
        assert_eq!(bytes.len(), 4 * 19 + 3 + 8 + 2);
        assert_eq!(decode(&bytes), e);
    }

    #[test]
    fn a_truncated_entry_is_ignored() {
        let mut bytes = encode(&[cv(2, 3, 4, "x")]).unwrap();
        bytes.extend_from_slice(&encode(&[cv(5, 6, 7, "long origin")]).unwrap()[..25]);
        assert_eq!(decode(&bytes), vec![cv(2, 3, 4, "x")]);
    }

    #[test]
    fn an_origin_longer_than_255_bytes_is_refused() {
        assert_eq!(
            encode(&[cv(1, 1, 1, &"o".repeat(256))]),
            Err(OriginTooLong(256))
        );
    }

    #[test]
    fn origins_of_127_to_255_bytes_round_trip_in_the_long_form() {
        for len in [126, 127, 128, 200, 255] {
            let mut e = vec![cv(7, 3, 9, &"o".repeat(len)), cv(1600, 2, 8, "x")];
            e[0].ts = 42;
            let bytes = encode(&e).unwrap();
            assert_eq!(decode(&bytes), e, "origin of {len} bytes");
        }
    }

    #[test]
    fn entries_written_in_the_short_form_with_127_bytes_still_decode() {
        // What the short form wrote before the long form existed.
        let mut bytes = vec![5, 0];
        bytes.extend_from_slice(&2i64.to_le_bytes());
        bytes.extend_from_slice(&3i64.to_le_bytes());
        bytes.push(127);
        bytes.extend_from_slice(&[b'a'; 127]);
        assert_eq!(decode(&bytes), vec![cv(5, 2, 3, &"a".repeat(127))]);
    }

    #[test]
    fn first_change_of_a_fresh_row_stores_only_the_changed_column() {
        assert_eq!(
            bump(&[], &[3], 2, 800, "erp", 0),
            Some(vec![cv(3, 2, 800, "erp")])
        );
    }

    #[test]
    fn no_change_on_a_fresh_row_stores_nothing() {
        assert_eq!(bump(&[], &[], 2, 800, "", 0), None);
    }

    #[test]
    fn unchanged_columns_keep_their_stamp_and_order_is_by_attnum() {
        let old = vec![cv(2, 3, 10, "a"), cv(5, 4, 11, "b")];
        let out = bump(&old, &[4, 2], 6, 20, "c", 0).unwrap();
        assert_eq!(
            out,
            vec![cv(2, 6, 20, "c"), cv(4, 6, 20, "c"), cv(5, 4, 11, "b")]
        );
    }

    #[test]
    fn stamp_falls_back_to_the_creation_entry_then_to_local_revision_one() {
        let e = [cv(0, 1, 7, "crm"), cv(2, 5, 50, "erp")];
        assert_eq!(*stamp_of(&e, 2, 7), cv(2, 5, 50, "erp"));
        assert_eq!(*stamp_of(&e, 3, 7), cv(0, 1, 7, "crm"));
        assert_eq!(*stamp_of(&[], 3, 7), cv(3, 1, 7, ""));
    }

    #[test]
    fn changed_since_xid_includes_the_window_start() {
        let e = [cv(2, 5, 50, ""), cv(3, 6, 60, "")];
        assert_eq!(changed_since_xid(&e, &[1, 2, 3], 50, 10), vec![1, 2]);
        assert_eq!(
            changed_since_xid(&e, &[1, 2, 3], 61, 10),
            Vec::<usize>::new()
        );
        assert_eq!(changed_since_xid(&e, &[1, 2, 3], 10, 10), vec![0, 1, 2]);
    }
}
