//! Phase 3, continued: foreign keys. A row whose parent row is missing is
//! not written: every change of its key in this batch is parked (DEFERRED,
//! in order, stored in tributary.pending by the execution unless
//! retrying), its key kept as loaded, and its conflicts not logged.

use super::decide::Decisions;
use super::load::Loaded;
use super::request::Request;
use super::{object_text, or_raise, sql, Map};
use pgrx::spi::{SpiClient, SpiHeapTupleData};
use tributary_core::resolver::{KeyState, Outcome};

/// A foreign key of the table (a row of `sql::FOREIGN_KEYS`).
struct ForeignKey {
    name: String,
    /// The referenced table, as regclass prints it, and its oid.
    parent: String,
    parent_oid: i64,
    cols: Vec<String>,
    refcols: Vec<String>,
}

impl ForeignKey {
    fn read(r: &SpiHeapTupleData<'_>) -> Self {
        ForeignKey {
            name: or_raise(r.get(1)).unwrap_or_default(),
            parent: or_raise(r.get(2)).unwrap_or_default(),
            parent_oid: or_raise(r.get(3)).unwrap_or_default(),
            cols: or_raise(r.get(4)).unwrap_or_default(),
            refcols: or_raise(r.get(5)).unwrap_or_default(),
        }
    }
}

/// A key held back: the parent table's oid, and why.
type Orphans = Map<String, (u32, String)>;

/// Parks the changes of the keys whose new row would miss its parent row.
pub fn orphans(client: &SpiClient<'_>, req: &Request, loaded: &Loaded, d: &mut Decisions) {
    let deferred = missing_parents(client, req, loaded, &d.after);
    if deferred.is_empty() {
        return;
    }
    let keys = &req.keys;
    for (i, key) in keys.of_change.iter().map(|k| &keys.text[*k]).enumerate() {
        let Some((parent, why)) = deferred.get(key) else {
            continue;
        };
        let out = &mut d.outcomes[i];
        out.outcome = Outcome::Deferred.as_str();
        out.row_version = None;
        out.detail = why.clone();
        // The change as it was sent (printed again only now: rare).
        let change = req.batch.change_text(i + 1);
        d.parked.push(
            serde_json::json!({"pk": key, "change": change, "parent": parent, "why": why})
                .to_string(),
        );
    }
    d.conflicts
        .retain(|c| !deferred.contains_key(&keys.text[keys.of_change[c.change]]));
    for (k, key) in keys.text.iter().enumerate() {
        if deferred.contains_key(key) {
            d.after[k] = loaded.state(k).cloned();
        }
    }
}

/// The keys whose new row would reference a parent row that does not
/// exist (in its table, or among this batch's rows for a self-reference).
/// Repeated until stable, since holding back a row can orphan its children
/// in the same batch.
fn missing_parents(
    client: &SpiClient<'_>,
    req: &Request,
    loaded: &Loaded,
    after: &[Option<KeyState>],
) -> Orphans {
    let fks: Vec<ForeignKey> = or_raise(client.select(sql::FOREIGN_KEYS, None, &[req.tbl.into()]))
        .map(|r| ForeignKey::read(&r))
        .collect();
    let mut deferred = Orphans::default();
    if fks.is_empty() {
        return deferred;
    }
    loop {
        let rows = rows_to_write(req, loaded, after, &deferred);
        if rows.is_empty() {
            return deferred;
        }
        let arg = format!("[{}]", rows.join(","));
        let mut found = false;
        for fk in &fks {
            let self_ref = fk.parent_oid as u32 == u32::from(req.tbl);
            let query =
                sql::missing_parents(&req.table.name, &fk.parent, &fk.cols, &fk.refcols, self_ref);
            for r in or_raise(client.select(&query, None, &[arg.clone().into()])) {
                let key: String = or_raise(r.get(1)).unwrap_or_default();
                let why = format!(
                    "parked: no row in {parent} for ({}) yet (constraint {name}); retried when {parent} changes",
                    fk.cols.join(", "),
                    parent = fk.parent,
                    name = fk.name
                );
                deferred.entry(key).or_insert((fk.parent_oid as u32, why));
                found = true;
            }
        }
        if !found {
            return deferred;
        }
    }
}

/// The live rows this batch would write but the held-back ones, as
/// {key, row} JSON objects.
fn rows_to_write(
    req: &Request,
    loaded: &Loaded,
    after: &[Option<KeyState>],
    deferred: &Orphans,
) -> Vec<String> {
    let keys = &req.keys.text;
    after
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
        .filter(|(i, s)| {
            s.alive && !deferred.contains_key(&keys[*i]) && loaded.state(*i) != Some(*s)
        })
        .map(|(i, s)| {
            let row = object_text(s.cells.iter().map(|(c, v)| (&**c, &*v.value)));
            format!(
                "{{\"key\": {}, \"row\": {row}}}",
                serde_json::Value::String(keys[i].clone())
            )
        })
        .collect()
}
