//! Push and pull over the gateway.
//!
//! ```text
//!  push: _tributary_outbox (oldest first) per hub table ──POST /v1/tables/{t}/changes──> outcomes
//!        a refused batch: each change again alone, so only what the hub refuses is set aside
//!        SQLite, one transaction: clear what was sent (unless edited again since: gen),
//!        outcomes the app must see ─> _tributary_errors
//!        an edit the hub did not take as written: its hub row fetched and written back
//!  pull, per table: GET /v1/changes?tables=t&since=version (then &next=…), page by page
//!        SQLite, one transaction per page: its rows (keys with unsent edits skipped: their
//!        push brings the hub's row back), and _tributary_pulls: the continuation, or at
//!        the window's last page the version; a version too old (TB002): a Full again
//! ```
//!
//! A push repeated after a crash (the hub had it, the file did not record
//! that) carries the same stamps, which the resolver finds applied: no
//! second effect. An edit made while a push is in flight moves its outbox
//! row's `gen`, so the row stays and goes with the next push.

use crate::error::{Error, HubError, Result};
use crate::hub::RemoteTable;
use crate::Edge;
use rusqlite::types::Value as V;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::time::Instant;
use tributary_core::jsontext;
use tributary_core::resolver::Outcome as Label;
use tributary_sqlite::encoding::{key_json_of, sqlite_value_json};
use tributary_sqlite::outbox::{self, Entry, Report, Sent};
use tributary_sqlite::{ColumnDef, Mapped};

/// Outbox rows sent per round.
const BATCH: usize = 500;
/// Rows asked per page unless set ([`Edge::set_page_size`]): the gateway's
/// default `max_page_size`. Each page is one SQLite transaction, so one
/// fsync per page: larger pages download faster, smaller ones lose less to
/// an interruption.
pub const PAGE: u32 = 10_000;

/// How a pull of one table is going, for a progress bar or log lines.
#[derive(Debug, Clone)]
pub struct Progress {
    pub table: String,
    /// Rows applied in this window so far (a resumed pull counts on).
    pub rows_done: i64,
    pub rows_per_s: f64,
    /// The window is a full download.
    pub full: bool,
    /// For a full download: the hub's estimate of the table's rows (its
    /// statistics, of the whole table: a row filter makes it end sooner).
    pub estimate: Option<i64>,
    /// Its last page is in.
    pub done: bool,
}

/// What a pull of one table did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pulled {
    pub table: String,
    pub rows: i64,
    pub version: i64,
    pub full: bool,
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pushed {
    pub sent: usize,
    /// Of those, outcomes now in `_tributary_errors`.
    pub attention: usize,
}

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    changes: Vec<ChangeIn<'a>>,
    version: i64,
    next: Option<String>,
}

#[derive(Deserialize)]
struct ChangeIn<'a> {
    op: String,
    #[serde(borrow)]
    pk: &'a RawValue,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    row_version: Option<i64>,
}

#[derive(Deserialize)]
struct OutcomeIn {
    outcome: String,
    conflict_id: Option<i64>,
    detail: Option<String>,
    /// The key's hub revision after the change.
    row_version: Option<i64>,
}

/// A row as `GET …/rows/{key}` gave it: its JSON and revision.
type Fetched = Option<(String, i64)>;

/// A path segment or query value, percent-encoded.
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Columns of `def` with the values of the JSON object `raw` (unknown
/// names are left out: columns this file does not hold).
fn values<'d>(cols: &'d [ColumnDef], raw: &str) -> Result<Vec<(&'d ColumnDef, V)>> {
    let pairs = jsontext::split_object(raw).ok_or_else(|| {
        Error::Hub(HubError {
            status: 200,
            message: format!("a change's row is not a JSON object: {}", short(raw)),
            ..Default::default()
        })
    })?;
    Ok(cols
        .iter()
        .filter_map(|c| {
            pairs
                .iter()
                .rev()
                .find(|(n, _)| *n == c.name)
                .map(|(_, v)| (c, sqlite_value_json(c.type_oid, v)))
        })
        .collect())
}

