//! Phase 2: the hub's state of every key of the batch, under the table's
//! apply lock (one applier per table at a time: decisions read the rows
//! they write).
//!
//! ```text
//!  live rows   FOR UPDATE, found by their key values cast from text arrays,
//!              with their ctid (the UPDATE finds them by it)
//!  tombstones  FOR UPDATE, when the table has any: a deleted key's image and
//!              stamps; with a live row, only its delete stamp counts
//! ```

use super::request::Request;
use super::{or_raise, params, sql, Clock, Map};
use pgrx::spi::{SpiClient, SpiHeapTupleData};
use std::collections::BTreeMap;
use tributary_core::colvers::{self, ColVersion};
use tributary_core::jsontext;
use tributary_core::resolver::{Cell, KeyState, Stamp, Text};

/// Each key's stored state, by key number (None: never seen).
pub struct Loaded {
    pub keys: Vec<Option<Stored>>,
}

impl Loaded {
    pub fn get(&self, k: usize) -> Option<&Stored> {
        self.keys[k].as_ref()
    }

    pub fn state(&self, k: usize) -> Option<&KeyState> {
        self.get(k).map(|s| &s.state)
    }
}

/// A key's live row or tombstone, as the resolver sees it.
pub struct Stored {
    pub state: KeyState,
    /// The locked row's address, for its UPDATE (live rows only).
    pub ctid: Option<String>,
    /// The xid of each column's current stamp, to keep it when unchanged.
    pub xids: Vec<(Text, i64)>,
    pub created_xid: i64,
}

/// A row of `sql::live_rows`.
struct LiveRow<'a> {
    version: i64,
    origin: String,
    colmeta: Option<Vec<u8>>,
    created_xid: i64,
    /// The row as row_json prints it.
    row: &'a str,
    ctid: Option<String>,
}

impl LiveRow<'_> {
    fn read(r: &SpiHeapTupleData<'_>) -> Self {
        LiveRow {
            version: or_raise(r.get(1)).unwrap_or(1),
            origin: or_raise(r.get(2)).unwrap_or_default(),
            colmeta: or_raise(r.get(3)),
            created_xid: or_raise(r.get(4)).unwrap_or(0),
            row: or_raise(r.get(5)).unwrap_or_default(),
            ctid: or_raise(r.get(6)),
        }
    }
}

/// A row of `sql::tombstones`.
struct TombstoneRow {
    /// The key as jsonb text.
    key: String,
    version: i64,
    /// The delete's origin, and its hybrid-clock time.
    origin: String,
    ts: i64,
    colmeta: Option<Vec<u8>>,
    /// The origin of the row's last write, and its creation's xid.
    row_origin: String,
    created_xid: i64,
    /// The row's last image, as row_json prints it.
    image: String,
}

impl TombstoneRow {
    fn read(r: &SpiHeapTupleData<'_>) -> Self {
        TombstoneRow {
            key: or_raise(r.get(1)).unwrap_or_default(),
            version: or_raise(r.get(2)).unwrap_or(1),
            origin: or_raise(r.get(3)).unwrap_or_default(),
            colmeta: or_raise(r.get(4)),
            row_origin: or_raise(r.get(5)).unwrap_or_default(),
            created_xid: or_raise(r.get(6)).unwrap_or(0),
            image: or_raise(r.get(7)).unwrap_or_default(),
            ts: or_raise(r.get(8)).unwrap_or(0),
        }
    }
}

