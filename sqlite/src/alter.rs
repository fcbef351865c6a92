//! A peer file following a hub table's change of shape (DDL), inside the
//! sync's open transaction.
//!
//! ```text
//!  SchemaChange (the table as it was named, its definition now, renames, drops, rebuild)
//!   find the file table (_tributary_tables.hub)     none: nothing to do
//!   drop its capture triggers
//!   table renamed    ALTER TABLE RENAME; _tributary_tables / _versions / _outbox follow
//!   columns dropped  ALTER TABLE DROP COLUMN; refused (the app's index, view, ...): kept, noted
//!   columns renamed  ALTER TABLE RENAME COLUMN, through temporary names (swaps, chains)
//!   rebuild          new table (declared types, key) <- INSERT OR IGNORE <- old;
//!                    the app's indexes and triggers recreated
//!   outbox           data / changed / pk follow the new names and key;
//!                    edits that can no longer be sent -> _tributary_errors (REJECTED)
//!   versions         keys renamed; forgotten when the key changed (the hub re-sends every row)
//!   ensure_table     new columns, capture triggers, _tributary_tables
//! ```
//!
//! Keys are compared as text (the outbox collapses per `(tbl, pk)`, the
//! triggers look `_tributary_versions` up by `pk`), so a rewritten key is
//! written byte for byte as the capture triggers write it: the key columns
//! in the definition's order, each value's JSON text kept as it was.

use crate::file::{create_table_sql, Declared, Mapped, PeerFile};
use crate::{outbox, ColumnDef, Result, TableDef};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use std::collections::{BTreeSet, HashMap, HashSet};
use tributary_core::jsontext;
use tributary_core::quote::{ident, qualified};
use tributary_core::resolver::Outcome;

/// A hub table's change of shape, as a peer file follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaChange {
    /// The hub table as it was named before the change.
    pub from_schema: String,
    pub from_name: String,
    /// The table as it is now: its (possibly new) schema and name, and its
    /// data columns (tracking columns already left out), in column order.
    pub def: TableDef,
    /// Columns renamed, (old name, new name), hub names. May include swaps
    /// (a->b, b->a) and chains.
    pub renamed: Vec<(String, String)>,
    /// Columns dropped at the hub (old names, i.e. as the file knows them
    /// before `renamed` is applied; a dropped column is never also renamed).
    pub dropped: Vec<String>,
    /// A column's type or the primary key changed: the file table is
    /// rebuilt with the new declared types and key.
    pub rebuild: bool,
}

