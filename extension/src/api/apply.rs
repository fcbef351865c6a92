//! `tributary._apply`: the engine behind `sync_apply` (sql/apply.sql). The
//! batch is checked and typed by batch.rs first.
//!
//! ```text
//!  lock the table's apply lock (one applier per table at a time)
//!  number the batch's keys by first appearance (state lives in vectors)
//!  load, for every key:  the live row (FOR UPDATE, with its ctid) + its tombstone
//!  decide every change in order, in memory  (resolver.rs; duplicates of a key
//!                                            see each other's effect)
//!  write set-based, in batch order, stamped by the engine (apply mode):
//!    INSERT new keys (in a subtransaction: a key inserted meanwhile is 40001),
//!    UPDATE the locked rows by ctid, delete killed rows, upsert tombstones,
//!    insert conflicts
//!  return one outcome per change
//! ```
//!
//! Values are compared as canonical JSON text (what `row_json` prints), and
//! travel to the writing statements as their input text, one text array per
//! column, cast by the statement.

use crate::api::batch;
use crate::api::trigger::ApplyMode;
use crate::colvers::{self, ColVersion};
use crate::jsontext;
use crate::resolver::{self, Cell, Change, KeyState, Op, Policy, Priorities, Stamp, Text};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::collections::BTreeMap;

/// Hash maps keyed by the batch's keys: foldhash (fast, seeded per
/// process) instead of SipHash, which was a tenth of the engine's own time.
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The columns of the table: name -> attnum, and the key columns.
struct Table {
    name: String,
    /// Keyed by the interned column names the engine's maps share.
    attnum: Map<Text, u16>,
    pk: Vec<String>,
}

struct Loaded {
    state: KeyState,
    /// The locked row's address, for its UPDATE (live rows only).
    ctid: Option<String>,
    /// The xid of each column's current stamp, to keep it when unchanged.
    xids: Vec<(Text, i64)>,
    created_xid: i64,
}

impl Loaded {
    /// The key's cells from a row's JSON text and its packed stamps.
    fn fill(&mut self, t: &Table, row: &str, entries: Option<&[ColVersion]>, creator: &Text) {
        for (col, value) in jsontext::split_object(row).unwrap_or_default() {
            let (col, a) = match t.attnum.get_key_value(&*col) {
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

fn spi_err(e: pgrx::spi::SpiError) -> ! {
    pgrx::error!("tributary: internal query failed: {e}")
}

/// The table's rules, and the custom resolver's name when it has one.
fn load_priorities(client: &SpiClient<'_>, tbl: pg_sys::Oid) -> (Priorities, Option<String>) {
    let mut p = Priorities::default();
    let row = client
        .select(
            "SELECT policy, resolver::oid::regproc::text FROM tributary.policies WHERE relid = $1",
            None,
            &[tbl.into()],
        )
        .unwrap_or_else(|e| spi_err(e))
        .first();
    let policy: Option<String> = row.get(1).unwrap_or(None);
    let resolver: Option<String> = row.get(2).unwrap_or(None);
    p.policy = match policy.as_deref() {
        Some("last_writer_wins") => Policy::LastWriterWins,
        Some("hub_wins") => Policy::HubWins,
        Some("peer_wins") => Policy::PeerWins,
        Some("custom") => Policy::Custom,
        _ => Policy::Ladder,
    };
    for r in client
        .select("SELECT name, priority FROM tributary.peers", None, &[])
        .unwrap_or_else(|e| spi_err(e))
    {
        let n: String = r.get(1).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let v: i32 = r.get(2).unwrap_or_else(|e| spi_err(e)).unwrap_or(i32::MAX);
        p.peers.insert(n, v);
    }
    (p, resolver)
}

/// A JSON object text from canonical value texts.
fn object_text<'a>(cells: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = Vec::new();
    out.push(b'{');
    for (i, (k, v)) in cells.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        jsontext::push_string(&mut out, k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'}');
    String::from_utf8_lossy(&out).into_owned()
}

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

/// The packed stamps to store for a state: an entry per column, with `xid`
/// where the stamp changed in this batch (0 for a tombstone). A creation
/// entry at revision 0 makes the columns the state never set rank below
/// any write.
fn colmeta_for(t: &Table, state: &KeyState, before: Option<&Loaded>, xid: i64) -> Vec<u8> {
    let mut entries = vec![ColVersion {
        attnum: colvers::CREATION,
        revision: 0,
        xid: 0,
        origin: String::new(),
        ts: 0,
    }];
    for (col, cell) in &state.cells {
        let Some(a) = t.attnum.get(col) else { continue };
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
            "tributary: an origin of {} bytes is too long (at most 255)",
            e.0
        ),
    }
}

/// A key as jsonb text, returned as jsonb.
pub struct KeyJson(String);

impl IntoDatum for KeyJson {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let c = std::ffi::CString::new(self.0).ok()?;
        unsafe { pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(c.as_ptr().into())]) }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

pgrx::impl_sql_translatable!(KeyJson, "jsonb");

// SAFETY: returns the datum into_datum built, or NULL.
unsafe impl pgrx::callconv::BoxRet for KeyJson {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        match self.into_datum() {
            Some(d) => unsafe { fcinfo.return_raw_datum(d) },
            None => fcinfo.return_null(),
        }
    }
}

#[pg_schema]
pub mod tributary {
    use super::*;

