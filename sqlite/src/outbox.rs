//! The outbox: the app's own edits, captured by triggers, sent to the hub
//! by a pull, and cleared once the hub has them.
//!
//! ```text
//!  app INSERT/UPDATE/DELETE ──triggers──> _tributary_outbox: one row per key (tbl, pk)
//!        op collapses: I then U = I;  I then D = D (sent, a delete of nothing);  D then I = U
//!        data = the row image now, changed = the columns an update set (merged),
//!        base = the hub revision the edit was made on, gen = +1 per edit
//!  pull: read (oldest first) ──> hub ──> finish: delete the rows whose gen did not move,
//!        record what the app must see in _tributary_errors
//! ```
//!
//! Writes a sync makes itself (`_tributary_ctl.applying = 1`) are not captured.

use crate::encoding::json_object_expr;
use crate::{ColumnDef, Result};
use rusqlite::{params, Connection};
use tributary_core::quote::{ident, literal};

/// The name of one capture trigger of the file table `plain`: `kind` is
/// `i` (insert), `u` (update), `k` (update of the key) or `d` (delete).
fn trigger_name(kind: &str, plain: &str) -> String {
    ident(&format!("_tributary_{kind}_{plain}"))
}

/// The DDL that drops the capture triggers of the file table `plain`
/// (idempotent).
pub fn drop_triggers(plain: &str) -> String {
    ["i", "u", "k", "d"]
        .iter()
        .map(|k| format!("DROP TRIGGER IF EXISTS {};\n", trigger_name(k, plain)))
        .collect()
}

/// The capture triggers of the file table `plain` (DDL, idempotent).
/// Empty for a table without a key.
pub fn triggers(plain: &str, cols: &[&ColumnDef]) -> String {
    let keys: Vec<&ColumnDef> = cols.iter().copied().filter(|c| c.key).collect();
    if keys.is_empty() {
        return String::new();
    }
    let t = literal(plain);
    let tq = ident(plain);
    let name = |k: &str| trigger_name(k, plain);
    let pk = |r: &str| json_object_expr(r, &keys);
    let data = |r: &str| json_object_expr(r, cols);
    let base = |r: &str| {
        format!(
            "(SELECT version FROM _tributary_versions WHERE tbl = {t} AND pk = {})",
            pk(r)
        )
    };
    let same_key: Vec<String> = keys
        .iter()
        .map(|k| format!("OLD.{0} IS NEW.{0}", ident(&k.name)))
        .collect();
    let same_key = same_key.join(" AND ");
    let changed = changed_expr(cols);
    let when = "(SELECT applying FROM _tributary_ctl) = 0";
    let upsert_i = |r: &str| {
        format!(
            "INSERT INTO _tributary_outbox (tbl, pk, op, data, changed, base) VALUES ({t}, {}, 'I', {}, NULL, {})
               ON CONFLICT (tbl, pk) DO UPDATE SET op = CASE WHEN _tributary_outbox.op = 'D' THEN 'U' ELSE 'I' END,
                 data = excluded.data, changed = NULL, gen = _tributary_outbox.gen + 1, at = excluded.at;",
            pk(r), data(r), base(r)
        )
    };
    let upsert_d = |r: &str| {
        format!(
            "INSERT INTO _tributary_outbox (tbl, pk, op, data, changed, base) VALUES ({t}, {}, 'D', NULL, NULL, {})
               ON CONFLICT (tbl, pk) DO UPDATE SET op = 'D', data = NULL, changed = NULL,
                 gen = _tributary_outbox.gen + 1, at = excluded.at;",
            pk(r), base(r)
        )
    };
    format!(
        "{drop}
CREATE TRIGGER {i} AFTER INSERT ON {tq} WHEN {when} BEGIN {ins} END;
CREATE TRIGGER {u} AFTER UPDATE ON {tq} WHEN {when} AND {same_key} BEGIN
  INSERT INTO _tributary_outbox (tbl, pk, op, data, changed, base) VALUES ({t}, {pk_new}, 'U', {data_new}, {changed}, {base_new})
    ON CONFLICT (tbl, pk) DO UPDATE SET
      op = CASE WHEN _tributary_outbox.op = 'I' THEN 'I' ELSE 'U' END,
      data = excluded.data,
      changed = CASE WHEN _tributary_outbox.op = 'U' THEN
        (SELECT json_group_array(value) FROM (SELECT value FROM json_each(_tributary_outbox.changed)
                                              UNION SELECT value FROM json_each(excluded.changed)))
        ELSE NULL END,
      gen = _tributary_outbox.gen + 1, at = excluded.at;
END;
CREATE TRIGGER {k} AFTER UPDATE ON {tq} WHEN {when} AND NOT ({same_key}) BEGIN {del_old} {ins} END;
CREATE TRIGGER {d} AFTER DELETE ON {tq} WHEN {when} BEGIN {del_old} END;",
        drop = drop_triggers(plain),
        i = name("i"),
        u = name("u"),
        k = name("k"),
        d = name("d"),
        ins = upsert_i("NEW"),
        del_old = upsert_d("OLD"),
        pk_new = pk("NEW"),
        data_new = data("NEW"),
        base_new = base("NEW"),
    )
}