impl PeerFile {
    /// Inside an open sync transaction: brings the file table that holds
    /// hub table `from_schema.from_name` to the new shape. Returns None
    /// when the file holds no such table (nothing to do); otherwise the new
    /// mapping, and notes for the log (e.g. a column the file had to keep).
    ///
    /// Columns are dropped before others are renamed, so that a column may
    /// take the name of one dropped in the same change. An error leaves
    /// the transaction for the caller to roll back.
    pub fn alter(&self, change: &SchemaChange) -> Result<Option<(Mapped, Vec<String>)>> {
        let conn = &self.conn;
        let hub = qualified(&change.from_schema, &change.from_name);
        let Some(old) = conn
            .query_row(
                "SELECT tbl FROM _tributary_tables WHERE hub = ?1 ORDER BY tbl LIMIT 1",
                [&hub],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        else {
            return Ok(None);
        };
        conn.execute_batch(&outbox::drop_triggers(&old))?;
        let plain = change.def.file_name();
        rename_table(conn, &old, &plain, &change.def.hub_name())?;
        let mut kept = drop_columns(conn, &plain, change)?;
        rename_columns(conn, &plain, &change.renamed)?;
        let mut notes = Vec::new();
        let key_changed = if change.rebuild {
            let key_changed = rebuild(conn, &plain, &change.def, &mut notes)?;
            // Out of the key now, a column the hub dropped from it can go.
            kept = retry_drops(conn, &plain, kept)?;
            key_changed
        } else {
            false
        };
        notes.extend(kept.iter().map(|k| k.note(&plain)));
        follow_outbox(conn, &plain, change, key_changed)?;
        follow_versions(conn, &plain, change, key_changed)?;
        let mapped = self.ensure_table(&change.def)?;
        Ok(Some((mapped, notes)))
    }
}

/// A column of a file table, as `pragma_table_info` shows it.
struct FileColumn {
    name: String,
    /// The declared type (may be empty).
    decl_type: String,
    not_null: bool,
    /// The default's SQL text.
    default: Option<String>,
    key: bool,
}

impl FileColumn {
    /// The declaration a rebuild gives a column the hub does not have (the
    /// app's own): its type and constraints, kept.
    fn own_decl(&self) -> String {
        let mut d = self.decl_type.clone();
        if self.not_null {
            d.push_str(" NOT NULL");
        }
        if let Some(x) = &self.default {
            d.push_str(&format!(" DEFAULT ({x})"));
        }
        d.trim_start().to_string()
    }
}

fn columns(conn: &Connection, plain: &str) -> Result<Vec<FileColumn>> {
    let mut st = conn.prepare(
        "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1) ORDER BY cid",
    )?;
    let rows = st.query_map([plain], |r| {
        Ok(FileColumn {
            name: r.get(0)?,
            decl_type: r.get(1)?,
            not_null: r.get(2)?,
            default: r.get(3)?,
            key: r.get::<_, i64>(4)? > 0,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn column_names(conn: &Connection, plain: &str) -> Result<Vec<String>> {
    Ok(columns(conn, plain)?.into_iter().map(|c| c.name).collect())
}

/// The table renamed at the hub: the file table, and the bookkeeping that
/// names it, take the new name. A different table of that name in the
/// file makes the rename fail.
fn rename_table(conn: &Connection, old: &str, new: &str, hub: &str) -> Result<()> {
    if old == new {
        return Ok(());
    }
    let rename = |from: &str, to: &str| {
        conn.execute_batch(&format!(
            "ALTER TABLE {} RENAME TO {}",
            ident(from),
            ident(to)
        ))
    };
    if old.eq_ignore_ascii_case(new) {
        // SQLite's names ignore case: `T` cannot be renamed to `t` directly.
        let via = format!("_tributary_renaming_{new}");
        rename(old, &via)?;
        rename(&via, new)?;
    } else {
        rename(old, new)?;
    }
    // A row already under the new name is left over from a table the file
    // no longer holds (the rename above would have failed otherwise).
    conn.execute(
        "UPDATE OR REPLACE _tributary_tables SET tbl = ?2, hub = ?3 WHERE tbl = ?1",
        params![old, new, hub],
    )?;
    for t in ["_tributary_versions", "_tributary_outbox"] {
        conn.execute(
            &format!("UPDATE OR REPLACE {t} SET tbl = ?2 WHERE tbl = ?1"),
            params![old, new],
        )?;
    }
    Ok(())
}

/// A column the hub dropped that the file keeps.
struct Kept {
    /// Its hub name.
    dropped: String,
    /// Its name in the file: moved aside when the new shape needs its name.
    name: String,
    /// Why SQLite refused to drop it.
    why: String,
}

impl Kept {
    fn note(&self, plain: &str) -> String {
        let mut n = format!(
            "column {} of {} was dropped at the hub, but the file keeps it ({}); it no longer receives values",
            ident(&self.dropped),
            ident(plain),
            self.why
        );
        if self.name != self.dropped {
            n.push_str(&format!("; it is now named {}", ident(&self.name)));
        }
        n
    }
}

/// Runs `sql`, which SQLite may refuse, in a savepoint of its own, rolled
/// back when refused: after a refused `DROP COLUMN` inside a transaction,
/// SQLite (3.54) refuses to rename that column ("no such column") until
/// its schema is reloaded, which the rollback does.
fn attempt(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.execute_batch("SAVEPOINT _tributary_attempt")?;
    let r = conn.execute_batch(sql);
    if r.is_err() {
        conn.execute_batch("ROLLBACK TO _tributary_attempt")?;
    }
    conn.execute_batch("RELEASE _tributary_attempt")?;
    r
}

fn drop_column(conn: &Connection, plain: &str, col: &str) -> rusqlite::Result<()> {
    attempt(
        conn,
        &format!("ALTER TABLE {} DROP COLUMN {}", ident(plain), ident(col)),
    )
}

/// Drops the columns the hub dropped. One SQLite refuses to drop (the
/// app's index, view, trigger or CHECK uses it; part of the key) is kept;
/// when the new shape needs its name, it is renamed aside.
fn drop_columns(conn: &Connection, plain: &str, change: &SchemaChange) -> Result<Vec<Kept>> {
    let mut have = column_names(conn, plain)?;
    let needed: HashSet<&str> = (change.def.columns.iter().map(|c| c.name.as_str()))
        .chain(change.renamed.iter().map(|(_, new)| new.as_str()))
        .collect();
    let mut kept = Vec::new();
    for c in &change.dropped {
        if !have.contains(c) {
            continue;
        }
        let why = match drop_column(conn, plain, c) {
            Ok(()) => {
                have.retain(|h| h != c);
                continue;
            }
            // SQLite's plain "error": the schema stands in the way.
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::Unknown) => e.to_string(),
            Err(e) => return Err(e.into()),
        };
        let mut name = c.clone();
        if needed.contains(c.as_str()) {
            name = free_name(&have, &needed, &format!("{c}_dropped"));
            conn.execute_batch(&format!(
                "ALTER TABLE {} RENAME COLUMN {} TO {}",
                ident(plain),
                ident(c),
                ident(&name)
            ))?;
            have.push(name.clone());
        }
        kept.push(Kept {
            dropped: c.clone(),
            name,
            why,
        });
    }
    Ok(kept)
}

/// After a rebuild, tries again to drop the columns the file kept.
fn retry_drops(conn: &Connection, plain: &str, kept: Vec<Kept>) -> Result<Vec<Kept>> {
    let mut still = Vec::new();
    for mut k in kept {
        match drop_column(conn, plain, &k.name) {
            Ok(()) => {}
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::Unknown) => {
                k.why = e.to_string();
                still.push(k);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(still)
}

/// `base`, or `base_2`, `base_3`, ...: the first that no column has (SQLite
/// names ignore case) and the new shape does not need.
fn free_name(have: &[String], needed: &HashSet<&str>, base: &str) -> String {
    let taken = |n: &str| {
        have.iter().any(|h| h.eq_ignore_ascii_case(n))
            || needed.iter().any(|h| h.eq_ignore_ascii_case(n))
    };
    let mut name = base.to_string();
    let mut i = 2;
    while taken(&name) {
        name = format!("{base}_{i}");
        i += 1;
    }
    name
}

/// Renames columns in two phases, each first to a temporary name, so that
/// swaps (a->b, b->a) and chains (a->b, b->c) work. A column the file does
/// not have is left to `ensure_table` to add.
fn rename_columns(conn: &Connection, plain: &str, renamed: &[(String, String)]) -> Result<()> {
    let have = column_names(conn, plain)?;
    let moves: Vec<&(String, String)> = renamed
        .iter()
        .filter(|(old, new)| old != new && have.contains(old))
        .collect();
    let rename = |from: &str, to: &str| {
        conn.execute_batch(&format!(
            "ALTER TABLE {} RENAME COLUMN {} TO {}",
            ident(plain),
            ident(from),
            ident(to)
        ))
    };
    let temp = |i: usize| format!("_tributary_renaming_{i}");
    for (i, (old, _)) in moves.iter().enumerate() {
        rename(old, &temp(i))?;
    }
    for (i, (_, new)) in moves.iter().enumerate() {
        rename(&temp(i), new)?;
    }
    Ok(())
}

/// The indexes and triggers the app made on a table (SQL to recreate them).
struct AppObject {
    kind: String,
    name: String,
    sql: String,
}

/// The indexes and triggers the app made on table `plain` (the capture
/// triggers are dropped by then; SQLite's own indexes have no SQL).
fn app_objects(conn: &Connection, plain: &str) -> Result<Vec<AppObject>> {
    let mut st = conn.prepare(
        "SELECT type, name, sql FROM sqlite_master
          WHERE type IN ('index', 'trigger') AND tbl_name = ?1 COLLATE NOCASE AND sql IS NOT NULL
          ORDER BY type, name",
    )?;
    let rows = st.query_map([plain], |r| {
        Ok(AppObject {
            kind: r.get(0)?,
            name: r.get(1)?,
            sql: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// SQLite's table-rebuild procedure: a new table of the hub's declared
/// types and key (the file's own columns kept, in the file's column
/// order), the rows copied over (a row whose new key is taken is left
/// out), the old table dropped, the new one renamed to its name, the app's
/// indexes and triggers recreated. Returns whether the key columns changed.
fn rebuild(
    conn: &Connection,
    plain: &str,
    def: &TableDef,
    notes: &mut Vec<String>,
) -> Result<bool> {
    let file = columns(conn, plain)?;
    let hub: HashMap<&str, &ColumnDef> = def.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    let keys: Vec<&str> = def
        .columns
        .iter()
        .filter(|c| c.key)
        .map(|c| c.name.as_str())
        .collect();
    let old_keys: BTreeSet<&str> = file
        .iter()
        .filter(|c| c.key)
        .map(|c| c.name.as_str())
        .collect();
    let key_changed = old_keys != keys.iter().copied().collect();
    let mut declared: Vec<Declared> = file
        .iter()
        .map(|c| match hub.get(c.name.as_str()) {
            Some(h) => Declared::hub(h),
            None => Declared {
                name: c.name.clone(),
                decl: c.own_decl(),
            },
        })
        .collect();
    declared.extend(
        (def.columns.iter())
            .filter(|h| !file.iter().any(|c| c.name == h.name))
            .map(Declared::hub),
    );
    let app = app_objects(conn, plain)?;
    let new = format!("_tributary_rebuild_{plain}");
    conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", ident(&new)))?;
    conn.execute_batch(&create_table_sql(&new, &declared, &keys))?;
    let copy: Vec<String> = file.iter().map(|c| ident(&c.name)).collect();
    let copy = copy.join(", ");
    let before: i64 =
        conn.query_row(&format!("SELECT count(*) FROM {}", ident(plain)), [], |r| {
            r.get(0)
        })?;
    let copied = conn.execute(
        &format!(
            "INSERT OR IGNORE INTO {} ({copy}) SELECT {copy} FROM {}",
            ident(&new),
            ident(plain)
        ),
        [],
    )?;
    if (copied as i64) < before {
        notes.push(format!(
            "{} rows of {} were left out when it was rebuilt: their new key was taken by another row",
            before - copied as i64,
            ident(plain)
        ));
    }
    conn.execute_batch(&format!("DROP TABLE {}", ident(plain)))?;
    rename_rebuilt(conn, &new, plain)?;
    for o in &app {
        if let Err(e) = attempt(conn, &o.sql) {
            notes.push(format!(
                "the app's {} {} on {} could not be recreated after the rebuild ({e})",
                o.kind,
                ident(&o.name),
                ident(plain)
            ));
        }
    }
    Ok(key_changed)
}

/// Renames the rebuilt table to its name with `legacy_alter_table` on, as
/// SQLite's procedure requires: views that name the table are left as
/// they are (they name it again once the rename is done).
fn rename_rebuilt(conn: &Connection, new: &str, plain: &str) -> Result<()> {
    let legacy: bool = conn.query_row("PRAGMA legacy_alter_table", [], |r| r.get(0))?;
    conn.pragma_update(None, "legacy_alter_table", true)?;
    let r = conn.execute_batch(&format!(
        "ALTER TABLE {} RENAME TO {}",
        ident(new),
        ident(plain)
    ));
    conn.pragma_update(None, "legacy_alter_table", legacy)?;
    Ok(r?)
}

/// The members of a JSON object's text, as (name, the value's exact text):
/// names in `dropped` left out, names in `renamed` renamed (all at once, so
/// swaps work). None for text that is not an object.
fn members<'a>(
    text: &'a str,
    dropped: &HashSet<&str>,
    renamed: &HashMap<&str, &str>,
) -> Option<Vec<(String, &'a str)>> {
    let all = jsontext::split_object(text)?;
    Some(
        all.into_iter()
            .filter(|(k, _)| !dropped.contains(k.as_ref()))
            .map(|(k, v)| {
                (
                    renamed
                        .get(k.as_ref())
                        .map_or(k.into_owned(), |n| n.to_string()),
                    v,
                )
            })
            .collect(),
    )
}

/// A JSON object's text, written as SQLite's `json_object` writes it.
fn object_text<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        jsontext::push_str(&mut s, k);
        s.push(':');
        s.push_str(v);
    }
    s.push('}');
    s
}

/// A row's key as the capture triggers write it, from the members of its
/// key or its row image: the key columns in the definition's order, a
/// column the members lack as `null` (as a column just added reads).
fn key_text(members: &[(String, &str)], keys: &[&str]) -> String {
    object_text(keys.iter().map(|k| {
        let v = members
            .iter()
            .find(|(n, _)| n == k)
            .map_or("null", |(_, v)| *v);
        (*k, v)
    }))
}

/// A JSON array of names, as SQLite's `json_group_array` writes it.
fn array_text(names: &[String]) -> String {
    let mut s = String::from("[");
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        jsontext::push_str(&mut s, n);
    }
    s.push(']');
    s
}

/// One outbox entry of the table, as read before the change.
struct Pending {
    seq: i64,
    pk: String,
    op: String,
    data: Option<String>,
    changed: Option<String>,
}

/// An edit the file can no longer send, for `_tributary_errors`.
struct Rejection {
    pk: String,
    op: String,
    detail: String,
    local_data: Option<String>,
}

/// What becomes of one outbox entry.
enum Fate {
    Keep {
        pk: String,
        data: Option<String>,
        changed: Option<String>,
    },
    Remove,
}

/// The outbox entries of the table follow the new shape: `data` and
/// `changed` lose dropped columns and take new names, `pk` takes new names
/// (or, when the key changed, is made anew from `data`). An edit that can
/// no longer be sent is recorded in `_tributary_errors`.
fn follow_outbox(
    conn: &Connection,
    plain: &str,
    change: &SchemaChange,
    key_changed: bool,
) -> Result<()> {
    let entries: Vec<Pending> = {
        let mut st = conn.prepare(
            "SELECT seq, pk, op, data, changed FROM _tributary_outbox WHERE tbl = ?1 ORDER BY seq DESC",
        )?;
        let rows = st.query_map([plain], |r| {
            Ok(Pending {
                seq: r.get(0)?,
                pk: r.get(1)?,
                op: r.get(2)?,
                data: r.get(3)?,
                changed: r.get(4)?,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    if entries.is_empty() {
        return Ok(());
    }
    let plan = OutboxPlan::new(plain, change, key_changed);
    let mut taken = HashSet::new();
    let mut rejected = Vec::new();
    let mut fates = Vec::new();
    for e in &entries {
        let names = match &e.changed {
            Some(c) => Some(array_names(conn, c)?),
            None => None,
        };
        fates.push((e.seq, plan.fate(e, names, &mut taken, &mut rejected)));
    }
    // Every key out of the way first: a new key may be another entry's old one.
    conn.execute(
        "UPDATE _tributary_outbox SET pk = char(1) || seq WHERE tbl = ?1",
        [plain],
    )?;
    for (seq, fate) in fates {
        match fate {
            Fate::Remove => conn.execute("DELETE FROM _tributary_outbox WHERE seq = ?1", [seq])?,
            Fate::Keep { pk, data, changed } => conn.execute(
                "UPDATE _tributary_outbox SET pk = ?2, data = ?3, changed = ?4 WHERE seq = ?1",
                params![seq, pk, data, changed],
            )?,
        };
    }
    for r in rejected.iter().rev() {
        conn.execute(
            "INSERT INTO _tributary_errors (tbl, pk, op, outcome, detail, local_data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                plain,
                r.pk,
                r.op,
                Outcome::Rejected.as_str(),
                r.detail,
                r.local_data
            ],
        )?;
    }
    Ok(())
}

/// The elements of a JSON array of names.
fn array_names(conn: &Connection, text: &str) -> Result<Vec<String>> {
    let mut st = conn.prepare_cached("SELECT value FROM json_each(?1)")?;
    let rows = st.query_map([text], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How the outbox entries of one table follow a change.
struct OutboxPlan<'a> {
    /// The file table, quoted, for the details.
    table: String,
    dropped: HashSet<&'a str>,
    renamed: HashMap<&'a str, &'a str>,
    /// The key columns now, in the definition's order.
    keys: Vec<&'a str>,
    key_changed: bool,
}

impl<'a> OutboxPlan<'a> {
    fn new(plain: &str, change: &'a SchemaChange, key_changed: bool) -> OutboxPlan<'a> {
        OutboxPlan {
            table: ident(plain),
            dropped: change.dropped.iter().map(String::as_str).collect(),
            renamed: (change.renamed.iter())
                .map(|(o, n)| (o.as_str(), n.as_str()))
                .collect(),
            keys: (change.def.columns.iter())
                .filter(|c| c.key)
                .map(|c| c.name.as_str())
                .collect(),
            key_changed,
        }
    }

    /// The fate of entry `e` (whose `changed` holds `names`), newest first:
    /// `taken` holds the keys newer entries kept.
    fn fate(
        &self,
        e: &Pending,
        names: Option<Vec<String>>,
        taken: &mut HashSet<String>,
        rejected: &mut Vec<Rejection>,
    ) -> Fate {
        let none = HashSet::new();
        let data_members = e
            .data
            .as_deref()
            .and_then(|d| members(d, &self.dropped, &self.renamed));
        let data = match &data_members {
            Some(m) => Some(object_text(m.iter().map(|(k, v)| (k.as_str(), *v)))),
            None => e.data.clone(),
        };
        let pk_members = members(&e.pk, &none, &self.renamed);
        let renamed_pk = match &pk_members {
            Some(m) => object_text(m.iter().map(|(k, v)| (k.as_str(), *v))),
            None => e.pk.clone(),
        };
        let pk = match (self.key_changed, &pk_members) {
            (false, Some(m)) if !self.keys.is_empty() => Some(key_text(m, &self.keys)),
            (false, _) => Some(e.pk.clone()),
            (true, _) if self.keys.is_empty() => None,
            // A 'D' entry has no row image to take the new key from.
            (true, _) => data_members.as_ref().map(|m| key_text(m, &self.keys)),
        };
        let (changed, lost) = match names {
            Some(names) => {
                let (lost, left): (Vec<String>, Vec<String>) = names
                    .into_iter()
                    .partition(|n| self.dropped.contains(n.as_str()));
                let left: Vec<String> = (left.into_iter())
                    .map(|n| {
                        self.renamed
                            .get(n.as_str())
                            .map_or(n.clone(), |r| r.to_string())
                    })
                    .collect();
                (Some(left), lost)
            }
            None => (None, Vec::new()),
        };
        let report_pk = pk.clone().unwrap_or_else(|| renamed_pk.clone());
        for c in &lost {
            rejected.push(Rejection {
                pk: report_pk.clone(),
                op: e.op.clone(),
                detail: format!(
                    "column {} was dropped at the hub; this edit of it was not sent",
                    ident(c)
                ),
                local_data: e.data.clone(),
            });
        }
        let unsent = |detail: String, rejected: &mut Vec<Rejection>| {
            rejected.push(Rejection {
                pk: report_pk.clone(),
                op: e.op.clone(),
                detail,
                local_data: data.clone(),
            });
            Fate::Remove
        };
        if e.op == "U" && !lost.is_empty() && changed.as_ref().is_some_and(|c| c.is_empty()) {
            return Fate::Remove;
        }
        let Some(pk) = pk else {
            let detail = if self.keys.is_empty() {
                format!("the key of {} was dropped at the hub; not sent", self.table)
            } else {
                format!(
                    "deleted before the key of {} changed at the hub; not sent",
                    self.table
                )
            };
            return unsent(detail, rejected);
        };
        if !taken.insert(pk.clone()) {
            let detail = format!(
                "a newer edit of the same key replaces it after the key of {} changed at the hub; not sent",
                self.table
            );
            return unsent(detail, rejected);
        }
        Fate::Keep {
            pk,
            data,
            changed: changed.map(|c| array_text(&c)),
        }
    }
}

/// `_tributary_versions` follows: when the key changed, the table's
/// revisions are forgotten (the hub re-sends every row with its revision);
/// when a key column was renamed, the keys take the new names.
fn follow_versions(
    conn: &Connection,
    plain: &str,
    change: &SchemaChange,
    key_changed: bool,
) -> Result<()> {
    if key_changed {
        conn.execute("DELETE FROM _tributary_versions WHERE tbl = ?1", [plain])?;
        return Ok(());
    }
    let keys: Vec<&str> = (change.def.columns.iter())
        .filter(|c| c.key)
        .map(|c| c.name.as_str())
        .collect();
    if !change
        .renamed
        .iter()
        .any(|(_, new)| keys.contains(&new.as_str()))
    {
        return Ok(());
    }
    let renamed: HashMap<&str, &str> = (change.renamed.iter())
        .map(|(o, n)| (o.as_str(), n.as_str()))
        .collect();
    let rows: Vec<(String, i64)> = {
        let mut st = conn.prepare("SELECT pk, version FROM _tributary_versions WHERE tbl = ?1")?;
        let rows = st.query_map([plain], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    conn.execute("DELETE FROM _tributary_versions WHERE tbl = ?1", [plain])?;
    let mut put = conn.prepare(
        "INSERT OR REPLACE INTO _tributary_versions (tbl, pk, version) VALUES (?1, ?2, ?3)",
    )?;
    for (pk, version) in rows {
        let pk = match members(&pk, &HashSet::new(), &renamed) {
            Some(m) => key_text(&m, &keys),
            None => pk,
        };
        put.execute(params![plain, pk, version])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::connect;
    use crate::PeerError;
    use rusqlite::types::Value;
    use std::path::PathBuf;

    fn col(name: &str, type_oid: u32, key: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            type_oid,
            key,
        }
    }

    fn table(schema: &str, name: &str, columns: Vec<ColumnDef>) -> TableDef {
        TableDef {
            schema: schema.into(),
            name: name.into(),
            columns,
        }
    }

    /// A change of `from` to `def`, with nothing renamed or dropped yet.
    fn change(from: &TableDef, def: TableDef) -> SchemaChange {
        SchemaChange {
            from_schema: from.schema.clone(),
            from_name: from.name.clone(),
            def,
            renamed: vec![],
            dropped: vec![],
            rebuild: false,
        }
    }

    fn renames(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// A peer file and the app's connection to it.
    struct Peer {
        _dir: tempfile::TempDir,
        file: PeerFile,
        app: Connection,
        path: PathBuf,
    }

    /// A file holding `def`, with `rows` (each column's hub text) synced
    /// at hub revision `version`.
    fn peer(def: &TableDef, rows: &[&[Option<&str>]], version: i64) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.db");
        let file = PeerFile::open(&path).unwrap();
        let m = file.ensure_table(def).unwrap();
        file.begin().unwrap();
        for r in rows {
            sync_row(&file, &m, def, r, version);
        }
        file.commit("slot", "0/1", "7/5").unwrap();
        let app = connect(&path, false).unwrap();
        Peer {
            _dir: dir,
            file,
            app,
            path,
        }
    }

    /// Inside a sync transaction: the hub sends a row.
    fn sync_row(file: &PeerFile, m: &Mapped, def: &TableDef, row: &[Option<&str>], version: i64) {
        let cols: Vec<(&ColumnDef, Option<&[u8]>)> = (def.columns.iter())
            .zip(row)
            .map(|(c, v)| (c, v.map(str::as_bytes)))
            .collect();
        file.upsert(m, &cols, Some(version)).unwrap();
    }

    impl Peer {
        /// The change, in a sync transaction of its own.
        fn alter(&self, change: &SchemaChange) -> Result<Option<(Mapped, Vec<String>)>> {
            self.file.begin()?;
            match self.file.alter(change) {
                Ok(r) => {
                    self.file.commit("slot", "0/2", "7/5")?;
                    Ok(r)
                }
                Err(e) => {
                    self.file.rollback();
                    Err(e)
                }
            }
        }

        /// The app's own statements.
        fn app(&self, sql: &str) {
            self.app.execute_batch(sql).unwrap();
        }

        /// Each row of `sql`, its values joined by `|`.
        fn rows(&self, sql: &str) -> Vec<String> {
            let c = connect(&self.path, false).unwrap();
            let mut st = c.prepare(sql).unwrap();
            let n = st.column_count();
            let rows = st
                .query_map([], |r| {
                    let vals: Vec<String> = (0..n)
                        .map(|i| match r.get::<_, Value>(i).unwrap() {
                            Value::Null => "NULL".to_string(),
                            Value::Integer(i) => i.to_string(),
                            Value::Real(f) => f.to_string(),
                            Value::Text(t) => t,
                            Value::Blob(b) => format!("{b:?}"),
                        })
                        .collect();
                    Ok(vals.join("|"))
                })
                .unwrap();
            rows.map(|r| r.unwrap()).collect()
        }

        fn one(&self, sql: &str) -> String {
            let mut r = self.rows(sql);
            assert_eq!(r.len(), 1, "{sql}: {r:?}");
            r.remove(0)
        }

        fn columns(&self, plain: &str) -> Vec<String> {
            let c = connect(&self.path, false).unwrap();
            column_names(&c, plain).unwrap()
        }
    }

    const OUTBOX: &str =
        "SELECT pk, op, data, coalesce(changed, 'NULL'), coalesce(base, 'NULL') FROM _tributary_outbox ORDER BY seq";

    fn hostile() -> TableDef {
        table(
            "public",
            "tab'le",
            vec![
                col("id", 23, true),
                col("na\"me", 25, false),
                col("a b", 25, false),
            ],
        )
    }

    #[test]
    fn renaming_a_column_keeps_its_values_and_moves_the_outbox_to_the_new_name() {
        let from = hostile();
        let p = peer(
            &from,
            &[
                &[Some("1"), Some("x"), Some("p")],
                &[Some("2"), Some("y"), Some("q")],
            ],
            3,
        );
        p.app(r#"UPDATE "tab'le" SET "na""me" = 'x2' WHERE id = 1"#);
        let mut c = change(
            &from,
            table(
                "public",
                "tab'le",
                vec![
                    col("id", 23, true),
                    col("]", 25, false),
                    col("a b", 25, false),
                ],
            ),
        );
        c.renamed = renames(&[("na\"me", "]")]);
        let (m, notes) = p.alter(&c).unwrap().unwrap();
        assert_eq!((m.plain.as_str(), notes.len()), ("tab'le", 0));
        assert_eq!(p.columns("tab'le"), ["id", "]", "a b"]);
        assert_eq!(
            p.rows(r#"SELECT id, "]", "a b" FROM "tab'le" ORDER BY id"#),
            ["1|x2|p", "2|y|q"]
        );
        assert_eq!(
            p.rows(OUTBOX),
            [r#"{"id":1}|U|{"id":1,"]":"x2","a b":"p"}|["]"]|3"#]
        );
        p.app(r#"UPDATE "tab'le" SET "]" = 'y2' WHERE id = 2; UPDATE "tab'le" SET "a b" = 'p2' WHERE id = 1;"#);
        assert_eq!(
            p.rows(OUTBOX),
            [
                r#"{"id":1}|U|{"id":1,"]":"x2","a b":"p2"}|["]","a b"]|3"#,
                r#"{"id":2}|U|{"id":2,"]":"y2","a b":"q"}|["]"]|3"#,
            ]
        );
    }

    #[test]
    fn renaming_a_key_column_rewrites_keys_so_later_edits_collapse_and_find_their_base() {
        let from = table(
            "public",
            "tab'le",
            vec![
                col("na\"me", 23, true),
                col("]", 25, true),
                col("a b", 25, false),
            ],
        );
        let p = peer(
            &from,
            &[
                &[Some("1"), Some("k"), Some("v")],
                &[Some("2"), Some("m"), Some("w")],
                &[Some("3"), Some("n"), Some("z")],
            ],
            5,
        );
        p.app(r#"UPDATE "tab'le" SET "a b" = 'v2' WHERE "na""me" = 1; DELETE FROM "tab'le" WHERE "na""me" = 2;"#);
        let def = table(
            "public",
            "tab'le",
            vec![
                col("id\"x", 23, true),
                col("]", 25, true),
                col("a b", 25, false),
            ],
        );
        let mut c = change(&from, def.clone());
        c.renamed = renames(&[("na\"me", "id\"x")]);
        p.alter(&c).unwrap().unwrap();
        // The keys, byte for byte as SQLite and key_json write them.
        let k1 = p.one(r#"SELECT json_object('id"x', 1, ']', 'k')"#);
        let k2 = p.one(r#"SELECT json_object('id"x', 2, ']', 'm')"#);
        let k3 = key_json_of(&def, &["3", "n"]);
        assert_eq!(k1, key_json_of(&def, &["1", "k"]));
        assert_eq!(
            p.rows("SELECT pk, op, gen, base FROM _tributary_outbox ORDER BY seq"),
            [format!("{k1}|U|0|5"), format!("{k2}|D|0|5")]
        );
        let mut versions =
            p.rows("SELECT pk || '|' || version FROM _tributary_versions ORDER BY pk");
        versions.sort();
        let mut want = vec![format!("{k1}|5"), format!("{k2}|5"), format!("{k3}|5")];
        want.sort();
        assert_eq!(versions, want);
        // An edit of a row with an entry collapses into it; a new one finds its base.
        p.app(r#"UPDATE "tab'le" SET "a b" = 'v3' WHERE "id""x" = 1; UPDATE "tab'le" SET "a b" = 'z2' WHERE "id""x" = 3;"#);
        assert_eq!(
            p.rows("SELECT pk, op, gen, base, data FROM _tributary_outbox ORDER BY seq"),
            [
                format!(r#"{k1}|U|1|5|{{"id\"x":1,"]":"k","a b":"v3"}}"#),
                format!("{k2}|D|0|5|NULL"),
                format!(r#"{k3}|U|0|5|{{"id\"x":3,"]":"n","a b":"z2"}}"#),
            ]
        );
    }

    fn key_json_of(def: &TableDef, values: &[&str]) -> String {
        let keys = def.columns.iter().filter(|c| c.key);
        crate::encoding::key_json(keys.zip(values).map(|(c, v)| (c, Some(v.as_bytes())))).unwrap()
    }

    #[test]
    fn a_swap_and_a_chain_of_renames_keep_each_value_with_its_column() {
        let from = table(
            "public",
            "tab'le",
            vec![
                col("id", 23, true),
                col("a", 25, false),
                col("b", 25, false),
                col("c", 25, false),
            ],
        );
        let p = peer(&from, &[&[Some("1"), Some("A"), Some("B"), Some("C")]], 1);
        p.app(r#"UPDATE "tab'le" SET a = 'A2' WHERE id = 1"#);
        let mut c = change(
            &from,
            table(
                "public",
                "tab'le",
                vec![
                    col("id", 23, true),
                    col("b", 25, false),
                    col("a", 25, false),
                    col("d", 25, false),
                ],
            ),
        );
        c.renamed = renames(&[("a", "b"), ("b", "a"), ("c", "d")]);
        p.alter(&c).unwrap().unwrap();
        assert_eq!(p.columns("tab'le"), ["id", "b", "a", "d"]);
        assert_eq!(p.one(r#"SELECT b, a, d FROM "tab'le""#), "A2|B|C");
        assert_eq!(
            p.rows(OUTBOX),
            [r#"{"id":1}|U|{"id":1,"b":"A2","a":"B","d":"C"}|["b"]|1"#]
        );
    }

    #[test]
    fn renaming_the_table_moves_its_rows_revisions_and_outbox() {
        let from = table(
            "public",
            "tab'le",
            vec![col("id", 23, true), col("na\"me", 25, false)],
        );
        let p = peer(
            &from,
            &[&[Some("1"), Some("x")], &[Some("2"), Some("y")]],
            4,
        );
        p.app(r#"UPDATE "tab'le" SET "na""me" = 'x2' WHERE id = 1"#);
        let to = table("public", "new'name", from.columns.clone());
        let (m, _) = p.alter(&change(&from, to.clone())).unwrap().unwrap();
        assert_eq!(m.plain, "new'name");
        assert_eq!(
            p.rows("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_tributary\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%'"),
            ["new'name"]
        );
        assert_eq!(
            p.rows(r#"SELECT id, "na""me" FROM "new'name" ORDER BY id"#),
            ["1|x2", "2|y"]
        );
        assert_eq!(
            p.rows("SELECT tbl, hub FROM _tributary_tables"),
            [r#"new'name|"public"."new'name""#]
        );
        assert_eq!(
            p.rows("SELECT DISTINCT tbl FROM _tributary_versions"),
            ["new'name"]
        );
        assert_eq!(p.rows("SELECT tbl FROM _tributary_outbox"), ["new'name"]);
        p.app(r#"UPDATE "new'name" SET "na""me" = 'y2' WHERE id = 2"#);
        assert_eq!(
            p.rows("SELECT tbl, pk, base FROM _tributary_outbox ORDER BY seq"),
            [r#"new'name|{"id":1}|4"#, r#"new'name|{"id":2}|4"#]
        );

        // To another schema: the file name is `schema.name`.
        let other = table("s\"x", "t", from.columns.clone());
        let (m, _) = p.alter(&change(&to, other.clone())).unwrap().unwrap();
        assert_eq!(m.plain, "s\"x.t");
        assert_eq!(
            p.rows(r#"SELECT id, "na""me" FROM "s""x.t" ORDER BY id"#),
            ["1|x2", "2|y2"]
        );
        assert_eq!(
            p.rows("SELECT tbl, hub FROM _tributary_tables"),
            [r#"s"x.t|"s""x"."t""#]
        );
        assert_eq!(
            p.rows("SELECT DISTINCT tbl FROM _tributary_versions"),
            ["s\"x.t"]
        );
        assert_eq!(
            p.rows("SELECT DISTINCT tbl FROM _tributary_outbox"),
            ["s\"x.t"]
        );
        assert!(
            p.alter(&change(&to, other.clone())).unwrap().is_none(),
            "the old name is gone"
        );

        // Onto a table the file already has: refused, nothing moves.
        p.app("CREATE TABLE taken (x)");
        let err = p
            .alter(&change(
                &other,
                table("public", "taken", from.columns.clone()),
            ))
            .unwrap_err();
        assert!(matches!(err, PeerError::Sqlite(_)), "{err:?}");
        assert_eq!(p.rows(r#"SELECT count(*) FROM "s""x.t""#), ["2"]);
        assert_eq!(p.rows("SELECT tbl FROM _tributary_tables"), ["s\"x.t"]);
    }

    #[test]
    fn a_table_renamed_only_in_case_follows() {
        let from = table("public", "Tab'le", vec![col("id", 23, true)]);
        let p = peer(&from, &[&[Some("1")]], 1);
        let (m, _) = p
            .alter(&change(
                &from,
                table("public", "tab'le", from.columns.clone()),
            ))
            .unwrap()
            .unwrap();
        assert_eq!(m.plain, "tab'le");
        assert_eq!(
            p.one("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'tab''le'"),
            "tab'le"
        );
        assert_eq!(p.rows("SELECT tbl FROM _tributary_tables"), ["tab'le"]);
        p.app(r#"DELETE FROM "tab'le""#);
        assert_eq!(
            p.rows("SELECT tbl, pk, op, base FROM _tributary_outbox"),
            [r#"tab'le|{"id":1}|D|1"#]
        );
    }

    #[test]
    fn dropping_a_column_keeps_the_others_and_reports_edits_only_it_carried() {
        let from = hostile();
        let p = peer(
            &from,
            &[
                &[Some("1"), Some("x"), Some("p")],
                &[Some("2"), Some("y"), Some("q")],
                &[Some("3"), Some("z"), Some("s")],
            ],
            2,
        );
        p.app(
            r#"UPDATE "tab'le" SET "na""me" = 'x2' WHERE id = 1;
               UPDATE "tab'le" SET "na""me" = 'y2', "a b" = 'q2' WHERE id = 2;
               INSERT INTO "tab'le" VALUES (4, 'w', 'r');"#,
        );
        let mut c = change(
            &from,
            table(
                "public",
                "tab'le",
                vec![col("id", 23, true), col("a b", 25, false)],
            ),
        );
        c.dropped = vec!["na\"me".into()];
        let (_, notes) = p.alter(&c).unwrap().unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(p.columns("tab'le"), ["id", "a b"]);
        assert_eq!(
            p.rows(r#"SELECT id, "a b" FROM "tab'le" ORDER BY id"#),
            ["1|p", "2|q2", "3|s", "4|r"]
        );
        assert_eq!(
            p.rows(OUTBOX),
            [
                r#"{"id":2}|U|{"id":2,"a b":"q2"}|["a b"]|2"#,
                r#"{"id":4}|I|{"id":4,"a b":"r"}|NULL|NULL"#,
            ]
        );
        let detail = r#"column "na""me" was dropped at the hub; this edit of it was not sent"#;
        assert_eq!(
            p.rows("SELECT tbl, pk, op, outcome, detail, local_data FROM _tributary_errors ORDER BY pk"),
            [
                format!(r#"tab'le|{{"id":1}}|U|REJECTED|{detail}|{{"id":1,"na\"me":"x2","a b":"p"}}"#),
                format!(r#"tab'le|{{"id":2}}|U|REJECTED|{detail}|{{"id":2,"na\"me":"y2","a b":"q2"}}"#),
            ]
        );
    }

    #[test]
    fn a_drop_the_app_depends_on_keeps_the_column_with_a_note() {
        let from = table(
            "public",
            "tab'le",
            vec![
                col("id", 23, true),
                col("na\"me", 25, false),
                col("]", 25, false),
                col("a b", 25, false),
            ],
        );
        let p = peer(&from, &[&[Some("1"), Some("x"), Some("y"), Some("p")]], 1);
        p.app(
            r#"CREATE INDEX "i'x" ON "tab'le" ("na""me");
               CREATE VIEW "v]" AS SELECT "tab'le"."]" FROM "tab'le";"#,
        );
        // `a b` takes the name of a dropped column the file must keep.
        let mut c = change(
            &from,
            table(
                "public",
                "tab'le",
                vec![col("id", 23, true), col("na\"me", 25, false)],
            ),
        );
        c.dropped = vec!["na\"me".into(), "]".into()];
        c.renamed = renames(&[("a b", "na\"me")]);
        let (_, notes) = p.alter(&c).unwrap().unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains(r#"column "na""me""#)
                && notes[0].contains(r#"now named "na""me_dropped""#)
        );
        assert!(notes[0].contains("i'x"), "{notes:?}");
        assert!(
            notes[1].contains(r#"column "]""#) && notes[1].contains("v]"),
            "{notes:?}"
        );
        assert_eq!(p.columns("tab'le"), ["id", "na\"me_dropped", "]", "na\"me"]);
        assert_eq!(
            p.one(r#"SELECT id, "na""me_dropped", "]", "na""me" FROM "tab'le""#),
            "1|x|y|p"
        );
        assert_eq!(p.one(r#"SELECT * FROM "v]""#), "y");
        assert!(p
            .one(r#"SELECT sql FROM sqlite_master WHERE name = 'i''x'"#)
            .contains("na\"\"me_dropped"));
        // The hub's values go to the new column, not the kept ones.
        let m = Mapped {
            name: ident("tab'le"),
            plain: "tab'le".into(),
        };
        p.file.begin().unwrap();
        sync_row(&p.file, &m, &c.def, &[Some("2"), Some("hub")], 2);
        p.file.commit("slot", "0/3", "7/5").unwrap();
        assert_eq!(
            p.one(r#"SELECT "na""me_dropped", "]", "na""me" FROM "tab'le" WHERE id = 2"#),
            "NULL|NULL|hub"
        );
    }

    #[test]
    fn a_type_change_rebuilds_the_table_with_the_new_type_and_keeps_the_apps_objects() {
        let from = table(
            "public",
            "tab'le",
            vec![
                col("id", 23, true),
                col("]", 23, false),
                col("a b", 25, false),
            ],
        );
        let p = peer(
            &from,
            &[
                &[Some("1"), Some("5"), Some("p")],
                &[Some("2"), Some("6"), Some("q")],
            ],
            3,
        );
        p.app(
            r#"ALTER TABLE "tab'le" ADD COLUMN "own'" TEXT NOT NULL DEFAULT 'z';
               CREATE INDEX "a b'" ON "tab'le" ("a b");
               CREATE TABLE log (x);
               CREATE TRIGGER "log'it" AFTER INSERT ON "tab'le" BEGIN INSERT INTO log VALUES (NEW.id); END;
               UPDATE "tab'le" SET "]" = 7, "own'" = 'mine' WHERE id = 1;"#,
        );
        let mut c = change(
            &from,
            table(
                "public",
                "tab'le",
                vec![
                    col("id", 23, true),
                    col("]", 25, false),
                    col("a b", 25, false),
                ],
            ),
        );
        c.rebuild = true;
        let (_, notes) = p.alter(&c).unwrap().unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            p.rows(r#"SELECT name, type, "notnull", coalesce(dflt_value, ''), pk FROM pragma_table_info('tab''le')"#),
            ["id|INTEGER|0||1", "]|TEXT|0||0", "a b|TEXT|0||0", "own'|TEXT|1|'z'|0"]
        );
        assert_eq!(
            p.rows(r#"SELECT id, "]", typeof("]"), "a b", "own'" FROM "tab'le" ORDER BY id"#),
            ["1|7|text|p|mine", "2|6|text|q|z"]
        );
        assert_eq!(
            p.rows("SELECT pk || '|' || version FROM _tributary_versions ORDER BY pk"),
            [r#"{"id":1}|3"#, r#"{"id":2}|3"#]
        );
        assert_eq!(
            p.rows("SELECT pk, op FROM _tributary_outbox"),
            [r#"{"id":1}|U"#]
        );
        assert_eq!(
            p.rows(r#"SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'a b'''"#),
            ["a b'"]
        );
        // The app's trigger and the capture triggers both work on the rebuilt table.
        p.app(r#"INSERT INTO "tab'le" (id, "]", "a b") VALUES (3, '8', 'r'); UPDATE "tab'le" SET "a b" = 'q2' WHERE id = 2;"#);
        assert_eq!(p.rows("SELECT x FROM log"), ["3"]);
        assert_eq!(
            p.rows("SELECT pk, op, coalesce(base, 'NULL') FROM _tributary_outbox ORDER BY seq"),
            [r#"{"id":1}|U|3"#, r#"{"id":3}|I|NULL"#, r#"{"id":2}|U|3"#]
        );
    }

    #[test]
    fn a_key_change_rebuilds_with_the_new_key_and_recomputes_outbox_keys() {
        let from = table(
            "public",
            "tab'le",
            vec![
                col("id", 23, true),
                col("a b", 25, false),
                col("]", 23, false),
            ],
        );
        let p = peer(
            &from,
            &[
                &[Some("1"), Some("x"), Some("10")],
                &[Some("2"), Some("y"), Some("20")],
                &[Some("3"), Some("z"), Some("30")],
            ],
            5,
        );
        p.app(
            r#"UPDATE "tab'le" SET "]" = 11 WHERE id = 1;
               DELETE FROM "tab'le" WHERE id = 2;
               INSERT INTO "tab'le" VALUES (4, 'w', 40);"#,
        );
        let def = table(
            "public",
            "tab'le",
            vec![
                col("id", 23, false),
                col("a b", 25, true),
                col("]", 23, false),
            ],
        );
        let mut c = change(&from, def.clone());
        c.rebuild = true;
        let (m, notes) = p.alter(&c).unwrap().unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            p.rows(r#"SELECT name, pk FROM pragma_table_info('tab''le')"#),
            ["id|0", "a b|1", "]|0"]
        );
        assert_eq!(
            p.rows(r#"SELECT id, "a b", "]" FROM "tab'le" ORDER BY id"#),
            ["1|x|11", "3|z|30", "4|w|40"]
        );
        assert!(p.rows("SELECT * FROM _tributary_versions").is_empty());
        let kx = p.one("SELECT json_object('a b', 'x')");
        let kw = p.one("SELECT json_object('a b', 'w')");
        assert_eq!(
            p.rows("SELECT pk, op FROM _tributary_outbox ORDER BY seq"),
            [format!("{kx}|U"), format!("{kw}|I")]
        );
        assert_eq!(
            p.rows("SELECT pk, op, outcome, detail, coalesce(local_data, 'NULL') FROM _tributary_errors"),
            [r#"{"id":2}|D|REJECTED|deleted before the key of "tab'le" changed at the hub; not sent|NULL"#]
        );
        // Later edits collapse into the recomputed entries; the hub's
        // re-sent revisions are found under the new key.
        p.file.begin().unwrap();
        sync_row(&p.file, &m, &def, &[Some("3"), Some("z"), Some("30")], 9);
        p.file.commit("slot", "0/3", "7/5").unwrap();
        p.app(r#"UPDATE "tab'le" SET "]" = 12 WHERE "a b" = 'x'; UPDATE "tab'le" SET "]" = 31 WHERE "a b" = 'z';"#);
        assert_eq!(
            p.rows(
                "SELECT pk, op, gen, coalesce(base, 'NULL') FROM _tributary_outbox ORDER BY seq"
            ),
            [
                format!("{kx}|U|1|5"),
                format!("{kw}|I|0|NULL"),
                r#"{"a b":"z"}|U|0|9"#.to_string()
            ]
        );
    }

    #[test]
    fn edits_that_meet_under_a_new_key_keep_the_newest() {
        let from = table(
            "public",
            "tab'le",
            vec![col("id", 23, true), col("a b", 25, false)],
        );
        let p = peer(
            &from,
            &[&[Some("1"), Some("x")], &[Some("2"), Some("y")]],
            1,
        );
        p.app(r#"UPDATE "tab'le" SET "a b" = 'x1' WHERE id = 1; UPDATE "tab'le" SET "a b" = 'x1' WHERE id = 2;"#);
        let mut c = change(
            &from,
            table(
                "public",
                "tab'le",
                vec![col("id", 23, false), col("a b", 25, true)],
            ),
        );
        c.rebuild = true;
        let (_, notes) = p.alter(&c).unwrap().unwrap();
        assert_eq!(notes.len(), 1, "one row's new key is taken: {notes:?}");
        assert_eq!(
            p.rows("SELECT pk, data FROM _tributary_outbox"),
            [r#"{"a b":"x1"}|{"id":2,"a b":"x1"}"#]
        );
        assert_eq!(
            p.rows("SELECT pk, op, local_data FROM _tributary_errors"),
            [r#"{"a b":"x1"}|U|{"id":1,"a b":"x1"}"#]
        );
    }

    #[test]
    fn a_table_the_file_does_not_hold_is_left_alone() {
        let from = hostile();
        let p = peer(&from, &[&[Some("1"), Some("x"), Some("p")]], 1);
        let other = table("public", "other", from.columns.clone());
        let mut c = change(&other, table("public", "tab'le", vec![col("id", 23, true)]));
        c.dropped = vec!["na\"me".into()];
        assert!(p.alter(&c).unwrap().is_none());
        assert_eq!(p.columns("tab'le"), ["id", "na\"me", "a b"]);
    }

    #[test]
    fn rewritten_keys_are_written_as_sqlite_writes_them() {
        let c = Connection::open_in_memory().unwrap();
        let names = ["na\"me", "]", "a b", "t\\ab\t\u{1}é"];
        for (i, old) in names.iter().enumerate() {
            let new = names[(i + 1) % names.len()];
            let (before, after): (String, String) = c
                .query_row(
                    "SELECT json_object(?1, 1.5, 'k', 'x''\"\\'), json_object('k', 'x''\"\\', ?2, 1.5)",
                    [old, &new],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let renamed = HashMap::from([(*old, new)]);
            let m = members(&before, &HashSet::new(), &renamed).unwrap();
            assert_eq!(key_text(&m, &["k", new]), after);
        }
    }
}