    /// The resolver engine behind `sync_apply` (sql/apply.sql, which checks
    /// that the table is tracked first). VOLATILE, not strict, not SECURITY
    /// DEFINER (the caller's privileges on the table apply; internal tables
    /// are guarded by row-level security). Executable by anyone, it acts
    /// only for roles that may run sync_apply.
    #[pg_extern(
        volatile,
        sql = r#"
CREATE FUNCTION tributary._apply(tbl regclass, changes jsonb, origin text)
RETURNS TABLE (pk jsonb, outcome text, row_version bigint, conflict_id bigint, detail text)
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', '_apply_wrapper';
"#
    )]
    // pgrx generates the SQL from the spelled-out TableIterator type, so it
    // cannot hide behind an alias.
    #[allow(clippy::type_complexity)]
    fn _apply(
        tbl: Option<pg_sys::Oid>,
        fcinfo: pg_sys::FunctionCallInfo,
    ) -> TableIterator<
        'static,
        (
            name!(pk, KeyJson),
            name!(outcome, &'static str),
            name!(row_version, Option<i64>),
            name!(conflict_id, Option<i64>),
            name!(detail, String),
        ),
    > {
        // `changes` (jsonb) and `origin` are read from the call frame: the
        // batch is read as the jsonb datum it is, never printed and parsed
        // again.
        let (changes, origin) = unsafe {
            let args = (*fcinfo).args.as_slice((*fcinfo).nargs as usize);
            let origin = String::from_datum(args[2].value, args[2].isnull);
            ((!args[1].isnull).then_some(args[1].value), origin)
        };
        let tbl = tbl.unwrap_or(pg_sys::InvalidOid);
        let (rows, keys) = Spi::connect_mut(|client| run(client, tbl, changes, origin.as_deref()));
        TableIterator::new(rows.into_iter().map(
            move |(_, k, outcome, version, conflict, detail)| {
                (KeyJson(keys[k].clone()), outcome, version, conflict, detail)
            },
        ))
    }
}

