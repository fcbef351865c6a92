//! Phase 4: what to write, for the keys whose state changed, in key order
//! (the batch's order of first appearance), keeping the resolver's stamps.
//!
//! ```text
//!  alive, had a live row ──> updates     (by the locked row's ctid)
//!  alive, had none ────────> inserts
//!  dead ───────────────────> tombstones  (image and stamps), and deletes
//!                                        when it had a live row
//! ```
//!
//! Live rows go in as typed columns: their input text, one text array per
//! column, cast by the statement; then sync_version, sync_origin and
//! sync_colmeta (the packed column stamps; the stamps this batch changed
//! carry the transaction's xid).

use super::decide::{ConflictRow, Decisions};
use super::load::{Loaded, Stored};
use super::params::{self, TextCol};
use super::request::Request;
use super::{object_text, Map, OutcomeRow};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use tributary_core::colvers::{self, ColVersion};
use tributary_core::resolver::{KeyState, Stamp, Text};

/// The batch's writes, and the outcomes to return.
pub struct WritePlan {
    /// The transaction's xid, stamped on what the batch writes.
    pub xid: i64,
    /// The parked changes to store, as a JSON array (None when there are
    /// none, or when retrying: they are stored already).
    pub parked: Option<String>,
    pub inserts: Rows,
    pub updates: Rows,
    /// The keys of the live rows to delete, as jsonb texts.
    pub deletes: Vec<String>,
    /// The tombstones to upsert, as JSON objects (sql::STORE_TOMBSTONES).
    pub tombstones: Vec<String>,
    pub conflicts: Vec<ConflictRow>,
    pub outcomes: Vec<OutcomeRow>,
}

/// Rows to write, column by column: the input text of each column, then
/// sync_version, sync_origin and sync_colmeta.
pub struct Rows {
    pub cols: Vec<TextCol>,
    /// For updates: the address of each row.
    pub ctid: Vec<Option<String>>,
    version: Vec<i64>,
    origin: Vec<String>,
    colmeta: Vec<Vec<u8>>,
}

impl Rows {
    fn new(ncols: usize) -> Rows {
        Rows {
            cols: vec![TextCol::default(); ncols],
            ctid: Vec::new(),
            version: Vec::new(),
            origin: Vec::new(),
            colmeta: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.version.len()
    }

    pub fn is_empty(&self) -> bool {
        self.version.is_empty()
    }

    /// The statement's parameters: the arrays, then the xid.
    pub fn args(&self, xid: i64) -> Vec<DatumWithOid<'static>> {
        let mut out = params::columns(&self.cols);
        out.push(params::int8_array(self.version.iter().map(|v| Some(*v))));
        out.push(params::text_array(
            self.origin.iter().map(|o| Some(o.as_str())),
        ));
        out.push(params::bytea_array(
            self.colmeta.iter().map(|m| Some(m.as_slice())),
        ));
        out.push(xid.into());
        out
    }
}

/// Plans the writes of the keys whose state the batch changed.
pub fn plan(req: &Request, loaded: &Loaded, d: Decisions) -> WritePlan {
    let ncols = req.table.columns.len();
    let mut plan = WritePlan {
        xid: unsafe { pg_sys::GetTopFullTransactionId() }.value as i64,
        parked: (!req.retrying && !d.parked.is_empty())
            .then(|| format!("[{}]", d.parked.join(","))),
        inserts: Rows::new(ncols),
        updates: Rows::new(ncols),
        deletes: Vec::new(),
        tombstones: Vec::new(),
        conflicts: d.conflicts,
        outcomes: d.outcomes,
    };
    for (k, state) in d.after.iter().enumerate() {
        let Some(state) = state else { continue };
        let before = loaded.get(k);
        if before.map(|b| &b.state) == Some(state) {
            continue;
        }
        if state.alive {
            plan.push_row(req, state, before);
        } else {
            plan.push_tombstone(req, &req.keys.text[k], state, before);
        }
    }
    plan
}

impl WritePlan {
    /// A live row: an update of the locked row, or an insert.
    fn push_row(&mut self, req: &Request, state: &KeyState, before: Option<&Stored>) {
        let rows = match before.filter(|b| b.state.alive) {
            Some(b) => {
                self.updates.ctid.push(b.ctid.clone());
                &mut self.updates
            }
            None => &mut self.inserts,
        };
        for (i, c) in req.table.columns.iter().enumerate() {
            let v = state
                .cells
                .get(c.name.as_str())
                .map(|c| &*c.value)
                .unwrap_or("null");
            rows.cols[i].push_input(&req.table, i, v);
        }
        rows.version.push(state.version);
        rows.origin.push(state.origin.to_string());
        rows.colmeta
            .push(colmeta_for(&req.attnum, state, before, self.xid));
    }

    /// A dead key: its tombstone, and the delete of its live row.
    fn push_tombstone(
        &mut self,
        req: &Request,
        key: &str,
        state: &KeyState,
        before: Option<&Stored>,
    ) {
        let cells = object_text(state.cells.iter().map(|(k, c)| (&**k, &*c.value)));
        let colmeta = hex(&colmeta_for(&req.attnum, state, before, 0));
        if before.is_some_and(|b| b.state.alive) {
            self.deletes.push(key.to_string());
        }
        let del = state.deleted.clone().unwrap_or(Stamp {
            revision: state.version,
            origin: state.origin.clone(),
            ts: 0,
        });
        self.tombstones.push(
            serde_json::json!({"pk": "", "data": "", "v": del.revision, "o": &*del.origin, "ts": del.ts, "m": colmeta,
                               "ro": &*state.origin, "cx": before.map(|b| b.created_xid)})
                .to_string()
                .replacen("\"pk\":\"\"", &format!("\"pk\":{key}"), 1)
                .replacen("\"data\":\"\"", &format!("\"data\":{cells}"), 1),
        );
    }
}

/// The packed stamps to store for a state: an entry per column, with `xid`
/// where the stamp changed in this batch (0 for a tombstone). A creation
/// entry at revision 0 makes the columns the state never set rank below
/// any write.
fn colmeta_for(
    attnum: &Map<Text, u16>,
    state: &KeyState,
    before: Option<&Stored>,
    xid: i64,
) -> Vec<u8> {
    let mut entries = vec![ColVersion {
        attnum: colvers::CREATION,
        revision: 0,
        xid: 0,
        origin: String::new(),
        ts: 0,
    }];
    for (col, cell) in &state.cells {
        let Some(a) = attnum.get(col) else { continue };
        let kept = before.and_then(|b| {
            (b.state.cells.get(col).map(|c| &c.stamp) == Some(&cell.stamp))
                .then(|| b.xids.iter().find(|(c, _)| c == col).map(|(_, x)| *x))
                .flatten()
        });
        entries.push(ColVersion {
            attnum: *a,
            revision: cell.stamp.revision,
            xid: kept.unwrap_or(xid),
            origin: cell.stamp.origin.to_string(),
            ts: cell.stamp.ts,
        });
    }
    entries.sort_by_key(|e| e.attnum);
    match colvers::encode(&entries) {
        Ok(b) => b,
        Err(e) => pgrx::error!(
            "tributary: an origin of {} bytes is too long (at most {})",
            e.0,
            tributary_core::tracking::MAX_ORIGIN_BYTES
        ),
    }
}

/// bytea's hex input text.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}
