//! `tributary._apply`: the engine behind `sync_apply` (sql/apply.sql), which
//! has already validated and canonicalised the batch.
//!
//! ```text
//!  lock the table's apply lock (one applier per table at a time)
//!  load, for every key in the batch:  the live row (FOR UPDATE) + its tombstone
//!  decide every change in order, in memory  (resolver.rs; duplicates of a key
//!                                            see each other's effect)
//!  write set-based, in apply mode:  upsert live rows, delete killed rows,
//!                                   upsert tombstones, insert conflicts
//!  return one outcome per change
//! ```
//!
//! Values travel as PostgreSQL's own JSON text (`jsonb::text`), never
//! re-serialised in Rust, so the tie-break compares what the table stores.

use crate::api::trigger::ApplyMode;
use crate::colvers::{self, ColVersion};
use crate::jsontext;
use crate::resolver::{self, Cell, Change, KeyState, Op, Policy, Priorities, Stamp};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::collections::{BTreeMap, HashMap};

const META: &str = "'{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[]";

/// The columns of the table: name -> attnum, and the key columns.
struct Table {
    name: String,
    attnum: HashMap<String, u16>,
    pk: Vec<String>,
}

struct Loaded {
    state: KeyState,
    /// The xid of each column's current stamp, to keep it when unchanged.
    xids: HashMap<String, i64>,
    created_xid: i64,
}

impl Loaded {
    /// The key's cells from a row's JSON text and its packed stamps.
    fn fill(&mut self, t: &Table, row: &str, entries: Option<&[ColVersion]>, creator: &str) {
        for (col, value) in jsontext::split_object(row).unwrap_or_default() {
            let a = t.attnum.get(&col).copied().unwrap_or(0);
            let (stamp, xid) = stamps(entries, creator, self.created_xid, a);
            self.xids.insert(col.clone(), xid);
            self.state.cells.insert(
                col,
                Cell {
                    value: value.to_string(),
                    stamp,
                },
            );
        }
    }
}