/// One outcome: the change's position, its key's number, the outcome,
/// the row's version, the conflict's id, the detail.
type Row = (i32, usize, &'static str, Option<i64>, Option<i64>, String);

fn run(
    client: &mut SpiClient<'_>,
    tbl: pg_sys::Oid,
    changes: Option<pg_sys::Datum>,
    origin: Option<&str>,
) -> (Vec<Row>, Vec<String>) {
    // Phase timings, at DEBUG1 (SET client_min_messages = debug1 to see them).
    let t0 = std::time::Instant::now();
    macro_rules! tick {
        ($n:expr) => {
            pgrx::debug1!("tributary: sync_apply {} after {:?}", $n, t0.elapsed())
        };
    }
    // Callable by anyone, but it only acts for those who may run sync_apply.
    let allowed: Option<bool> = client
        .select(
            "SELECT bool_and(has_function_privilege(p.oid, 'EXECUTE')) FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'tributary'
              WHERE p.proname = 'sync_apply'",
            None,
            &[],
        )
        .unwrap_or_else(|e| spi_err(e))
        .first()
        .get(1)
        .unwrap_or_else(|e| spi_err(e));
    if allowed != Some(true) {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied for function sync_apply",
            function_name!(),
        )
        .set_detail("tributary._apply is the engine of sync_apply and acts only for roles that may execute it.")
        .set_hint("GRANT EXECUTE ON FUNCTION sync_apply(regclass, jsonb, text) TO the peer's role.")
        .report(PgLogLevel::ERROR);
    }
    // The table is tracked (sync_apply checked, with its own SQLSTATE).
    let tbl_arg = || -> pgrx::datum::DatumWithOid<'static> {
        if tbl == pg_sys::InvalidOid {
            pgrx::datum::DatumWithOid::null_oid(pg_sys::REGCLASSOID)
        } else {
            tbl.into()
        }
    };
    let head = client
        .select(
            "SELECT $1::regclass::text, (tributary._tracked($1)).pk_columns,
                    coalesce(current_setting('tributary.retrying', true), '') = 'on'",
            None,
            &[tbl_arg()],
        )
        .unwrap_or_else(|e| spi_err(e))
        .first();
    let name: String = head
        .get(1)
        .unwrap_or_else(|e| spi_err(e))
        .unwrap_or_default();
    let pk_columns: Vec<String> = head
        .get(2)
        .unwrap_or_else(|e| spi_err(e))
        .unwrap_or_default();
    let retrying: bool = head.get(3).unwrap_or_else(|e| spi_err(e)).unwrap_or(false);
    let Some(origin) = origin else {
        bad_input(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "origin must not be NULL",
            "sync_apply needs the name of the peer the changes come from.".into(),
            "Pass the peer's name, e.g. sync_apply('customers', $1, 'CRM'); it is stamped on the writes so they are not echoed back.",
        )
    };
    if origin.len() > 255 || origin.is_empty() {
        bad_input(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "origin must be a peer name of 1 to 255 bytes",
            format!(
                "origin = {}.",
                quote_literal(&origin.chars().take(80).collect::<String>())
            ),
            "Pass the peer's name, e.g. 'CRM'.",
        )
    }
    let Some(changes) = changes else {
        bad_input(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "changes must be a JSON array",
            "Got NULL.".into(),
            "Pass [{\"op\":\"U\",\"pk\":{...},\"data\":{...},\"version\":N}, ...].",
        )
    };
    let (prio, custom_fn) = load_priorities(client, tbl);
    let mut bt = batch::Table::load(tbl, name, &pk_columns);

    // The batch, checked and typed in one pass; array and composite values
    // are typed by jsonb_populate_record, one at a time.
    let populate_sql = format!(
        "SELECT tributary.row_json(jsonb_populate_record(NULL::{}, jsonb_build_object($1::text, $2::text::jsonb)))::text",
        bt.name
    );
    let mut populate = |col: &str, json: &str| -> String {
        let row: Option<String> = client
            .select(
                &populate_sql,
                None,
                &[col.to_string().into(), json.to_string().into()],
            )
            .unwrap_or_else(|e| spi_err(e))
            .first()
            .get(1)
            .unwrap_or_else(|e| spi_err(e));
        jsontext::split_object(row.as_deref().unwrap_or("{}"))
            .unwrap_or_default()
            .into_iter()
            .find(|(k, _)| k == col)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| "null".into())
    };
    let mut parsed = batch::parse(
        changes,
        &mut bt,
        prio.policy == Policy::LastWriterWins,
        &mut populate,
    );
    let t = Table {
        name: bt.name.clone(),
        attnum: bt
            .columns
            .iter()
            .map(|c| (c.key.clone(), c.attnum as u16))
            .collect(),
        pk: pk_columns,
    };
    tick!("typed");

    // One applier per table at a time: decisions read the rows they write.
    client
        .update(
            "SELECT pg_advisory_xact_lock(8315741522239766528 + $1::oid::bigint)",
            None,
            &[tbl.into()],
        )
        .unwrap_or_else(|e| spi_err(e));

    // The hub's state of every key in the batch: the live rows, locked,
    // found by their key values cast from text.
    // Keys are numbered by first appearance: the engine's state is kept in
    // vectors by that number, and rows are written in that order.
    let mut key_cols: Vec<TextCol> = vec![TextCol::default(); bt.pk.len()];
    let mut keys: Vec<String> = Vec::new();
    let mut kidx: Vec<usize> = Vec::with_capacity(parsed.changes.len());
    {
        let mut seen: Map<&str, usize> =
            Map::with_capacity_and_hasher(parsed.changes.len(), Default::default());
        for p in &parsed.changes {
            let next = keys.len();
            let k = *seen.entry(p.key.as_str()).or_insert(next);
            kidx.push(k);
            if k < next {
                continue;
            }
            keys.push(p.key.clone());
            for (n, (col, v)) in bt.pk.iter().zip(&p.pk_values).enumerate() {
                key_cols[n].push_input(&bt, *col, v);
            }
        }
    }
    let key_index: Map<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let origin_t: Text = origin.into();
    let batch: Vec<Change> = std::mem::take(&mut parsed.changes)
        .into_iter()
        .map(|p| Change {
            op: p.op,
            version: p.version,
            origin: origin_t.clone(),
            values: p.values,
            expect_version: p.expect_version,
            ts: p.ts,
        })
        .collect();
    let mut loaded: Vec<Option<Loaded>> = (0..keys.len()).map(|_| None).collect();
    let live = client
        .select(
            &load_sql(
                &bt,
                "r.sync_version, r.sync_origin, r.sync_colmeta, r.sync_created_xid, tributary.row_json(r)::text,
                 r.ctid::text",
                true,
            ),
            None,
            &key_args(&key_cols),
        )
        .unwrap_or_else(|e| spi_err(e));
    for r in live {
        let version: i64 = r.get(1).unwrap_or_else(|e| spi_err(e)).unwrap_or(1);
        let row_origin: String = r.get(2).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let meta: Option<Vec<u8>> = r.get(3).unwrap_or_else(|e| spi_err(e));
        let created_xid: i64 = r.get(4).unwrap_or_else(|e| spi_err(e)).unwrap_or(0);
        let row: &str = r.get(5).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let ctid: Option<String> = r.get(6).unwrap_or_else(|e| spi_err(e));
        let entries = meta.map(|m| colvers::decode(&m));
        let mut l = Loaded {
            ctid,
            state: KeyState {
                alive: true,
                version,
                cells: BTreeMap::new(),
                deleted: None,
                origin: row_origin.into(),
            },
            xids: Vec::new(),
            created_xid,
        };
        let creator = l.state.origin.clone();
        l.fill(&t, row, entries.as_deref(), &creator);
        let key = bt.key_text(|c| l.state.cells.get(c).map(|v| &*v.value));
        if let Some(k) = key_index.get(key.as_str()) {
            loaded[*k] = Some(l);
        }
    }
    tick!("live");
    // Tombstones, when the table has any.
    let any_dead = client
        .select(
            "SELECT EXISTS (SELECT 1 FROM tributary.tombstones WHERE relid = $1)",
            None,
            &[tbl.into()],
        )
        .unwrap_or_else(|e| spi_err(e))
        .first()
        .get::<bool>(1)
        .unwrap_or_else(|e| spi_err(e))
        .unwrap_or(false);
    let dead = if any_dead {
        let keys_arg: Vec<String> = keys.clone();
        Some(
            client
                .select(
                    &format!(
                        "SELECT d.pk::text, d.version, coalesce(d.origin, ''), d.colmeta, coalesce(d.row_origin, ''),
                                coalesce(d.created_xid, 0), tributary.row_json(jsonb_populate_record(NULL::{tbl}, d.data))::text,
                                coalesce(d.ts, 0)
                           FROM tributary.tombstones d
                          WHERE d.relid = $2 AND d.pk = ANY ($1::text[]::jsonb[])
                            FOR UPDATE OF d",
                        tbl = t.name
                    ),
                    None,
                    &[keys_arg.into(), tbl.into()],
                )
                .unwrap_or_else(|e| spi_err(e)),
        )
    } else {
        None
    };
    for r in dead.into_iter().flatten() {
        let key: String = r.get(1).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let version: i64 = r.get(2).unwrap_or_else(|e| spi_err(e)).unwrap_or(1);
        let del_origin: String = r.get(3).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let deleted = Stamp {
            revision: version,
            origin: del_origin.as_str().into(),
            ts: r.get::<i64>(8).unwrap_or_else(|e| spi_err(e)).unwrap_or(0),
        };
        let Some(&k) = key_index.get(key.as_str()) else {
            continue;
        };
        if let Some(l) = loaded[k].as_mut() {
            // A live row and a tombstone: the key was re-created after a
            // delete; the delete still counts for ordering.
            l.state.deleted = Some(deleted);
            continue;
        }
        let meta: Option<Vec<u8>> = r.get(4).unwrap_or_else(|e| spi_err(e));
        let creator: String = r.get(5).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let created_xid: i64 = r.get(6).unwrap_or_else(|e| spi_err(e)).unwrap_or(0);
        let image: String = r.get(7).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let entries = meta.map(|m| colvers::decode(&m));
        let mut l = Loaded {
            ctid: None,
            state: KeyState {
                alive: false,
                version,
                cells: BTreeMap::new(),
                deleted: Some(deleted),
                origin: del_origin.into(),
            },
            xids: Vec::new(),
            created_xid,
        };
        l.fill(&t, &image, entries.as_deref(), &Text::from(creator));
        loaded[k] = Some(l);
    }

    tick!("loaded");
    // Decide, in order.
    let mut current: Vec<Option<KeyState>> = (0..keys.len()).map(|_| None).collect();
    let mut out: Vec<Row> = Vec::with_capacity(batch.len());
    let mut conflicts: Vec<(usize, ConflictRow)> = Vec::new();
    for (i, change) in batch.iter().enumerate() {
        let k = kidx[i];
        let key = &keys[k];
        let before: Option<&KeyState> = current[k]
            .as_ref()
            .or_else(|| loaded[k].as_ref().map(|l| &l.state));
        let mut d = resolver::resolve(before, change, &prio);
        if !d.custom.is_empty() {
            merge_with_user_function(client, &t, custom_fn.as_deref(), before, change, &mut d);
        }
        if let Some(c) = &d.conflict {
            let local = before
                .filter(|b| b.alive)
                .map(|b| object_text(b.cells.iter().map(|(k, c)| (&**k, &*c.value))));
            let remote = (change.op != Op::Delete)
                .then(|| object_text(change.values.iter().map(|(k, v)| (&**k, &**v))));
            conflicts.push((
                i,
                ConflictRow {
                    pk: key.clone(),
                    columns: c.columns.clone(),
                    local,
                    remote,
                    local_version: before.map(|b| b.version),
                    remote_version: change.version,
                    remote_op: match change.op {
                        Op::Insert => "I",
                        Op::Update => "U",
                        Op::Delete => "D",
                    },
                    interim: if c.remote_won { "remote" } else { "local" },
                    detail: d.detail.clone(),
                },
            ));
        }
        out.push((
            (i + 1) as i32,
            k,
            d.outcome.as_str(),
            Some(d.state.version),
            None,
            std::mem::take(&mut d.detail),
        ));
        current[k] = Some(d.state);
    }

    tick!("decided");
    // Foreign keys: a row whose parent is missing is not written. Every
    // change of its key in this batch is parked (DEFERRED), in order.
    let deferred = missing_parents(client, &t, tbl, &keys, &current, &loaded);
    if !deferred.is_empty() {
        let retrying = client
            .select(
                "SELECT coalesce(current_setting('tributary.retrying', true), '') = 'on'",
                None,
                &[],
            )
            .unwrap_or_else(|e| spi_err(e))
            .first()
            .get::<bool>(1)
            .unwrap_or_else(|e| spi_err(e))
            .unwrap_or(false);
        // The parked changes as they were sent (read again only now: rare).
        let raw: Map<i32, String> = batch
            .iter()
            .enumerate()
            .filter(|(i, _)| deferred.contains_key(&keys[kidx[*i]]))
            .map(|(i, _)| (i as i32 + 1, parsed.change_text(i + 1)))
            .collect();
        let mut parked: Vec<String> = Vec::new();
        for (i, key) in kidx.iter().map(|k| &keys[*k]).enumerate() {
            let Some((parent, why)) = deferred.get(key) else {
                continue;
            };
            out[i].2 = "DEFERRED";
            out[i].3 = None;
            out[i].5 = why.clone();
            parked.push(
                serde_json::json!({"pk": key, "change": raw.get(&(i as i32 + 1)), "parent": parent, "why": why})
                    .to_string(),
            );
        }
        conflicts.retain(|(i, _)| !deferred.contains_key(&keys[kidx[*i]]));
        for key in deferred.keys() {
            if let Some(&k) = key_index.get(key.as_str()) {
                current[k] = loaded[k].as_ref().map(|l| l.state.clone());
            }
        }
        if !retrying {
            client
                .update(
                    "INSERT INTO tributary.pending (relid, pk, origin, change, parent_relid, last_error)
                     SELECT $2, (x.e ->> 'pk')::jsonb, $3, (x.e ->> 'change')::jsonb,
                            (x.e ->> 'parent')::bigint::oid, x.e ->> 'why'
                       FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS x(e, n)
                      ORDER BY x.n",
                    None,
                    &[format!("[{}]", parked.join(",")).into(), tbl.into(), origin.to_string().into()],
                )
                .unwrap_or_else(|e| spi_err(e));
        }
    }

    tick!("fk");
    // Write what changed, set-based, keeping the resolver's stamps. Live
    // rows go in as typed columns (their input text, cast by the
    // statement): an INSERT for keys that had no row, an UPDATE of the
    // rows locked above.
    let xid = unsafe { pg_sys::GetTopFullTransactionId() }.value as i64;
    let ncols = bt.columns.len();
    let mut ins = Rows::new(ncols);
    let mut upd = Rows::new(ncols);
    let mut kills: Vec<String> = Vec::new();
    let mut tombs: Vec<String> = Vec::new();
    for (k, state) in current.iter().enumerate() {
        let Some(state) = state else { continue };
        let key = &keys[k];
        let before = loaded[k].as_ref();
        if before.map(|b| &b.state) == Some(state) {
            continue;
        }
        if state.alive {
            let rows = match before.filter(|b| b.state.alive) {
                Some(b) => {
                    upd.ctid.push(b.ctid.clone());
                    &mut upd
                }
                None => &mut ins,
            };
            for (i, c) in bt.columns.iter().enumerate() {
                let v = state
                    .cells
                    .get(c.name.as_str())
                    .map(|c| &*c.value)
                    .unwrap_or("null");
                rows.cols[i].push_input(&bt, i, v);
            }
            rows.version.push(state.version);
            rows.origin.push(state.origin.to_string());
            rows.colmeta.push(colmeta_for(&t, state, before, xid));
        } else {
            let cells = object_text(state.cells.iter().map(|(k, c)| (&**k, &*c.value)));
            let colmeta = hex(&colmeta_for(&t, state, before, 0));
            if before.is_some_and(|b| b.state.alive) {
                kills.push(key.clone());
            }
            let del = state.deleted.clone().unwrap_or(Stamp {
                revision: state.version,
                origin: state.origin.clone(),
                ts: 0,
            });
            tombs.push(
                serde_json::json!({"pk": "", "data": "", "v": del.revision, "o": &*del.origin, "ts": del.ts, "m": colmeta,
                                   "ro": &*state.origin, "cx": before.map(|b| b.created_xid)})
                    .to_string()
                    .replacen("\"pk\":\"\"", &format!("\"pk\":{key}"), 1)
                    .replacen("\"data\":\"\"", &format!("\"data\":{cells}"), 1),
            );
        }
    }

    tick!("built");
    let _guard = ApplyMode::enter(tbl);
    // The rows' parameters: one array per column, sync_version,
    // sync_origin, sync_colmeta; then the xid; for updates, the addresses.
    let unnest = |ctid: bool| {
        let types = std::iter::repeat_n("text[]", ncols).chain(["int8[]", "text[]", "bytea[]"]);
        let mut args: Vec<String> = types
            .enumerate()
            .map(|(i, ty)| format!("${}::{ty}", i + 1))
            .collect();
        let mut names: Vec<String> = (1..=ncols).map(|i| format!("c{i}")).collect();
        names.extend(["v".into(), "o".into(), "m".into()]);
        if ctid {
            args.push(format!("${}::text[]", ncols + 5));
            names.push("t".into());
        }
        format!("unnest({}) AS u({})", args.join(", "), names.join(", "))
    };
    let xid_param = format!("${}", ncols + 4);
    if !ins.is_empty() {
        let expected = ins.len();
        let collist = bt
            .columns
            .iter()
            .filter(|c| !c.generated)
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let sel = (0..ncols)
            .filter(|i| !bt.columns[*i].generated)
            .map(|i| value_expr(&bt, i, &format!("u.c{}", i + 1)))
            .collect::<Vec<_>>()
            .join(", ");
        // A plain INSERT (no speculative insertion), in a subtransaction:
        // if another transaction inserted one of these keys after they were
        // looked up, the batch fails with 40001 (retry), never half-applied.
        let key_texts: Vec<TextCol> = bt.pk.iter().map(|p| ins.cols[*p].clone()).collect();
        let sql = format!(
            "INSERT INTO {tbl} ({collist}, sync_version, sync_xid, sync_created_xid, sync_origin, sync_colmeta)
             OVERRIDING SYSTEM VALUE SELECT {sel}, u.v, {xid_param}, {xid_param}, nullif(u.o, ''), u.m FROM {from}",
            tbl = t.name,
            from = unnest(false)
        );
        let args = ins.args(xid);
        let inserted = in_subtransaction(
            std::panic::AssertUnwindSafe(|| {
                client
                    .update(&sql, None, &args)
                    .unwrap_or_else(|e| spi_err(e))
                    .len()
            }),
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
        );
        let done = match inserted {
            Ok(n) => n,
            Err(e) => {
                // Which unique index: a key of this batch that exists now
                // was inserted meanwhile; anything else is the table's own
                // constraint, reported as it is.
                let taken: i64 = client
                    .select(
                        &load_sql(&bt, "count(*)", false),
                        None,
                        &key_args(&key_texts),
                    )
                    .unwrap_or_else(|e| spi_err(e))
                    .first()
                    .get(1)
                    .unwrap_or_else(|e| spi_err(e))
                    .unwrap_or(0);
                if taken == 0 {
                    e.rethrow()
                }
                0
            }
        };
        if done != expected {
            bad_input(
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                "could not apply the batch: another transaction inserted one of its keys meanwhile",
                format!("A new row of {} already existed when written.", t.name),
                "Retry the batch: nothing of it was applied.",
            );
        }
    }
    if !upd.is_empty() {
        let expected = upd.len();
        let sets = (0..ncols)
            .filter(|i| !bt.pk.contains(i) && !bt.columns[*i].generated)
            .map(|i| {
                format!(
                    "{} = {}",
                    quote_ident(&bt.columns[i].name),
                    value_expr(&bt, i, &format!("u.c{}", i + 1))
                )
            })
            .chain([
                "sync_version = u.v".into(),
                format!("sync_xid = {xid_param}"),
                "sync_origin = nullif(u.o, '')".into(),
                "sync_colmeta = u.m".into(),
            ])
            .collect::<Vec<_>>()
            .join(", ");
        // The rows are locked: found by their address, not their key.
        let ctids = std::mem::take(&mut upd.ctid);
        let mut args = upd.args(xid);
        args.push(ctids.into());
        let done = client
            .update(
                &format!(
                    "UPDATE {tbl} AS r SET {sets} FROM {from} WHERE r.ctid = u.t::tid",
                    tbl = t.name,
                    from = unnest(true)
                ),
                None,
                &args,
            )
            .unwrap_or_else(|e| spi_err(e))
            .len();
        if done != expected {
            pgrx::error!(
                "tributary: updated {done} of {expected} rows of {} that were locked for the batch",
                t.name
            );
        }
    }
    tick!("written");
    if !kills.is_empty() {
        let pk_match =
            t.pk.iter()
                .map(|c| format!("r.{0} = k.{0}", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(" AND ");
        // The delete runs under the peer's tributary.origin, so that the
        // statement triggers tag it for the worker's echo guard (a pgoutput
        // delete carries only the key); the caller's setting comes back after.
        let prev = client
            .update(
                "SELECT coalesce(current_setting('tributary.origin', true), ''), set_config('tributary.origin', $1, true)",
                None,
                &[origin.to_string().into()],
            )
            .unwrap_or_else(|e| spi_err(e))
            .first()
            .get::<String>(1)
            .unwrap_or_else(|e| spi_err(e))
            .unwrap_or_default();
        client
            .update(
                &format!(
                    "DELETE FROM {tbl} AS r USING (SELECT k.* FROM jsonb_array_elements($1::text::jsonb) AS x(p)
                       CROSS JOIN LATERAL jsonb_populate_record(NULL::{tbl}, x.p) AS k) AS k WHERE {pk_match}",
                    tbl = t.name
                ),
                None,
                &[format!("[{}]", kills.join(",")).into()],
            )
            .unwrap_or_else(|e| spi_err(e));
        client
            .update(
                "SELECT set_config('tributary.origin', $1, true)",
                None,
                &[prev.into()],
            )
            .unwrap_or_else(|e| spi_err(e));
    }
    if !tombs.is_empty() {
        client
            .update(
                "INSERT INTO tributary.tombstones AS d
                        (relid, pk, xid, version, origin, deleted_at, data, colmeta, row_origin, created_xid, ts)
                 SELECT $2, x.e -> 'pk', pg_current_xact_id()::text::bigint, (x.e ->> 'v')::bigint,
                        nullif(x.e ->> 'o', ''), now(), x.e -> 'data', (x.e ->> 'm')::bytea,
                        nullif(x.e ->> 'ro', ''), coalesce((x.e ->> 'cx')::bigint, pg_current_xact_id()::text::bigint),
                        nullif((x.e ->> 'ts')::bigint, 0)
                   FROM jsonb_array_elements($1::text::jsonb) AS x(e)
                 ON CONFLICT (relid, pk) DO UPDATE
                    SET xid = excluded.xid, version = excluded.version, origin = excluded.origin,
                        deleted_at = excluded.deleted_at, data = excluded.data, colmeta = excluded.colmeta,
                        row_origin = excluded.row_origin, created_xid = excluded.created_xid, ts = excluded.ts",
                None,
                &[format!("[{}]", tombs.join(",")).into(), tbl.into()],
            )
            .unwrap_or_else(|e| spi_err(e));
    }
    drop(_guard);

    tick!("deleted");
    if !conflicts.is_empty() {
        let rows: Vec<&ConflictRow> = conflicts.iter().map(|c| &c.1).collect();
        let ids = client
            .update(
                "INSERT INTO tributary.conflicts (relid, pk, columns, local, remote, local_version, remote_version,
                                                  remote_origin, remote_op, interim, detail)
                 SELECT $1, u.pk::jsonb, u.cols::text[], u.l::jsonb, u.r::jsonb, u.lv, u.rv, $2, u.op, u.i, u.d
                   FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[],
                               $9::text[], $10::text[], $11::text[]) WITH ORDINALITY AS u(pk, cols, l, r, lv, rv, op, i, d, n)
                  ORDER BY u.n
                 RETURNING id",
                None,
                &[
                    tbl.into(),
                    origin.to_string().into(),
                    text_array(&rows.iter().map(|c| Some(c.pk.clone())).collect::<Vec<_>>()),
                    text_array(&rows.iter().map(|c| Some(text_literal(&c.columns))).collect::<Vec<_>>()),
                    text_array(&rows.iter().map(|c| c.local.clone()).collect::<Vec<_>>()),
                    text_array(&rows.iter().map(|c| c.remote.clone()).collect::<Vec<_>>()),
                    int8_array(rows.iter().map(|c| c.local_version)),
                    int8_array(rows.iter().map(|c| Some(c.remote_version))),
                    text_array(&rows.iter().map(|c| Some(c.remote_op.to_string())).collect::<Vec<_>>()),
                    text_array(&rows.iter().map(|c| Some(c.interim.to_string())).collect::<Vec<_>>()),
                    text_array(&rows.iter().map(|c| Some(c.detail.clone())).collect::<Vec<_>>()),
                ],
            )
            .unwrap_or_else(|e| spi_err(e));
        for ((i, _), r) in conflicts.iter().zip(ids) {
            out[*i].4 = r.get(1).unwrap_or_else(|e| spi_err(e));
        }
    }
    // Changes parked for want of a row of this table may go through now.
    if !retrying {
        client
            .update(
                "SELECT count(*) FROM tributary._retry_pending($1)
                  WHERE EXISTS (SELECT 1 FROM tributary.pending q WHERE q.parent_relid = $1 AND q.status = 'pending')",
                None,
                &[tbl.into()],
            )
            .unwrap_or_else(|e| spi_err(e));
    }
    tick!("done");
    (out, keys)
}

