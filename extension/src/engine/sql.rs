//! Every statement the engine runs: the static ones as constants, in the
//! order the phases run them, then the ones that name the table or its
//! columns, built here and quoted with `tributary_core::quote`. Values are
//! always parameters; rows travel as one text array per column (`$1..$n`,
//! cast by the statement) or, for the rare paths, as a JSON array text.

use super::batch;
use tributary_core::quote::{ident, literal};

// ── request ───────────────────────────────────────────────────────────────

/// $1 text[]: whether the caller may execute one of these functions of
/// the extension (the internal functions are callable by anyone, but act
/// only for those who may run the API function behind them).
pub const CALLER_MAY_RUN: &str = "\
SELECT coalesce(bool_or(has_function_privilege(p.oid, 'EXECUTE')), false) FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'tributary'
 WHERE p.proname = ANY ($1)";
/// $1 regclass: its name, its key columns (raises unless it is tracked).
pub const HEAD: &str = "SELECT $1::regclass::text, (tributary._tracked($1)).pk_columns";

/// $1 oid: the table's policy, its custom resolver function, and whether
/// the table's owner owns that function.
pub const POLICY: &str = "\
SELECT p.policy, p.resolver::oid::regproc::text,
       (SELECT f.proowner FROM pg_proc f WHERE f.oid = p.resolver)
         = (SELECT c.relowner FROM pg_class c WHERE c.oid = p.relid)
  FROM tributary.policies p WHERE p.relid = $1";

pub const PEERS: &str = "SELECT name, priority FROM tributary.peers";

/// $1 oid: the table's row filter as the engine evaluates it (scope.rs),
/// built by tributary._admits: over a row image `x.img` (jsonb), and over
/// a row `r` of the table. No row: the table has no filter. Read as the
/// state owner (a caller must not escape a filter by not seeing it).
pub const SCOPE: &str = "\
SELECT tributary._admits_image(f, 'x.img::jsonb'), tributary._admits(f, '(SELECT r.*)')
  FROM tributary.filters f WHERE f.relid = $1 AND f.filter IS NOT NULL";

// ── load ──────────────────────────────────────────────────────────────────

/// $1 oid: one applier per table at a time.
pub const APPLY_LOCK: &str = "SELECT pg_advisory_xact_lock(8315741522239766528 + $1::oid::bigint)";

/// What the load reads of a live row `r` (load::LiveRow).
const LIVE_COLUMNS: &str = "\
r.sync_version, r.sync_origin, r.sync_colmeta, r.sync_created_xid, tributary.row_json(r.*)::text,
       r.ctid::text";

/// $1 oid.
pub const ANY_TOMBSTONES: &str =
    "SELECT EXISTS (SELECT 1 FROM tributary.tombstones WHERE relid = $1)";

// ── park ──────────────────────────────────────────────────────────────────

/// $1 oid: the table's foreign keys (park::ForeignKey).
pub const FOREIGN_KEYS: &str = "\
SELECT c.conname::text, c.confrelid::regclass::text, c.confrelid::bigint,
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i)
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i)
               JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
  FROM pg_constraint c WHERE c.conrelid = $1 AND c.contype = 'f' ORDER BY c.conname";

// ── execute ───────────────────────────────────────────────────────────────

/// $1 the parked changes ({pk, change, parent, why} objects), $2 oid,
/// $3 origin, $4 the parker's role (oid), $5 its claims ('' for none).
pub const PARK: &str = "\
INSERT INTO tributary.pending (relid, pk, origin, change, parent_relid, last_error, parked_by, claims)
SELECT $2, (x.e ->> 'pk')::jsonb, $3, (x.e ->> 'change')::jsonb,
       (x.e ->> 'parent')::bigint::oid, x.e ->> 'why', $4::oid, nullif($5, '')
  FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS x(e, n)
 ORDER BY x.n";

/// $1 origin: sets tributary.origin for the transaction; returns the
/// caller's setting.
pub const SWAP_ORIGIN: &str = "SELECT coalesce(current_setting('tributary.origin', true), ''), set_config('tributary.origin', $1, true)";

/// $1 the caller's tributary.origin.
pub const RESTORE_ORIGIN: &str = "SELECT set_config('tributary.origin', $1, true)";