/// The JSON array of the non-key columns an update changed.
fn changed_expr(cols: &[&ColumnDef]) -> String {
    let changed: Vec<String> = cols
        .iter()
        .filter(|c| !c.key)
        .map(|c| {
            format!(
                "SELECT {} AS c WHERE OLD.{1} IS NOT NEW.{1}",
                literal(&c.name),
                ident(&c.name)
            )
        })
        .collect();
    if changed.is_empty() {
        "json_array()".to_string()
    } else {
        format!(
            "(SELECT json_group_array(c) FROM ({}))",
            changed.join(" UNION ALL ")
        )
    }
}

/// One captured edit, as read from the outbox.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The file table.
    pub tbl: String,
    /// The hub table it maps to, as recorded in `_tributary_tables`
    /// (quoted).
    pub hub: String,
    pub pk: String,
    pub op: String,
    pub data: Option<String>,
    pub changed: Option<String>,
    /// The hub revision the edit was made on (None: a row the hub never sent).
    pub base: Option<i64>,
    pub gen: i64,
    /// When the edit was made, µs since the Unix epoch (the hybrid clock).
    pub ts: i64,
}

impl Entry {
    /// The edit as a change of `sync_apply`'s format: the row image, the
    /// columns an update set, the revision after its base, and when it was
    /// made. The worker's pull and the edge client's push send this.
    pub fn change(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("op".into(), self.op.clone().into());
        m.insert(
            "pk".into(),
            serde_json::from_str(&self.pk).unwrap_or(serde_json::Value::Null),
        );
        if let Some(d) = &self.data {
            m.insert(
                "data".into(),
                serde_json::from_str(d).unwrap_or(serde_json::Value::Null),
            );
        }
        if let Some(ch) = self.changed.as_deref().filter(|_| self.op == "U") {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(ch) {
                m.insert("changed".into(), v);
            }
        }
        m.insert("version".into(), (self.base.unwrap_or(0) + 1).into());
        m.insert("ts".into(), self.ts.into());
        serde_json::Value::Object(m)
    }
}

/// The oldest `limit` edits. A file without the outbox yet (before its
/// first sync) has none.
pub fn read(conn: &Connection, limit: usize) -> Result<Vec<Entry>> {
    if crate::schema::version(conn)? == 0 {
        return Ok(vec![]);
    }
    let mut st = conn.prepare(
        "SELECT o.tbl, t.hub, o.pk, o.op, o.data, o.changed, o.base, o.gen,
                CAST((julianday(o.at) - 2440587.5) * 86400000000 AS INTEGER)
           FROM _tributary_outbox o JOIN _tributary_tables t ON t.tbl = o.tbl
          ORDER BY o.seq LIMIT ?1",
    )?;
    let rows = st.query_map([limit as i64], |r| {
        Ok(Entry {
            tbl: r.get(0)?,
            hub: r.get(1)?,
            pk: r.get(2)?,
            op: r.get(3)?,
            data: r.get(4)?,
            changed: r.get(5)?,
            base: r.get(6)?,
            gen: r.get(7)?,
            ts: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What the app must be told about one sent edit.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: String,
    pub detail: Option<String>,
    /// The hub's row now, as JSON.
    pub hub_row: Option<String>,
    pub conflict_id: Option<i64>,
}

/// One sent edit and what came of it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub entry: Entry,
    /// What the app must be told, if anything.
    pub report: Option<Report>,
    /// The key's hub revision after the edit, when the hub took it (see
    /// [`taken`]).
    pub taken: Option<i64>,
}

/// The key's hub revision after an edit the hub took as the row's next
/// state (`NEW_RECORD`, `VERSION_WIN`, `FIELD_MERGE`): an edit the app made
/// on top of it while it was in flight is made on that revision. None for
/// other outcomes (that edit is then as concurrent as the one sent was).
pub fn taken(outcome: &str, row_version: Option<i64>) -> Option<i64> {
    use tributary_core::resolver::Outcome as L;
    matches!(
        L::parse(outcome),
        Some(L::NewRecord | L::VersionWin | L::FieldMerge)
    )
    .then_some(row_version)
    .flatten()
}

/// After the hub committed: removes each sent edit unless it was edited
/// again since (its gen moved), and records the reports, in one transaction.
/// An edit made again since, on an edit the hub took, now has the revision
/// the hub gave that one as its base: it is that edit's successor, not a
/// change concurrent with it (which the hub would see as a conflict of the
/// peer with itself).
pub fn finish(conn: &mut Connection, sent: &[Sent]) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for Sent {
        entry: e,
        report,
        taken,
    } in sent
    {
        let gone = tx.execute(
            "DELETE FROM _tributary_outbox WHERE tbl = ?1 AND pk = ?2 AND gen = ?3",
            params![e.tbl, e.pk, e.gen],
        )?;
        if let (0, Some(r)) = (gone, taken) {
            tx.execute(
                "UPDATE _tributary_outbox SET base = ?3 WHERE tbl = ?1 AND pk = ?2",
                params![e.tbl, e.pk, r],
            )?;
        }
        if let Some(o) = report {
            tx.execute(
                "INSERT INTO _tributary_errors (tbl, pk, op, outcome, detail, local_data, hub_row, conflict_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![e.tbl, e.pk, e.op, o.outcome, o.detail, e.data, o.hub_row, o.conflict_id],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}