/// The custom policy: the table's function `(local, remote, base) → jsonb`
/// merges the overlapping columns. Its result is typed through the table,
/// like any incoming value, and stamped as the incoming revision; a NULL
/// result keeps the hub's values.
fn merge_with_user_function(
    client: &SpiClient<'_>,
    t: &Table,
    func: Option<&str>,
    before: Option<&KeyState>,
    change: &Change,
    d: &mut resolver::Decision,
) {
    let Some(func) = func else { return };
    let local = before
        .map(|b| object_text(b.cells.iter().map(|(k, c)| (&**k, &*c.value))))
        .unwrap_or_else(|| "{}".into());
    let remote = object_text(change.values.iter().map(|(k, v)| (&**k, &**v)));
    let merged: Option<String> = client
        .select(
            &format!(
                "SELECT tributary.row_json(jsonb_populate_record(NULL::{tbl}, {func}($1::text::jsonb, $2::text::jsonb, NULL::jsonb)))::text",
                tbl = t.name
            ),
            None,
            &[local.into(), remote.into()],
        )
        .unwrap_or_else(|e| spi_err(e))
        .first()
        .get(1)
        .unwrap_or(None);
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

struct ForeignKey {
    name: String,
    parent: String,
    parent_oid: i64,
    cols: Vec<String>,
    refcols: Vec<String>,
}

/// The keys whose new row would reference a parent row that does not
/// exist (in its table, or among this batch's rows for a self-reference),
/// with the parent table's oid and a description. Repeated until stable,
/// since holding back a row can orphan its children in the same batch.
fn missing_parents(
    client: &SpiClient<'_>,
    t: &Table,
    tbl: pg_sys::Oid,
    keys: &[String],
    current: &[Option<KeyState>],
    loaded: &[Option<Loaded>],
) -> Map<String, (u32, String)> {
    let fks = client
        .select(
            "SELECT c.conname::text, c.confrelid::regclass::text, c.confrelid::bigint,
                    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i)
                            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
                    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i)
                            JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
               FROM pg_constraint c WHERE c.conrelid = $1 AND c.contype = 'f' ORDER BY c.conname",
            None,
            &[tbl.into()],
        )
        .unwrap_or_else(|e| spi_err(e));
    let fks: Vec<ForeignKey> = fks
        .map(|r| ForeignKey {
            name: r.get(1).unwrap_or_else(|e| spi_err(e)).unwrap_or_default(),
            parent: r.get(2).unwrap_or_else(|e| spi_err(e)).unwrap_or_default(),
            parent_oid: r.get(3).unwrap_or_else(|e| spi_err(e)).unwrap_or_default(),
            cols: r.get(4).unwrap_or_else(|e| spi_err(e)).unwrap_or_default(),
            refcols: r.get(5).unwrap_or_else(|e| spi_err(e)).unwrap_or_default(),
        })
        .collect();
    let mut deferred: Map<String, (u32, String)> = Map::default();
    if fks.is_empty() {
        return deferred;
    }
    loop {
        // The rows this batch would write, as JSON objects keyed by pk.
        let rows: Vec<String> = current
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
            .filter(|(i, s)| {
                s.alive
                    && !deferred.contains_key(&keys[*i])
                    && loaded[*i].as_ref().map(|l| &l.state) != Some(*s)
            })
            .map(|(i, s)| (&keys[i], s))
            .map(|(k, s)| {
                let row = object_text(s.cells.iter().map(|(c, v)| (&**c, &*v.value)));
                format!(
                    "{{\"key\": {}, \"row\": {row}}}",
                    serde_json::Value::String(k.clone())
                )
            })
            .collect();
        if rows.is_empty() {
            return deferred;
        }
        let arg = format!("[{}]", rows.join(","));
        let mut found = false;
        for ForeignKey {
            name,
            parent,
            parent_oid,
            cols,
            refcols,
        } in &fks
        {
            let not_null = cols
                .iter()
                .map(|c| format!("r.{} IS NOT NULL", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let matches = |alias: &str| {
                cols.iter()
                    .zip(refcols)
                    .map(|(c, rc)| format!("{alias}.{} = r.{}", quote_ident(rc), quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            };
            let in_batch = if *parent_oid as u32 == u32::from(tbl) {
                format!(
                    " AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements($1::text::jsonb) AS y(f)
                        CROSS JOIN LATERAL jsonb_populate_record(NULL::{tbl}, y.f -> 'row') AS s WHERE {})",
                    matches("s"),
                    tbl = t.name
                )
            } else {
                String::new()
            };
            let missing = client
                .select(
                    &format!(
                        "SELECT x.e ->> 'key' FROM jsonb_array_elements($1::text::jsonb) AS x(e)
                          CROSS JOIN LATERAL jsonb_populate_record(NULL::{tbl}, x.e -> 'row') AS r
                          WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {}){in_batch}",
                        matches("p"),
                        tbl = t.name
                    ),
                    None,
                    &[arg.clone().into()],
                )
                .unwrap_or_else(|e| spi_err(e));
            for r in missing {
                let key: String = r.get(1).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
                let why = format!(
                    "parked: no row in {parent} for ({}) yet (constraint {name}); retried when {parent} changes",
                    cols.join(", ")
                );
                deferred.entry(key).or_insert((*parent_oid as u32, why));
                found = true;
            }
        }
        if !found {
            return deferred;
        }
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn bad_input(code: PgSqlErrorCode, message: &str, detail: String, hint: &str) -> ! {
    ErrorReport::new(code, message.to_string(), "sync_apply")
        .set_detail(detail)
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!()
}

/// The SQL expression turning `expr` (the text of `TextCol::push_input`) into a value
/// of the column's type.
fn value_expr(t: &batch::Table, col: usize, expr: &str) -> String {
    let c = &t.columns[col];
    if c.by_input {
        format!("({expr})::{}", c.type_sql)
    } else {
        format!(
            "(jsonb_populate_record(NULL::{tbl}, jsonb_build_object({name}, ({expr})::jsonb))).{ident}",
            tbl = t.name,
            name = quote_literal(&c.name),
            ident = quote_ident(&c.name)
        )
    }
}

/// Rows to write, column by column: the input text of each column, then
/// sync_version, sync_origin and sync_colmeta.
struct Rows {
    cols: Vec<TextCol>,
    /// For updates: the address of each row.
    ctid: Vec<Option<String>>,
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

    fn len(&self) -> usize {
        self.version.len()
    }

    fn is_empty(&self) -> bool {
        self.version.is_empty()
    }

    /// The statement's parameters: the arrays, then the xid.
    fn args(&mut self, xid: i64) -> Vec<pgrx::datum::DatumWithOid<'static>> {
        let mut out: Vec<pgrx::datum::DatumWithOid<'static>> =
            self.cols.iter().map(TextCol::param).collect();
        out.push(int8_array(self.version.iter().map(|v| Some(*v))));
        out.push(varlena_array(
            self.origin.iter().map(|o| Some(o.as_bytes())),
            pg_sys::TEXTOID,
            pg_sys::TEXTARRAYOID,
        ));
        out.push(varlena_array(
            self.colmeta.iter().map(|m| Some(m.as_slice())),
            pg_sys::BYTEAOID,
            pg_sys::BYTEAARRAYOID,
        ));
        out.push(xid.into());
        out
    }
}

/// A conflict to log.
struct ConflictRow {
    pk: String,
    columns: Vec<String>,
    local: Option<String>,
    remote: Option<String>,
    local_version: Option<i64>,
    remote_version: i64,
    remote_op: &'static str,
    interim: &'static str,
    detail: String,
}

/// A text[] literal of the names.
fn text_literal(names: &[String]) -> String {
    let mut out = String::from("{");
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for ch in n.chars() {
            if ch == '"' || ch == '\\' {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// The rows of the table with the given keys (one text array per key
/// column, cast by the statement), optionally locked.
fn load_sql(t: &batch::Table, select: &str, lock: bool) -> String {
    format!(
        "SELECT {select} FROM unnest({args}) AS u({names}) JOIN {tbl} AS r ON {matches}{lock}",
        args = (1..=t.pk.len())
            .map(|i| format!("${i}::text[]"))
            .collect::<Vec<_>>()
            .join(", "),
        names = (1..=t.pk.len())
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(", "),
        matches =
            t.pk.iter()
                .enumerate()
                .map(|(n, c)| format!(
                    "r.{} = {}",
                    quote_ident(&t.columns[*c].name),
                    value_expr(t, *c, &format!("u.c{}", n + 1))
                ))
                .collect::<Vec<_>>()
                .join(" AND "),
        tbl = t.name,
        lock = if lock { " FOR UPDATE OF r" } else { "" },
    )
}

fn key_args(cols: &[TextCol]) -> Vec<pgrx::datum::DatumWithOid<'static>> {
    cols.iter().map(TextCol::param).collect()
}

/// A text[] parameter under construction: its elements' bytes back to back.
#[derive(Clone, Default)]
struct TextCol {
    bytes: Vec<u8>,
    spans: Vec<Option<(usize, usize)>>,
}

impl TextCol {
    /// Appends a column's canonical value as the text its input function
    /// reads (for arrays and composites, their JSON).
    fn push_input(&mut self, t: &batch::Table, col: usize, canonical: &str) {
        let start = self.bytes.len();
        let span = t
            .input_into(col, canonical, &mut self.bytes)
            .then_some((start, self.bytes.len()));
        self.spans.push(span);
    }

    fn param(&self) -> pgrx::datum::DatumWithOid<'static> {
        varlena_array(
            self.spans.iter().map(|s| s.map(|(a, b)| &self.bytes[a..b])),
            pg_sys::TEXTOID,
            pg_sys::TEXTARRAYOID,
        )
    }
}

/// A datum built here, handed to SPI as a parameter.
struct Built(pg_sys::Datum);

impl IntoDatum for Built {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::InvalidOid
    }
}

fn text_array(vals: &[Option<String>]) -> pgrx::datum::DatumWithOid<'static> {
    varlena_array(
        vals.iter().map(|v| v.as_deref().map(str::as_bytes)),
        pg_sys::TEXTOID,
        pg_sys::TEXTARRAYOID,
    )
}

/// A text[] or bytea[] parameter, its elements laid out in one allocation
/// and the array built in one call: pgrx's element-by-element builder
/// crossed the FFI guard for every element, 7% of sync_apply's time.
fn varlena_array<'a>(
    vals: impl Iterator<Item = Option<&'a [u8]>>,
    elem: pg_sys::Oid,
    array: pg_sys::Oid,
) -> pgrx::datum::DatumWithOid<'static> {
    let vals: Vec<Option<&[u8]>> = vals.collect();
    let size = |b: &[u8]| (pg_sys::VARHDRSZ + b.len() + 3) & !3;
    let total: usize = vals.iter().map(|v| v.map_or(0, size)).sum();
    // SAFETY: each element is a 4-byte-header varlena in the buffer, int
    // aligned as text and bytea require; construct_md_array copies them.
    unsafe {
        let buf = pg_sys::palloc(total.max(8)) as *mut u8;
        let mut datums = Vec::with_capacity(vals.len());
        let mut nulls = Vec::with_capacity(vals.len());
        let mut off = 0;
        for v in &vals {
            match v {
                Some(b) => {
                    let p = buf.add(off);
                    pgrx::varlena::set_varsize_4b(p.cast(), (pg_sys::VARHDRSZ + b.len()) as i32);
                    std::ptr::copy_nonoverlapping(b.as_ptr(), p.add(pg_sys::VARHDRSZ), b.len());
                    datums.push(pg_sys::Datum::from(p));
                    nulls.push(false);
                    off += size(b);
                }
                None => {
                    datums.push(pg_sys::Datum::from(0usize));
                    nulls.push(true);
                }
            }
        }
        let a = build_array(&mut datums, &mut nulls, elem, -1, false, b'i');
        pg_sys::pfree(buf.cast());
        pgrx::datum::DatumWithOid::new(Built(a), array)
    }
}