/// $1 the tombstones (plan::WritePlan::tombstones), $2 oid: before they
/// are overwritten, a filtered table keeps the old images
/// (tributary._keep_tombstones; nothing for a table without a filter).
pub const KEEP_TOMBSTONES: &str = "\
SELECT tributary._keep_tombstones($2, ARRAY(SELECT x.e -> 'pk' FROM jsonb_array_elements($1::text::jsonb) AS x(e)))";

/// $1 the tombstones (plan::WritePlan::tombstones), $2 oid.
pub const STORE_TOMBSTONES: &str = "\
INSERT INTO tributary.tombstones AS d
       (relid, pk, xid, version, origin, deleted_at, data, colmeta, row_origin, created_xid, ts)
SELECT $2, x.e -> 'pk', pg_current_xact_id()::text::bigint, (x.e ->> 'v')::bigint,
       nullif(x.e ->> 'o', ''), now(), x.e -> 'data', (x.e ->> 'm')::bytea,
       nullif(x.e ->> 'ro', ''), coalesce((x.e ->> 'cx')::bigint, pg_current_xact_id()::text::bigint),
       nullif((x.e ->> 'ts')::bigint, 0)
  FROM jsonb_array_elements($1::text::jsonb) AS x(e)
ON CONFLICT (relid, pk) DO UPDATE
   SET xid = excluded.xid, version = excluded.version, origin = excluded.origin,
       deleted_at = excluded.deleted_at, data = excluded.data, colmeta = excluded.colmeta,
       row_origin = excluded.row_origin, created_xid = excluded.created_xid, ts = excluded.ts";

/// $1 oid, $2 origin, $3.. one array per field of plan::ConflictRow;
/// returns the ids in order.
pub const LOG_CONFLICTS: &str = "\
INSERT INTO tributary.conflicts (relid, pk, columns, local, remote, local_version, remote_version,
                                 remote_origin, remote_op, interim, detail)
SELECT $1, u.pk::jsonb, u.cols::text[], u.l::jsonb, u.r::jsonb, u.lv, u.rv, $2, u.op, u.i, u.d
  FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[],
              $9::text[], $10::text[], $11::text[]) WITH ORDINALITY AS u(pk, cols, l, r, lv, rv, op, i, d, n)
 ORDER BY u.n
RETURNING id";

// ── replay (run as the state owner, but REPLAY) ───────────────────────────

/// $1 oid: whether changes wait for a row of this table.
pub const ANY_WAITING: &str = "\
SELECT EXISTS (SELECT 1 FROM tributary.pending q WHERE q.parent_relid = $1 AND q.status = 'pending')";

/// $1 oid or NULL (all): the parked changes of the table and of those
/// waiting for it, oldest first, locked (replay::Parked).
pub const LOCK_PARKED: &str = "\
SELECT q.id, q.relid::oid, q.pk::text, q.origin, q.change::text, q.parked_by::oid, q.attempts,
       coalesce(q.claims, '')
  FROM tributary.pending q
 WHERE q.status = 'pending' AND ($1::oid IS NULL OR q.relid::oid = $1 OR q.parent_relid::oid = $1)
 ORDER BY q.id
   FOR UPDATE SKIP LOCKED";

/// $1 oid, $2 the change (JSON text), $3 origin: one parked change through
/// the engine again, run as its parker.
pub const REPLAY: &str = "\
SELECT a.outcome, a.detail
  FROM tributary._apply((tributary._tracked($1::oid::regclass)).relid::regclass,
                        jsonb_build_array($2::text::jsonb), $3) AS a";

/// $1 id: applied.
pub const UNPARK: &str = "DELETE FROM tributary.pending WHERE id = $1";

/// $1 id, $2 why, $3 dead: one more attempt.
pub const RETRIED: &str = "\
UPDATE tributary.pending
   SET attempts = attempts + 1, last_error = $2, last_try_at = now(),
       status = CASE WHEN $3 THEN 'dead' ELSE 'pending' END
 WHERE id = $1";
// ── built for the table ───────────────────────────────────────────────────

/// Types one array or composite value as jsonb_populate_record does,
/// printed as row_json prints it: $1 the column's name, $2 the value's JSON.
pub fn populate_value(tbl: &str) -> String {
    format!(
        "SELECT tributary.row_json(jsonb_populate_record(NULL::{tbl}, jsonb_build_object($1::text, $2::text::jsonb)))::text"
    )
}

