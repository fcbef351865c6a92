//! Phase 3: every change decided in batch order, in memory, by the pure
//! resolver (`tributary_core::resolver`). A key's later changes see its
//! earlier ones' effect. The custom policy calls the table's function for
//! the columns it must merge.

use super::load::Loaded;
use super::request::Request;
use super::{object_text, or_raise, raise, sql, Map, OutcomeRow};
use pgrx::spi::SpiClient;
use pgrx::PgSqlErrorCode;
use tributary_core::jsontext;
use tributary_core::resolver::{self, Cell, Change, Conflict, Decision, KeyState, Op, Stamp};

/// What the batch does.
pub struct Decisions {
    /// One per change, in batch order.
    pub outcomes: Vec<OutcomeRow>,
    /// Each key's state after the batch, by key number (None: no state).
    pub after: Vec<Option<KeyState>>,
    /// The conflicts to log, in batch order.
    pub conflicts: Vec<ConflictRow>,
    /// The changes parked for a missing parent row (park.rs), as
    /// {pk, change, parent, why} JSON objects, in batch order.
    pub parked: Vec<String>,
}

/// A conflict to log (a row of tributary.conflicts).
pub struct ConflictRow {
    /// The change's position in the batch (0-based).
    pub change: usize,
    pub pk: String,
    pub columns: Vec<String>,
    /// The hub's row and the change's values, as JSON objects.
    pub local: Option<String>,
    pub remote: Option<String>,
    pub local_version: Option<i64>,
    pub remote_version: i64,
    pub remote_op: &'static str,
    /// Which side holds the columns until someone resolves it.
    pub interim: &'static str,
    pub detail: String,
}

/// Decides every change, in order.
pub fn decide(client: &SpiClient<'_>, req: &Request, loaded: &Loaded) -> Decisions {
    let mut d = Decisions {
        outcomes: Vec::with_capacity(req.changes.len()),
        after: (0..req.keys.text.len()).map(|_| None).collect(),
        conflicts: Vec::new(),
        parked: Vec::new(),
    };
    for (i, change) in req.changes.iter().enumerate() {
        let k = req.keys.of_change[i];
        let before = d.after[k].as_ref().or_else(|| loaded.state(k));
        check_claim(req, i, before, change);
        let mut decision = resolver::resolve(before, change, &req.prio);
        if !decision.custom.is_empty() {
            merge_with_user_function(client, req, before, change, &mut decision);
        }
        if let Some(c) = &decision.conflict {
            let pk = req.keys.text[k].clone();
            d.conflicts
                .push(conflict_row(i, pk, before, change, c, &decision.detail));
        }
        d.outcomes.push(OutcomeRow {
            key: k,
            outcome: decision.outcome.as_str(),
            row_version: Some(decision.state.version),
            conflict_id: None,
            detail: std::mem::take(&mut decision.detail),
        });
        d.after[k] = Some(decision.state);
    }
    d
}

/// A peer edits a revision it got from the hub, so its change claims at
/// most one above what the hub holds for the key (its row or tombstone; 0
/// for a key it never had). A larger claim would win every later conflict
/// by revision alone: it is refused (22003, the revision is out of range),
/// the whole batch with it.
fn check_claim(req: &Request, i: usize, before: Option<&KeyState>, change: &Change) {
    let held = before.map_or(0, |b| b.version);
    if change.version <= held.saturating_add(1) {
        return;
    }
    let pk = &req.keys.text[req.keys.of_change[i]];
    raise(
        PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
        &format!(
            "change #{} claims revision {} of a key the hub holds at revision {held}",
            i + 1,
            change.version
        ),
        format!(
            "Key {pk} of {}: a change is made on a revision the hub handed out, so it claims at most {}.",
            req.table.name,
            held + 1
        ),
        "Send \"version\": the sync_version the edit was made on + 1 (1 for a new row); \
         a peer that lost track of it resyncs the row first.",
    );
}

fn conflict_row(
    change_no: usize,
    pk: String,
    before: Option<&KeyState>,
    change: &Change,
    c: &Conflict,
    detail: &str,
) -> ConflictRow {
    ConflictRow {
        change: change_no,
        pk,
        columns: c.columns.clone(),
        local: before
            .filter(|b| b.alive)
            .map(|b| object_text(b.cells.iter().map(|(k, c)| (&**k, &*c.value)))),
        remote: (change.op != Op::Delete)
            .then(|| object_text(change.values.iter().map(|(k, v)| (&**k, &**v)))),
        local_version: before.map(|b| b.version),
        remote_version: change.version,
        remote_op: match change.op {
            Op::Insert => "I",
            Op::Update => "U",
            Op::Delete => "D",
        },
        interim: if c.remote_won { "remote" } else { "local" },
        detail: detail.to_string(),
    }
}

/// The custom policy: the table's function `(local, remote, base) → jsonb`
/// merges the overlapping columns. Its result is typed through the table,
/// like any incoming value, and stamped as the incoming revision; a NULL
/// result keeps the hub's values.
fn merge_with_user_function(
    client: &SpiClient<'_>,
    req: &Request,
    before: Option<&KeyState>,
    change: &Change,
    d: &mut Decision,
) {
    let Some(func) = req.custom_fn.as_deref() else {
        return;
    };
    let local = before
        .map(|b| object_text(b.cells.iter().map(|(k, c)| (&**k, &*c.value))))
        .unwrap_or_else(|| "{}".into());
    let remote = object_text(change.values.iter().map(|(k, v)| (&**k, &**v)));
    // As the table's owner, who owns the function (request::load_priorities):
    // a resolver cannot borrow the privileges of whoever calls sync_apply.
    let acting = crate::privilege::act_as(crate::privilege::rel_owner(req.tbl));
    let merged: Option<String> = or_raise(client.select(
        &sql::merge(&req.table.name, func),
        None,
        &[local.into(), remote.into()],
    ))
    .first()
    .get(1)
    .unwrap_or(None);
    drop(acting);
    let Some(merged) = merged else {
        d.detail = format!("custom: {func} returned NULL: the hub's values are kept");
        return;
    };
    let values: Map<String, &str> = jsontext::split_object(&merged)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v))
        .collect();
    let stamp = Stamp {
        revision: change.version,
        origin: change.origin.clone(),
        ts: change.ts,
    };
    for col in &d.custom {
        if let Some(v) = values.get(col) {
            d.state.cells.insert(
                col.as_str().into(),
                Cell {
                    value: (*v).into(),
                    stamp: stamp.clone(),
                },
            );
        }
    }
    d.state.version = d.state.version.max(change.version);
    d.state.origin = change.origin.clone();
    d.changed = before != Some(&d.state);
    d.detail = format!("custom: {func} merged {}", d.custom.join(", "));
}