/// An int8[] parameter.
fn int8_array(vals: impl Iterator<Item = Option<i64>>) -> pgrx::datum::DatumWithOid<'static> {
    let (mut datums, mut nulls): (Vec<pg_sys::Datum>, Vec<bool>) = vals
        .map(|v| (pg_sys::Datum::from(v.unwrap_or(0)), v.is_none()))
        .unzip();
    // SAFETY: int8 is pass-by-value on 64-bit platforms, as pgrx requires.
    unsafe {
        let a = build_array(&mut datums, &mut nulls, pg_sys::INT8OID, 8, true, b'd');
        pgrx::datum::DatumWithOid::new(Built(a), pg_sys::INT8ARRAYOID)
    }
}

unsafe fn build_array(
    datums: &mut [pg_sys::Datum],
    nulls: &mut [bool],
    elem: pg_sys::Oid,
    len: i32,
    byval: bool,
    align: u8,
) -> pg_sys::Datum {
    unsafe {
        if datums.is_empty() {
            return pg_sys::Datum::from(pg_sys::construct_empty_array(elem));
        }
        let mut dims = [datums.len() as i32];
        let mut lbs = [1i32];
        pg_sys::Datum::from(pg_sys::construct_md_array(
            datums.as_mut_ptr(),
            nulls.as_mut_ptr(),
            1,
            dims.as_mut_ptr(),
            lbs.as_mut_ptr(),
            elem,
            len,
            byval,
            align as std::ffi::c_char,
        ))
    }
}

/// Runs `f` in a subtransaction. An error with SQLSTATE `code` rolls the
/// subtransaction back and is returned; any other error propagates.
fn in_subtransaction<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe,
    code: PgSqlErrorCode,
) -> Result<R, Box<pg_sys::panic::CaughtError>> {
    // SAFETY: the PL/pgSQL pattern for an exception block: begin, and on
    // error roll back, restoring the memory context and resource owner.
    let (cxt, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
    }
    let restore = move || unsafe {
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
    };
    PgTryBuilder::new(move || {
        let r = f();
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        restore();
        Ok(r)
    })
    .catch_when(code, move |e| {
        unsafe {
            pg_sys::MemoryContextSwitchTo(cxt);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        restore();
        Err(Box::new(e))
    })
    .catch_others(move |e| {
        unsafe {
            pg_sys::MemoryContextSwitchTo(cxt);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        restore();
        e.rethrow()
    })
    .execute()
}