fn stamps(
    entries: Option<&[ColVersion]>,
    creator: &str,
    created_xid: i64,
    attnum: u16,
) -> (Stamp, i64) {
    match entries {
        // Never updated: every column was set by the creator at revision 1.
        None => (
            Stamp {
                revision: 1,
                origin: creator.to_string(),
                ts: 0,
            },
            created_xid,
        ),
        Some(e) => {
            let s = colvers::stamp_of(e, attnum, created_xid);
            (
                Stamp {
                    revision: s.revision,
                    origin: s.origin.clone(),
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

fn load_table(client: &SpiClient<'_>, tbl: pg_sys::Oid) -> Table {
    let name: String = client
        .select("SELECT $1::regclass::text", None, &[tbl.into()])
        .unwrap_or_else(|e| spi_err(e))
        .first()
        .get(1)
        .unwrap_or_else(|e| spi_err(e))
        .unwrap_or_default();
    let mut attnum = HashMap::new();
    let rows = client
        .select(
            &format!(
                "SELECT attname::text, attnum FROM pg_attribute WHERE attrelid = $1 AND attnum > 0
                   AND NOT attisdropped AND attname <> ALL ({META})"
            ),
            None,
            &[tbl.into()],
        )
        .unwrap_or_else(|e| spi_err(e));
    for r in rows {
        let n: String = r.get(1).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let a: i16 = r.get(2).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        attnum.insert(n, a as u16);
    }
    let pk: Vec<String> = client
        .select(
            "SELECT pk_columns FROM tributary.tracked WHERE relid = $1",
            None,
            &[tbl.into()],
        )
        .unwrap_or_else(|e| spi_err(e))
        .first()
        .get(1)
        .unwrap_or_else(|e| spi_err(e))
        .unwrap_or_default();
    Table { name, attnum, pk }
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
fn object_text<'a>(cells: impl Iterator<Item = (&'a String, &'a str)>) -> String {
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

/// The packed stamps to store for a state: an entry per column, with xid 0
/// (stamped by the trigger) where the stamp changed in this batch. A
/// creation entry at revision 0 makes the columns the state never set rank
/// below any write.
fn colmeta_for(t: &Table, state: &KeyState, before: Option<&Loaded>) -> String {
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
                .then(|| b.xids.get(col).copied())
                .flatten()
        });
        entries.push(ColVersion {
            attnum: *a,
            revision: cell.stamp.revision,
            xid: kept.unwrap_or(0),
            origin: cell.stamp.origin.clone(),
            ts: cell.stamp.ts,
        });
    }
    entries.sort_by_key(|e| e.attnum);
    match colvers::encode(&entries) {
        Ok(b) => hex(&b),
        Err(e) => pgrx::error!(
            "tributary: an origin of {} bytes is too long (at most 255)",
            e.0
        ),
    }
}

#[pg_schema]
pub mod tributary {
    use super::*;

    /// The resolver engine. VOLATILE, not strict, not SECURITY DEFINER (the
    /// caller's privileges on the table apply; internal tables are guarded
    /// by row-level security). Called only by `sync_apply`, which validates
    /// the batch first.
    #[pg_extern(
        volatile,
        sql = r#"
CREATE FUNCTION tributary._apply(tbl regclass, changes jsonb, origin text)
RETURNS TABLE (ord integer, pk text, outcome text, row_version bigint, conflict_id bigint, detail text)
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', '_apply_wrapper';
"#
    )]
    // pgrx generates the SQL from the spelled-out TableIterator type, so it
    // cannot hide behind an alias.
    #[allow(clippy::type_complexity)]
    fn _apply(
        tbl: pg_sys::Oid,
        fcinfo: pg_sys::FunctionCallInfo,
    ) -> TableIterator<
        'static,
        (
            name!(ord, i32),
            name!(pk, String),
            name!(outcome, String),
            name!(row_version, Option<i64>),
            name!(conflict_id, Option<i64>),
            name!(detail, String),
        ),
    > {
        // `changes` (jsonb) and `origin` are read from the call frame: the
        // batch is handed to the engine's queries as the jsonb datum it is,
        // never printed and parsed again.
        let (changes, origin) = unsafe {
            let args = (*fcinfo).args.as_slice((*fcinfo).nargs as usize);
            let origin = String::from_datum(args[2].value, args[2].isnull).unwrap_or_default();
            (args[1].value, origin)
        };
        TableIterator::new(super::apply(tbl, changes, &origin))
    }
}

/// `changes` is the validated batch, a jsonb datum. Values are read out of
/// it by PostgreSQL (never by serde), so they keep their exact rendering.
fn apply(tbl: pg_sys::Oid, changes: pg_sys::Datum, origin: &str) -> Vec<Row> {
    Spi::connect_mut(|client| run(client, tbl, changes, origin))
}

type Row = (i32, String, String, Option<i64>, Option<i64>, String);

fn run(
    client: &mut SpiClient<'_>,
    tbl: pg_sys::Oid,
    changes: pg_sys::Datum,
    origin: &str,
) -> Vec<Row> {
    // SAFETY: a jsonb datum valid for the whole call.
    let changes_arg = || unsafe { pgrx::datum::DatumWithOid::new(changes, pg_sys::JSONBOID) };
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
    let t = load_table(client, tbl);
    let (prio, custom_fn) = load_priorities(client, tbl);

    // One applier per table at a time: decisions read the rows they write.
    client
        .update(
            "SELECT pg_advisory_xact_lock(8315741522239766528 + $1::oid::bigint)",
            None,
            &[tbl.into()],
        )
        .unwrap_or_else(|e| spi_err(e));

    // The batch, typed once: each change's values are read through the
    // column types and printed by row_json, so they compare exactly with
    // what the table stores.
    let pk_expr = |alias: &str| {
        format!(
            "jsonb_build_object({})::text",
            t.pk.iter()
                .map(|c| format!("{}, {alias}.{}", quote_literal(c), quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut batch: Vec<(String, Change)> = Vec::new();
    let rows = client
        .select(
            &format!(
                "SELECT x.ord::int, x.c ->> 'op', (x.c ->> 'version')::bigint, (x.c ->> 'expect_version')::bigint,
                        {pk}, CASE WHEN x.c ? 'changed' THEN ARRAY(SELECT jsonb_array_elements_text(x.c -> 'changed'))
                                   ELSE ARRAY(SELECT jsonb_object_keys(coalesce(x.c -> 'data', '{{}}'))) END,
                        CASE WHEN x.c ->> 'op' <> 'D' THEN tributary.row_json(r)::text END, NULL::text,
                        CASE jsonb_typeof(x.c -> 'ts')
                             WHEN 'number' THEN (x.c ->> 'ts')::numeric::bigint
                             WHEN 'string' THEN (extract(epoch FROM (x.c ->> 'ts')::timestamptz) * 1000000)::bigint
                             ELSE 0 END
                   FROM jsonb_array_elements($1) WITH ORDINALITY AS x(c, ord)
                  CROSS JOIN LATERAL jsonb_populate_record(NULL::{tbl}, coalesce(x.c -> 'data', '{{}}') || (x.c -> 'pk')) AS r
                  ORDER BY x.ord",
                pk = pk_expr("r"),
                tbl = t.name
            ),
            None,
            &[changes_arg()],
        )
        .unwrap_or_else(|e| spi_err(e));
    for r in rows {
        let op = match r.get::<String>(2).unwrap_or_else(|e| spi_err(e)).as_deref() {
            Some("I") => Op::Insert,
            Some("U") => Op::Update,
            _ => Op::Delete,
        };
        let key: String = r.get(5).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let mut values = BTreeMap::new();
        if op != Op::Delete {
            let set: Vec<String> = r.get(6).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
            let row: String = r.get(7).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
            for (col, value) in jsontext::split_object(&row).unwrap_or_default() {
                if t.pk.contains(&col) || set.contains(&col) {
                    values.insert(col, value.to_string());
                }
            }
        }
        batch.push((
            key,
            Change {
                op,
                version: r.get(3).unwrap_or_else(|e| spi_err(e)).unwrap_or(1),
                origin: origin.to_string(),
                values,
                expect_version: r.get(4).unwrap_or_else(|e| spi_err(e)),
                ts: r.get(9).unwrap_or_else(|e| spi_err(e)).unwrap_or(0),
            },
        ));
    }

    // The hub's state of every key in the batch.
    let mut keys: Vec<&str> = batch.iter().map(|b| b.0.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let keys_arg =
        || -> pgrx::datum::DatumWithOid<'static> { format!("[{}]", keys.join(",")).into() };
    let pk_match =
        t.pk.iter()
            .map(|c| format!("r.{0} = k.{0}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
    let mut loaded: HashMap<String, Loaded> = HashMap::new();
    let live = client
        .select(
            &format!(
                "SELECT {pk}, r.sync_version, r.sync_origin, r.sync_colmeta, r.sync_created_xid, tributary.row_json(r)::text
                   FROM jsonb_array_elements($1::text::jsonb) AS ks(key)
                   CROSS JOIN LATERAL jsonb_populate_record(NULL::{tbl}, ks.key) AS k
                   JOIN {tbl} AS r ON {pk_match}
                    FOR UPDATE OF r",
                pk = pk_expr("r"),
                tbl = t.name
            ),
            None,
            &[keys_arg()],
        )
        .unwrap_or_else(|e| spi_err(e));
    for r in live {
        let key: String = r.get(1).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let version: i64 = r.get(2).unwrap_or_else(|e| spi_err(e)).unwrap_or(1);
        let row_origin: String = r.get(3).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let meta: Option<Vec<u8>> = r.get(4).unwrap_or_else(|e| spi_err(e));
        let created_xid: i64 = r.get(5).unwrap_or_else(|e| spi_err(e)).unwrap_or(0);
        let row: String = r.get(6).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let entries = meta.map(|m| colvers::decode(&m));
        let mut l = Loaded {
            state: KeyState {
                alive: true,
                version,
                cells: BTreeMap::new(),
                deleted: None,
                origin: row_origin,
            },
            xids: HashMap::new(),
            created_xid,
        };
        let creator = l.state.origin.clone();
        l.fill(&t, &row, entries.as_deref(), &creator);
        loaded.insert(key, l);
    }
    let dead = client
        .select(
            &format!(
                "SELECT d.pk::text, d.version, coalesce(d.origin, ''), d.colmeta, coalesce(d.row_origin, ''),
                        coalesce(d.created_xid, 0), tributary.row_json(jsonb_populate_record(NULL::{tbl}, d.data))::text,
                        coalesce(d.ts, 0)
                   FROM tributary.tombstones d
                  WHERE d.relid = $2 AND d.pk IN (SELECT jsonb_array_elements($1::text::jsonb))
                    FOR UPDATE OF d",
                tbl = t.name
            ),
            None,
            &[keys_arg(), tbl.into()],
        )
        .unwrap_or_else(|e| spi_err(e));
    for r in dead {
        let key: String = r.get(1).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let version: i64 = r.get(2).unwrap_or_else(|e| spi_err(e)).unwrap_or(1);
        let del_origin: String = r.get(3).unwrap_or_else(|e| spi_err(e)).unwrap_or_default();
        let deleted = Stamp {
            revision: version,
            origin: del_origin.clone(),
            ts: r.get::<i64>(8).unwrap_or_else(|e| spi_err(e)).unwrap_or(0),
        };
        if let Some(l) = loaded.get_mut(&key) {
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
            state: KeyState {
                alive: false,
                version,
                cells: BTreeMap::new(),
                deleted: Some(deleted),
                origin: del_origin,
            },
            xids: HashMap::new(),
            created_xid,
        };
        l.fill(&t, &image, entries.as_deref(), &creator);
        loaded.insert(key, l);
    }

    // Decide, in order.
    let mut current: HashMap<String, KeyState> = HashMap::new();
    let mut out: Vec<Row> = Vec::with_capacity(batch.len());
    let mut conflicts: Vec<(usize, String)> = Vec::new();
    for (i, (key, change)) in batch.iter().enumerate() {
        let before = current
            .get(key)
            .cloned()
            .or_else(|| loaded.get(key).map(|l| l.state.clone()));
        let mut d = resolver::resolve(before.as_ref(), change, &prio);
        if !d.custom.is_empty() {
            merge_with_user_function(
                client,
                &t,
                custom_fn.as_deref(),
                before.as_ref(),
                change,
                &mut d,
            );
        }
        if let Some(c) = &d.conflict {
            let local = before
                .as_ref()
                .filter(|b| b.alive)
                .map(|b| object_text(b.cells.iter().map(|(k, c)| (k, c.value.as_str()))));
            let remote = (change.op != Op::Delete)
                .then(|| object_text(change.values.iter().map(|(k, v)| (k, v.as_str()))));
            let rec = serde_json::json!({
                "pk": key,
                "columns": c.columns,
                "local": local,
                "remote": remote,
                "local_version": before.as_ref().map(|b| b.version),
                "remote_version": change.version,
                "remote_op": match change.op { Op::Insert => "I", Op::Update => "U", Op::Delete => "D" },
                "interim": if c.remote_won { "remote" } else { "local" },
                "detail": d.detail,
            });
            conflicts.push((i, rec.to_string()));
        }
        let version = Some(d.state.version);
        out.push((
            (i + 1) as i32,
            key.clone(),
            d.outcome.as_str().to_string(),
            version,
            None,
            d.detail.clone(),
        ));
        current.insert(key.clone(), d.state);
    }

    // Foreign keys: a row whose parent is missing is not written. Every
    // change of its key in this batch is parked (DEFERRED), in order.
    let deferred = missing_parents(client, &t, tbl, &current, &loaded);
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
        let deferred_ords: Vec<i32> = batch
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| deferred.contains_key(k))
            .map(|(i, _)| i as i32 + 1)
            .collect();
        let mut raw: HashMap<i32, String> = HashMap::new();
        for r in client
            .select(
                "SELECT x.ord::int, x.c::text FROM jsonb_array_elements($1) WITH ORDINALITY AS x(c, ord)
                  WHERE x.ord = ANY ($2)",
                None,
                &[changes_arg(), deferred_ords.into()],
            )
            .unwrap_or_else(|e| spi_err(e))
        {
            raw.insert(
                r.get(1).unwrap_or_else(|e| spi_err(e)).unwrap_or(0),
                r.get(2).unwrap_or_else(|e| spi_err(e)).unwrap_or_default(),
            );
        }
        let mut parked: Vec<String> = Vec::new();
        for (i, (key, _)) in batch.iter().enumerate() {
            let Some((parent, why)) = deferred.get(key) else {
                continue;
            };
            out[i].2 = "DEFERRED".into();
            out[i].3 = None;
            out[i].5 = why.clone();
            parked.push(
                serde_json::json!({"pk": key, "change": raw.get(&(i as i32 + 1)), "parent": parent, "why": why})
                    .to_string(),
            );
        }
        conflicts.retain(|(i, _)| !deferred.contains_key(&batch[*i].0));
        for key in deferred.keys() {
            match loaded.get(key) {
                Some(l) => current.insert(key.clone(), l.state.clone()),
                None => current.remove(key),
            };
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

    // Write what changed, set-based, keeping the resolver's stamps.
    let mut upserts: Vec<String> = Vec::new();
    let mut kills: Vec<String> = Vec::new();
    let mut tombs: Vec<String> = Vec::new();
    for (key, state) in &current {
        let before = loaded.get(key);
        if before.map(|b| &b.state) == Some(state) {
            continue;
        }
        let cells = object_text(state.cells.iter().map(|(k, c)| (k, c.value.as_str())));
        let colmeta = colmeta_for(&t, state, before);
        if state.alive {
            // {"row": {...}, "v": N, "o": "origin", "m": "\\x..."}, built directly: this
            // runs once per written row.
            let mut u = Vec::with_capacity(cells.len() + colmeta.len() + 64);
            u.extend_from_slice(b"{\"row\": ");
            u.extend_from_slice(cells.as_bytes());
            u.extend_from_slice(format!(", \"v\": {}, \"o\": ", state.version).as_bytes());
            jsontext::push_string(&mut u, state.origin.as_bytes());
            u.extend_from_slice(b", \"m\": ");
            jsontext::push_string(&mut u, colmeta.as_bytes());
            u.push(b'}');
            upserts.push(String::from_utf8_lossy(&u).into_owned());
        } else {
            if before.is_some_and(|b| b.state.alive) {
                kills.push(key.clone());
            }
            let del = state.deleted.clone().unwrap_or(Stamp {
                revision: state.version,
                origin: state.origin.clone(),
                ts: 0,
            });
            tombs.push(
                serde_json::json!({"pk": "", "data": "", "v": del.revision, "o": del.origin, "ts": del.ts, "m": colmeta,
                                   "ro": state.origin, "cx": before.map(|b| b.created_xid)})
                    .to_string()
                    .replacen("\"pk\":\"\"", &format!("\"pk\":{key}"), 1)
                    .replacen("\"data\":\"\"", &format!("\"data\":{cells}"), 1),
            );
        }
    }

    let _guard = ApplyMode::enter();
    if !upserts.is_empty() {
        let cols: Vec<&String> = t.attnum.keys().collect();
        let collist = cols
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let sel = cols
            .iter()
            .map(|c| format!("(x.r).{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let sets = cols
            .iter()
            .filter(|c| !t.pk.contains(c))
            .map(|c| format!("{0} = excluded.{0}", quote_ident(c)))
            .chain([
                "sync_version = excluded.sync_version".into(),
                "sync_origin = excluded.sync_origin".into(),
                "sync_colmeta = excluded.sync_colmeta".into(),
            ])
            .collect::<Vec<_>>()
            .join(", ");
        let pklist =
            t.pk.iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ");
        client
            .update(
                &format!(
                    "INSERT INTO {tbl} ({collist}, sync_version, sync_origin, sync_colmeta)
                     SELECT {sel}, x.v, nullif(x.o, ''), x.m::bytea
                       FROM (SELECT jsonb_populate_record(NULL::{tbl}, u.e -> 'row') AS r, (u.e ->> 'v')::bigint AS v,
                                    u.e ->> 'o' AS o, u.e ->> 'm' AS m
                               FROM jsonb_array_elements($1::text::jsonb) AS u(e)) AS x
                     ON CONFLICT ({pklist}) DO UPDATE SET {sets}",
                    tbl = t.name
                ),
                None,
                &[format!("[{}]", upserts.join(",")).into()],
            )
            .unwrap_or_else(|e| spi_err(e));
    }
    if !kills.is_empty() {
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

    if !conflicts.is_empty() {
        let recs = format!(
            "[{}]",
            conflicts
                .iter()
                .map(|c| c.1.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let ids = client
            .update(
                "INSERT INTO tributary.conflicts (relid, pk, columns, local, remote, local_version, remote_version,
                                                  remote_origin, remote_op, interim, detail)
                 SELECT $2, (x.e ->> 'pk')::jsonb, ARRAY(SELECT jsonb_array_elements_text(x.e -> 'columns')),
                        (x.e ->> 'local')::jsonb, (x.e ->> 'remote')::jsonb, (x.e ->> 'local_version')::bigint,
                        (x.e ->> 'remote_version')::bigint, $3, x.e ->> 'remote_op', x.e ->> 'interim', x.e ->> 'detail'
                   FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS x(e, n)
                  ORDER BY x.n
                 RETURNING id",
                None,
                &[recs.into(), tbl.into(), origin.to_string().into()],
            )
            .unwrap_or_else(|e| spi_err(e));
        for ((i, _), r) in conflicts.iter().zip(ids) {
            out[*i].4 = r.get(1).unwrap_or_else(|e| spi_err(e));
        }
    }
    out
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
        .map(|b| object_text(b.cells.iter().map(|(k, c)| (k, c.value.as_str()))))
        .unwrap_or_else(|| "{}".into());
    let remote = object_text(change.values.iter().map(|(k, v)| (k, v.as_str())));
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
    let values: HashMap<String, &str> = jsontext::split_object(&merged)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let stamp = Stamp {
        revision: change.version,
        origin: change.origin.clone(),
        ts: change.ts,
    };
    for col in &d.custom {
        if let Some(v) = values.get(col) {
            d.state.cells.insert(
                col.clone(),
                Cell {
                    value: v.to_string(),
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
    current: &HashMap<String, KeyState>,
    loaded: &HashMap<String, Loaded>,
) -> HashMap<String, (u32, String)> {
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
    let mut deferred: HashMap<String, (u32, String)> = HashMap::new();
    if fks.is_empty() {
        return deferred;
    }
    loop {
        // The rows this batch would write, as JSON objects keyed by pk.
        let rows: Vec<String> = current
            .iter()
            .filter(|(k, s)| {
                s.alive
                    && !deferred.contains_key(*k)
                    && loaded.get(*k).map(|l| &l.state) != Some(*s)
            })
            .map(|(k, s)| {
                let row = object_text(s.cells.iter().map(|(c, v)| (c, v.value.as_str())));
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