/// The page of `table`'s window that the continuation `next` names.
fn next_path(table: &str, next: &str, size: u32) -> String {
    format!(
        "/v1/changes?tables={}&next={}&pageSize={size}",
        enc(table),
        enc(next)
    )
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

impl Edge {
    /// Pushes, then pulls `tables` (all when empty).
    pub fn sync(
        &mut self,
        tables: &[String],
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<(Pushed, Vec<Pulled>)> {
        let pushed = self.push()?;
        let pulled = self.pull(tables, progress)?;
        Ok((pushed, pulled))
    }

    /// The hub's tables, with the file's tables brought up to them (a
    /// column the hub added is added here).
    fn tables(&mut self) -> Result<Vec<(RemoteTable, Mapped)>> {
        let remote = self.hub.schema()?;
        self.file.begin()?;
        let mut out = Vec::new();
        for t in remote {
            match self.file.ensure_table(&t.def) {
                Ok(m) => {
                    self.file.conn().execute(
                        "INSERT INTO _tributary_pulls (tbl) VALUES (?1) ON CONFLICT (tbl) DO NOTHING",
                        [&m.plain],
                    )?;
                    out.push((t, m));
                }
                Err(e) => {
                    self.file.rollback();
                    return Err(e.into());
                }
            }
        }
        self.file.end()?;
        Ok(out)
    }

    /// Pulls `only` (file or hub table names; all when empty), each to the
    /// hub's current version, page by page.
    pub fn pull(
        &mut self,
        only: &[String],
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Vec<Pulled>> {
        let tables = self.tables()?;
        for o in only {
            if !tables
                .iter()
                .any(|(t, m)| &m.plain == o || &t.table == o || &t.def.hub_name() == o)
            {
                return Err(Error::Usage(format!(
                    "no table {o:?} among those this peer syncs"
                )));
            }
        }
        let mut out = Vec::new();
        for (t, m) in &tables {
            if !only.is_empty()
                && !only
                    .iter()
                    .any(|o| *o == m.plain || *o == t.table || *o == t.def.hub_name())
            {
                continue;
            }
            out.push(self.pull_table(t, m, progress)?);
        }
        Ok(out)
    }

    fn pull_table(
        &mut self,
        t: &RemoteTable,
        m: &Mapped,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Pulled> {
        let started = Instant::now();
        let mut reset = false;
        let mut rows_here = 0i64;
        // The next page, asked for while this one is written.
        let mut ahead: Option<(String, std::thread::JoinHandle<Result<String>>)> = None;
        loop {
            let (version, next, done_before): (Option<i64>, Option<String>, i64) =
                self.file.conn().query_row(
                    "SELECT version, next, rows_done FROM _tributary_pulls WHERE tbl = ?1",
                    [&m.plain],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
            let full = version.is_none();
            let path = match &next {
                Some(n) => next_path(&t.table, n, self.page_size),
                None => format!(
                    "/v1/changes?tables={}&since={}&pageSize={}",
                    enc(&t.table),
                    version.unwrap_or(0),
                    self.page_size
                ),
            };
            let fetched = match ahead.take() {
                Some((p, h)) if p == path => h
                    .join()
                    .unwrap_or_else(|_| Err(Error::Usage("the page fetcher panicked".into()))),
                _ => self.hub.get_text(&path),
            };
            let body = match fetched {
                Err(Error::Hub(e)) if e.sqlstate == "TB002" && !reset => {
                    // Too old for a diff (retention, a new filter): start
                    // the table again from a full download.
                    reset = true;
                    self.file.conn().execute(
                        "UPDATE _tributary_pulls SET version = NULL, since = NULL, until = NULL,
                                next = NULL, rows_done = 0 WHERE tbl = ?1",
                        [&m.plain],
                    )?;
                    continue;
                }
                r => r?,
            };
            let page: Page = serde_json::from_str(&body).map_err(|e| {
                Error::Hub(HubError {
                    status: 200,
                    message: format!("a page of changes cannot be read: {e}"),
                    ..Default::default()
                })
            })?;
            if let Some(nx) = &page.next {
                let p = next_path(&t.table, nx, self.page_size);
                let hub = self.hub.clone();
                let q = p.clone();
                ahead = Some((p, std::thread::spawn(move || hub.get_text(&q))));
            }
            let n = page.changes.len() as i64;
            self.apply_page(t, m, &page, full && next.is_none())?;
            rows_here += n;
            let rows_done = if next.is_some() { done_before + n } else { n };
            self.record_page(m, version, &page, rows_done)?;
            tributary_core::failpoint::hit("edge.pull.after_page");
            let secs = started.elapsed().as_secs_f64().max(1e-6);
            progress(&Progress {
                table: m.plain.clone(),
                rows_done,
                rows_per_s: rows_here as f64 / secs,
                full,
                estimate: t.estimated_rows.filter(|_| full),
                done: page.next.is_none(),
            });
            if page.next.is_none() {
                return Ok(Pulled {
                    table: m.plain.clone(),
                    rows: rows_here,
                    version: page.version,
                    full,
                });
            }
        }
    }

    /// Records a page's progress in its transaction (the continuation, or
    /// at the window's last page the version), and commits it.
    fn record_page(
        &mut self,
        m: &Mapped,
        version: Option<i64>,
        page: &Page,
        rows_done: i64,
    ) -> Result<()> {
        let conn = self.file.conn();
        let r = match &page.next {
            Some(nx) => conn.execute(
                "UPDATE _tributary_pulls SET since = coalesce(since, ?2), until = ?3, next = ?4,
                        rows_done = ?5 WHERE tbl = ?1",
                rusqlite::params![m.plain, version.unwrap_or(0), page.version, nx, rows_done],
            ),
            None => conn.execute(
                "UPDATE _tributary_pulls SET version = ?2, since = NULL, until = NULL, next = NULL,
                        rows_done = ?3, synced_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                  WHERE tbl = ?1",
                rusqlite::params![m.plain, page.version, rows_done],
            ),
        };
        if let Err(e) = r {
            self.file.rollback();
            return Err(e.into());
        }
        Ok(self.file.end()?)
    }

    /// Opens the page's transaction and writes its rows (`first_of_full`:
    /// the table is emptied first, but for rows with unsent edits). The
    /// caller records the progress and commits.
    fn apply_page(
        &mut self,
        t: &RemoteTable,
        m: &Mapped,
        page: &Page,
        first_of_full: bool,
    ) -> Result<()> {
        let cols = &t.def.columns;
        let keys: Vec<ColumnDef> = cols.iter().filter(|c| c.key).cloned().collect();
        self.file.begin()?;
        let r = (|| -> Result<()> {
            let conn = self.file.conn();
            let unsent: HashSet<String> = {
                let mut st =
                    conn.prepare_cached("SELECT pk FROM _tributary_outbox WHERE tbl = ?1")?;
                let rows = st.query_map([&m.plain], |r| r.get::<_, String>(0))?;
                rows.collect::<Result<_, _>>()?
            };
            if first_of_full {
                let key_refs: Vec<&ColumnDef> = keys.iter().collect();
                let key = tributary_sqlite::encoding::json_object_expr(&m.name, &key_refs);
                conn.execute(
                    &format!(
                        "DELETE FROM {} WHERE {key} NOT IN (SELECT pk FROM _tributary_outbox WHERE tbl = ?1)",
                        m.name
                    ),
                    [&m.plain],
                )?;
                conn.execute(
                    "DELETE FROM _tributary_versions WHERE tbl = ?1
                        AND pk NOT IN (SELECT pk FROM _tributary_outbox WHERE tbl = ?1)",
                    [&m.plain],
                )?;
            }
            for c in &page.changes {
                let key = values(&keys, c.pk.get())?;
                let pk = key_json_of(key.iter().map(|(c, v)| (*c, v.clone())));
                if pk.as_ref().is_some_and(|p| unsent.contains(p)) {
                    continue;
                }
                match c.op.as_str() {
                    "I" | "U" => {
                        let data = c.data.map(|d| d.get()).unwrap_or("null");
                        let row = values(cols, data)?;
                        self.file.upsert_values(m, &row, c.row_version)?;
                    }
                    "D" => {
                        self.file.delete_values(m, &key)?;
                    }
                    other => {
                        return Err(Error::Hub(HubError {
                            status: 200,
                            message: format!("a change with op {other:?}"),
                            ..Default::default()
                        }))
                    }
                }
            }
            Ok(())
        })();
        if r.is_err() {
            self.file.rollback();
        }
        r
    }

    /// Sends the app's edits, oldest first, and records what came of them.
    pub fn push(&mut self) -> Result<Pushed> {
        let mut total = Pushed::default();
        // Each round sends what is there now; an edit made meanwhile waits
        // for the next round or push (a bounded number of rounds).
        for _ in 0..1000 {
            let entries = outbox::read(self.file.conn(), BATCH)?;
            if entries.is_empty() {
                break;
            }
            let mut by_table: Vec<(String, Vec<Entry>)> = Vec::new();
            for e in entries.iter().cloned() {
                match by_table.iter_mut().find(|(h, _)| *h == e.hub) {
                    Some((_, v)) => v.push(e),
                    None => by_table.push((e.hub.clone(), vec![e])),
                }
            }
            let mut sent: Vec<Sent> = Vec::new();
            let mut back: Vec<Entry> = Vec::new();
            for (hub_table, batch) in by_table {
                for (e, o) in self.send(&hub_table, batch)? {
                    let label = Label::parse(&o.outcome);
                    if write_back(label) {
                        back.push(e.clone());
                    }
                    let report_outcome = o.outcome.clone();
                    let report = label.is_some_and(Label::needs_attention).then_some(Report {
                        outcome: o.outcome,
                        detail: o.detail,
                        hub_row: None,
                        conflict_id: o.conflict_id,
                    });
                    total.attention += usize::from(report.is_some());
                    sent.push(Sent {
                        taken: outbox::taken(&report_outcome, o.row_version),
                        entry: e,
                        report,
                    });
                }
            }
            total.sent += sent.len();
            tributary_core::failpoint::hit("edge.push.after_hub");
            outbox::finish(self.file.conn(), &sent)?;
            self.write_back(&back)?;
            if entries.len() < BATCH {
                break;
            }
        }
        Ok(total)
    }

    /// One table's batch; refused whole, each change alone.
    fn send(&mut self, hub_table: &str, batch: Vec<Entry>) -> Result<Vec<(Entry, OutcomeIn)>> {
        let body = serde_json::Value::Array(batch.iter().map(Entry::change).collect()).to_string();
        let path = format!("/v1/tables/{}/changes", enc(hub_table));
        match self.hub.post_text(&path, body) {
            Ok(text) => {
                #[derive(Deserialize)]
                struct Answer {
                    outcomes: Vec<OutcomeIn>,
                }
                let a: Answer = serde_json::from_str(&text).map_err(|e| {
                    Error::Hub(HubError {
                        status: 200,
                        message: format!("the outcomes cannot be read: {e}"),
                        ..Default::default()
                    })
                })?;
                if a.outcomes.len() != batch.len() {
                    return Err(Error::Hub(HubError {
                        status: 200,
                        message: format!(
                            "{} outcomes for {} changes",
                            a.outcomes.len(),
                            batch.len()
                        ),
                        ..Default::default()
                    }));
                }
                Ok(batch.into_iter().zip(a.outcomes).collect())
            }
            Err(Error::Hub(h)) if refusal(&h) => {
                if batch.len() > 1 {
                    let mut out = Vec::new();
                    for e in batch {
                        out.extend(self.send(hub_table, vec![e])?);
                    }
                    return Ok(out);
                }
                let detail = h.to_string();
                Ok(batch
                    .into_iter()
                    .map(|e| {
                        (
                            e,
                            OutcomeIn {
                                outcome: Label::Rejected.as_str().to_string(),
                                conflict_id: None,
                                detail: Some(detail.clone()),
                                row_version: None,
                            },
                        )
                    })
                    .collect())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the hub's rows of `entries` into the file (a key the hub
    /// does not hold is deleted), so it holds what the hub decided.
    fn write_back(&mut self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let tables = self.tables()?;
        // (table index, the edit, the hub's row and revision if it has one)
        let mut rows: Vec<(usize, Entry, Fetched)> = Vec::new();
        for e in entries {
            let Some(i) = tables.iter().position(|(_, m)| m.plain == e.tbl) else {
                continue;
            };
            let path = format!("/v1/tables/{}/rows/{}", enc(&e.hub), enc(&e.pk));
            rows.push((i, e.clone(), self.hub.get_row(&path)?));
        }
        self.file.begin()?;
        let r = (|| -> Result<()> {
            let pending: HashSet<(String, String)> = {
                let mut st = self
                    .file
                    .conn()
                    .prepare_cached("SELECT tbl, pk FROM _tributary_outbox")?;
                let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            for (i, e, row) in &rows {
                if pending.contains(&(e.tbl.clone(), e.pk.clone())) {
                    continue; // edited again meanwhile: that edit goes next
                }
                let (t, m) = &tables[*i];
                match row {
                    Some((data, version)) => {
                        let vals = values(&t.def.columns, data)?;
                        self.file.upsert_values(m, &vals, Some(*version))?;
                    }
                    None => {
                        let keys: Vec<ColumnDef> =
                            t.def.columns.iter().filter(|c| c.key).cloned().collect();
                        let key = values(&keys, &e.pk)?;
                        self.file.delete_values(m, &key)?;
                    }
                }
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(self.file.end()?),
            Err(e) => {
                self.file.rollback();
                Err(e)
            }
        }
    }
}

/// A refusal of the changes themselves (bad values, outside the filter,
/// a constraint, a table the hub no longer has or tracks), not of the
/// request or the token. A 404 counts only with the hub's own words for a
/// missing table (42P01, TB003): a 404 from a proxy in front of a moved
/// gateway must not set the app's edits aside.
fn refusal(h: &HubError) -> bool {
    matches!(h.status, 400 | 403 | 409 | 413 | 422)
        || (h.status == 404 && matches!(h.sqlstate.as_str(), "42P01" | "TB003"))
}

/// Outcomes after which the hub's row may not be what the file holds, and
/// the hub sends nothing (its row did not change): the hub's row is
/// written back. `None`: a refusal.
fn write_back(label: Option<Label>) -> bool {
    !matches!(
        label,
        Some(
            Label::NewRecord
                | Label::VersionWin
                | Label::FieldMerge
                | Label::PeerWins
                | Label::Deferred
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys_are_percent_encoded() {
        assert_eq!(enc("\"tab'le\""), "%22tab%27le%22");
        assert_eq!(enc("{\"]\":1}"), "%7B%22%5D%22%3A1%7D");
        assert_eq!(enc("a-b_c.d~e"), "a-b_c.d~e");
    }

    #[test]
    fn only_what_the_hub_may_not_send_back_is_written_back() {
        assert!(!write_back(Some(Label::VersionWin)));
        assert!(!write_back(Some(Label::Deferred)));
        assert!(write_back(Some(Label::Manual)));
        assert!(write_back(Some(Label::StaleSkip)));
        assert!(write_back(Some(Label::Rejected)));
        assert!(write_back(None));
    }
}