/// The SQL expression turning `expr` (the text of `TextCol::push_input`)
/// into a value of the column's type.
fn value_expr(t: &batch::Table, col: usize, expr: &str) -> String {
    let c = &t.columns[col];
    if c.by_input {
        format!("({expr})::{}", c.type_sql)
    } else {
        format!(
            "(jsonb_populate_record(NULL::{tbl}, jsonb_build_object({name}, ({expr})::jsonb))).{ident}",
            tbl = t.name,
            name = literal(&c.name),
            ident = ident(&c.name)
        )
    }
}

/// The join of the table's rows `r` with the keys `u.c1..`.
fn key_matches(t: &batch::Table) -> String {
    t.pk.iter()
        .enumerate()
        .map(|(n, c)| {
            format!(
                "r.{} = {}",
                ident(&t.columns[*c].name),
                value_expr(t, *c, &format!("u.c{}", n + 1))
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The rows of the table with the given keys (one text array per key
/// column, cast by the statement), optionally locked.
fn by_keys(t: &batch::Table, select: &str, lock: bool) -> String {
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
        matches = key_matches(t),
        tbl = t.name,
        lock = if lock { " FOR UPDATE OF r" } else { "" },
    )
}

/// The number (1-based) of the first of the keys (one text array per key
/// column) whose row the filter does not admit (`admits_row`, over `r`).
pub fn rows_outside(t: &batch::Table, admits_row: &str) -> String {
    format!(
        "SELECT u.n FROM unnest({args}) WITH ORDINALITY AS u({names}, n) JOIN {tbl} AS r ON {matches}
          WHERE NOT {admits_row} ORDER BY u.n LIMIT 1",
        args = (1..=t.pk.len())
            .map(|i| format!("${i}::text[]"))
            .collect::<Vec<_>>()
            .join(", "),
        names = (1..=t.pk.len())
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(", "),
        tbl = t.name,
        matches = key_matches(t),
    )
}

/// $1 row images (text[] of JSON objects): the number (1-based) of the
/// first the filter does not admit (`admits_image`, over `x.img`).
pub fn images_outside(admits_image: &str) -> String {
    format!(
        "SELECT x.n FROM unnest($1::text[]) WITH ORDINALITY AS x(img, n) WHERE NOT {admits_image}
          ORDER BY x.n LIMIT 1"
    )
}

/// The live rows of the keys, locked (load::LiveRow).
pub fn live_rows(t: &batch::Table) -> String {
    by_keys(t, LIVE_COLUMNS, true)
}

/// How many of the keys have a row.
pub fn count_rows(t: &batch::Table) -> String {
    by_keys(t, "count(*)", false)
}

/// $1 the keys (text[] of jsonb texts), $2 oid: locks their tombstones
/// (run as the state's owner: only it may).
pub const LOCK_TOMBSTONES: &str = "\
SELECT 1 FROM tributary.tombstones d
 WHERE d.relid = $2 AND d.pk = ANY ($1::text[]::jsonb[]) FOR UPDATE OF d";

/// $1 the keys (text[] of jsonb texts), $2 oid: their tombstones, locked
/// by LOCK_TOMBSTONES first (load::TombstoneRow). Run as the caller: the
/// images are typed through the table, which may call its types' code.
pub fn tombstones(tbl: &str) -> String {
    format!(
        "SELECT d.pk::text, d.version, coalesce(d.origin, ''), d.colmeta, coalesce(d.row_origin, ''),
                coalesce(d.created_xid, 0), tributary.row_json(jsonb_populate_record(NULL::{tbl}, d.data))::text,
                coalesce(d.ts, 0)
           FROM tributary.tombstones d
          WHERE d.relid = $2 AND d.pk = ANY ($1::text[]::jsonb[])"
    )
}

/// $1 local, $2 remote (JSON object texts): the custom resolver `func`'s
/// merge, typed through the table.
pub fn merge(tbl: &str, func: &str) -> String {
    format!(
        "SELECT tributary.row_json(jsonb_populate_record(NULL::{tbl}, {func}($1::text::jsonb, $2::text::jsonb, NULL::jsonb)))::text"
    )
}

/// $1 the rows to write ({key, row} objects): the keys of those whose
/// columns `cols` reference no row of `parent` (by `refcols`), nor, for a
/// self-reference, a row of the batch.
pub fn missing_parents(
    tbl: &str,
    parent: &str,
    cols: &[String],
    refcols: &[String],
    self_ref: bool,
) -> String {
    let not_null = cols
        .iter()
        .map(|c| format!("r.{} IS NOT NULL", ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let matches = |alias: &str| {
        cols.iter()
            .zip(refcols)
            .map(|(c, rc)| format!("{alias}.{} = r.{}", ident(rc), ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let in_batch = if self_ref {
        format!(
            " AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements($1::text::jsonb) AS y(f)
                CROSS JOIN LATERAL jsonb_populate_record(NULL::{tbl}, y.f -> 'row') AS s WHERE {})",
            matches("s")
        )
    } else {
        String::new()
    };
    format!(
        "SELECT x.e ->> 'key' FROM jsonb_array_elements($1::text::jsonb) AS x(e)
          CROSS JOIN LATERAL jsonb_populate_record(NULL::{tbl}, x.e -> 'row') AS r
          WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {}){in_batch}",
        matches("p")
    )
}

/// The rows' parameters as a FROM item: one array per column (`u.c1..`),
/// sync_version (`u.v`), sync_origin (`u.o`), sync_colmeta (`u.m`); then,
/// for updates, after the xid, the addresses (`u.t`).
fn unnest(ncols: usize, ctid: bool) -> String {
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
}

/// The xid's parameter, after the rows' arrays.
fn xid_param(ncols: usize) -> String {
    format!("${}", ncols + 4)
}

/// Inserts the new rows (plan::Rows), stamped.
pub fn insert_rows(t: &batch::Table) -> String {
    let ncols = t.columns.len();
    let collist = t
        .columns
        .iter()
        .filter(|c| !c.generated)
        .map(|c| ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let sel = (0..ncols)
        .filter(|i| !t.columns[*i].generated)
        .map(|i| value_expr(t, i, &format!("u.c{}", i + 1)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {tbl} ({collist}, sync_version, sync_xid, sync_created_xid, sync_origin, sync_colmeta)
         OVERRIDING SYSTEM VALUE SELECT {sel}, u.v, {xid}, {xid}, nullif(u.o, ''), u.m FROM {from}",
        tbl = t.name,
        xid = xid_param(ncols),
        from = unnest(ncols, false)
    )
}

/// Updates the locked rows (plan::Rows) by their address, stamped.
pub fn update_rows(t: &batch::Table) -> String {
    let ncols = t.columns.len();
    let sets = (0..ncols)
        .filter(|i| !t.pk.contains(i) && !t.columns[*i].generated)
        .map(|i| {
            format!(
                "{} = {}",
                ident(&t.columns[i].name),
                value_expr(t, i, &format!("u.c{}", i + 1))
            )
        })
        .chain([
            "sync_version = u.v".into(),
            format!("sync_xid = {}", xid_param(ncols)),
            "sync_origin = nullif(u.o, '')".into(),
            "sync_colmeta = u.m".into(),
        ])
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE {tbl} AS r SET {sets} FROM {from} WHERE r.ctid = u.t::tid",
        tbl = t.name,
        from = unnest(ncols, true)
    )
}

/// $1 the keys (a JSON array of key objects): deletes their rows.
pub fn delete_rows(tbl: &str, pk: &[String]) -> String {
    let pk_match = pk
        .iter()
        .map(|c| format!("r.{0} = k.{0}", ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "DELETE FROM {tbl} AS r USING (SELECT k.* FROM jsonb_array_elements($1::text::jsonb) AS x(p)
           CROSS JOIN LATERAL jsonb_populate_record(NULL::{tbl}, x.p) AS k) AS k WHERE {pk_match}"
    )
}

// ── conflicts ─────────────────────────────────────────────────────────────

/// $1 id: the conflict's table and status, locked (as the state owner).
pub const LOCK_CONFLICT: &str =
    "SELECT relid::oid, status FROM tributary.conflicts WHERE id = $1 FOR UPDATE";

/// $1 id, $2 the resolution (JSON text).
pub const CLOSE_CONFLICT: &str = "\
UPDATE tributary.conflicts SET status = 'resolved', resolution = $2::jsonb, resolved_at = now()
 WHERE id = $1";