/// Takes the apply lock, then loads every key's live row and tombstone.
pub fn load(client: &mut SpiClient<'_>, req: &Request, clock: &Clock) -> Loaded {
    or_raise(client.update(sql::APPLY_LOCK, None, &[req.tbl.into()]));
    let index: Map<&str, usize> = req
        .keys
        .text
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut loaded = Loaded {
        keys: (0..req.keys.text.len()).map(|_| None).collect(),
    };
    let live = or_raise(client.select(
        &sql::live_rows(&req.table),
        None,
        &params::columns(&req.keys.columns),
    ));
    for r in live {
        let row = LiveRow::read(&r);
        let entries = row.colmeta.map(|m| colvers::decode(&m));
        let mut s = Stored {
            ctid: row.ctid,
            state: KeyState {
                alive: true,
                version: row.version,
                cells: BTreeMap::new(),
                deleted: None,
                origin: row.origin.into(),
            },
            xids: Vec::new(),
            created_xid: row.created_xid,
        };
        let creator = s.state.origin.clone();
        s.fill(&req.attnum, row.row, entries.as_deref(), &creator);
        let key = req
            .table
            .key_text(|c| s.state.cells.get(c).map(|v| &*v.value));
        if let Some(k) = index.get(key.as_str()) {
            loaded.keys[*k] = Some(s);
        }
    }
    clock.tick("live");
    tombstones(client, req, &index, &mut loaded);
    loaded
}

/// The keys' tombstones, when the table has any.
fn tombstones(
    client: &SpiClient<'_>,
    req: &Request,
    index: &Map<&str, usize>,
    loaded: &mut Loaded,
) {
    let any: bool = or_raise(
        or_raise(client.select(sql::ANY_TOMBSTONES, None, &[req.tbl.into()]))
            .first()
            .get(1),
    )
    .unwrap_or(false);
    if !any {
        return;
    }
    let args = [req.keys.text.clone().into(), req.tbl.into()];
    crate::privilege::as_state_owner(|| {
        or_raise(client.select(sql::LOCK_TOMBSTONES, None, &args));
    });
    for r in or_raise(client.select(&sql::tombstones(&req.table.name), None, &args)) {
        let row = TombstoneRow::read(&r);
        let deleted = Stamp {
            revision: row.version,
            origin: row.origin.as_str().into(),
            ts: row.ts,
        };
        let Some(&k) = index.get(row.key.as_str()) else {
            continue;
        };
        if let Some(s) = loaded.keys[k].as_mut() {
            // A live row and a tombstone: the key was re-created after a
            // delete; the delete still counts for ordering.
            s.state.deleted = Some(deleted);
            continue;
        }
        let entries = row.colmeta.map(|m| colvers::decode(&m));
        let mut s = Stored {
            ctid: None,
            state: KeyState {
                alive: false,
                version: row.version,
                cells: BTreeMap::new(),
                deleted: Some(deleted),
                origin: row.origin.into(),
            },
            xids: Vec::new(),
            created_xid: row.created_xid,
        };
        let creator = Text::from(row.row_origin);
        s.fill(&req.attnum, &row.image, entries.as_deref(), &creator);
        loaded.keys[k] = Some(s);
    }
}

impl Stored {
    /// The key's cells from a row's JSON text and its packed stamps.
    fn fill(
        &mut self,
        attnum: &Map<Text, u16>,
        row: &str,
        entries: Option<&[ColVersion]>,
        creator: &Text,
    ) {
        for (col, value) in jsontext::split_object(row).unwrap_or_default() {
            let (col, a) = match attnum.get_key_value(&*col) {
                Some((k, a)) => (k.clone(), *a),
                None => (Text::from(&*col), 0),
            };
            let (stamp, xid) = stamps(entries, creator, self.created_xid, a);
            self.xids.push((col.clone(), xid));
            self.state.cells.insert(
                col,
                Cell {
                    value: value.into(),
                    stamp,
                },
            );
        }
    }
}

/// A column's stamp and the xid that set it.
fn stamps(
    entries: Option<&[ColVersion]>,
    creator: &Text,
    created_xid: i64,
    attnum: u16,
) -> (Stamp, i64) {
    match entries {
        // Never updated: every column was set by the creator at revision 1.
        None => (
            Stamp {
                revision: 1,
                origin: creator.clone(),
                ts: 0,
            },
            created_xid,
        ),
        Some(e) => {
            let s = colvers::stamp_of(e, attnum, created_xid);
            (
                Stamp {
                    revision: s.revision,
                    origin: if *s.origin == **creator {
                        creator.clone()
                    } else {
                        s.origin.as_str().into()
                    },
                    ts: s.ts,
                },
                s.xid,
            )
        }
    }
}
