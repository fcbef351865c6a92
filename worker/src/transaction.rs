//! Transaction assembly: pgoutput messages in, whole committed transactions
//! out, as a flat sequence of [`Item`]s (Begin, Change…, Commit).
//!
//! ```text
//!  B ─ I/U/D/T ─ C            (not streamed: already committed)  ──> items as they arrive
//!  S(xid) ─ changes ─ E ...   (streamed: may still abort)        ──> spill file per xid
//!  c(xid)                                                         ──> replay the file as items
//!  A(xid, sub)                                                    ──> drop the file, or the subxact
//! ```
//!
//! A transaction that is not streamed is sent by the server only after it
//! committed, so its changes go downstream as they arrive: memory does not
//! grow with its size. A streamed one is written to a temporary file until
//! its Stream Commit, then read back one change at a time; an aborted one
//! (or an aborted subtransaction) reaches no one. Memory stays bounded
//! either way.
//!
//! A change keeps its tuple as sent (text values); each destination shapes
//! it: JSON for a queue ([`Change::data_json`], via [`tributary_core::pgjson`]),
//! typed values for SQLite. An unchanged TOASTed column (`'u'`) is **left
//! out**, never turned into NULL: a destination keeps its current value.

use crate::lsn::Lsn;
use crate::pgoutput::{Column, DecodeError, Decoded, Decoder, Message, Relation, Tuple, Value};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use tributary_core::pgjson as value;

/// The prefix of the transactional logical messages that tag the deletes
/// of a DELETE statement run under `tributary.origin` (see sql/tracking.sql).
pub const ORIGIN_MESSAGE: &str = "tributary.origin";

/// The prefix of the transactional logical messages that carry a peer the
/// hub's resolved rows after its own changes were applied (see
/// `inbound`): they become changes for that peer only.
pub const WRITEBACK_MESSAGE: &str = "tributary.writeback";

/// The prefix of the transactional logical messages that describe a change
/// of shape of a tracked table (see `tributary._follow_ddl`): they come in
/// commit order, before the first change in the new shape.
pub const DDL_MESSAGE: &str = "tributary.ddl";

/// The content of a DDL message: how a tracked table's shape changed.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SchemaChange {
    /// Its row in `tributary.schema_changes`.
    pub id: i64,
    pub oid: u32,
    /// (schema, table) before and after.
    pub from: (String, String),
    pub to: (String, String),
    /// The columns now: (name, type oid, part of the primary key); no
    /// tracking columns.
    pub columns: Vec<(String, u32, bool)>,
    /// (old name, new name).
    pub renamed: Vec<(String, String)>,
    pub dropped: Vec<String>,
    pub added: Vec<String>,
    pub retyped: Vec<String>,
    /// The primary key is other columns now.
    pub rekeyed: bool,
    /// Every row follows, sent again in the new shape.
    pub refill: bool,
}

impl SchemaChange {
    /// The table as it is now, as a Relation message would describe it.
    fn relation(&self) -> Relation {
        Relation {
            id: self.oid,
            namespace: self.to.0.clone(),
            name: self.to.1.clone(),
            replica_identity: b'd',
            columns: columns_of(&self.columns),
        }
    }

    /// `schema.table` before the change, unquoted, for glob matching.
    pub fn from_plain_name(&self) -> String {
        format!("{}.{}", self.from.0, self.from.1)
    }
}

/// Columns as the hub's logical messages list them: (name, type oid, part
/// of the key).
fn columns_of(columns: &[(String, u32, bool)]) -> Vec<Column> {
    columns
        .iter()
        .map(|(name, type_oid, key)| Column {
            key: *key,
            name: name.clone(),
            type_oid: *type_oid,
            type_modifier: -1,
        })
        .collect()
}

/// The content of a write-back message.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct Writeback {
    pub peer: String,
    pub oid: u32,
    pub schema: String,
    pub table: String,
    /// (name, type oid, part of the key)
    pub columns: Vec<(String, u32, bool)>,
    /// Rows to hold, every column as PostgreSQL prints it.
    pub upserts: Vec<Vec<Option<String>>>,
    /// Keys to remove (the other columns null).
    pub deletes: Vec<Vec<Option<String>>>,
}

/// A published table, as the last Relation message described it.
#[derive(Debug)]
pub struct Table {
    pub id: u32,
    pub schema: String,
    pub name: String,
    /// `schema.name`, each part quoted only when it must be: the queue's
    /// `tbl` and what destination globs match against (unquoted).
    pub display: String,
    pub relation: Relation,
    origin_col: Option<usize>,
    version_col: Option<usize>,
    /// Which destinations take this table (filled by the router).
    pub(crate) routes: std::sync::OnceLock<Vec<bool>>,
}

impl Table {
    pub fn new(relation: Relation) -> Table {
        let find = |n: &str| relation.columns.iter().position(|c| c.name == n);
        use tributary_core::tracking::{ORIGIN, VERSION};
        Table {
            id: relation.id,
            schema: relation.namespace.clone(),
            name: relation.name.clone(),
            display: format!(
                "{}.{}",
                quote_if_needed(&relation.namespace),
                quote_if_needed(&relation.name)
            ),
            origin_col: find(ORIGIN),
            version_col: find(VERSION),
            routes: std::sync::OnceLock::new(),
            relation,
        }
    }

    /// The position of `sync_version`, in a tracked table.
    pub fn version_col(&self) -> Option<usize> {
        self.version_col
    }

    /// `schema.name` unquoted, for glob matching.
    pub fn plain_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

fn quote_if_needed(s: &str) -> String {
    let simple = !s.is_empty()
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if simple {
        s.to_string()
    } else {
        tributary_core::quote::ident(s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A change of the table's shape ([`Change::schema`]); no row.
    Schema,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Insert => "I",
            Op::Update => "U",
            Op::Delete => "D",
            Op::Truncate => "T",
            Op::Schema => "S",
        }
    }
}

/// One change of a committed transaction.
#[derive(Debug)]
pub struct Change {
    pub table: Arc<Table>,
    pub op: Op,
    /// Position in its transaction, from 0: with the commit LSN, the key
    /// every destination deduplicates on.
    pub ord: u32,
    /// The new row (insert, update), the key or old row (delete; other
    /// columns may be NULL), None for TRUNCATE.
    pub tuple: Option<Tuple>,
    /// The row's `sync_version`, when the table is tracked.
    pub version: Option<i64>,
    /// Who wrote it: the row's `sync_origin`, the `tributary.origin` a
    /// delete ran under, or the transaction's replication origin.
    pub origin: Option<String>,
    /// For one destination only (a write-back of resolved rows).
    pub only_for: Option<Arc<str>>,
    /// What changed, for [`Op::Schema`].
    pub schema: Option<Arc<SchemaChange>>,
}

impl Change {
    /// The key columns as a JSON object (None for TRUNCATE, or a table
    /// without a key).
    pub fn pk_json(&self) -> Option<String> {
        let row = self.tuple.as_ref()?;
        key_json_opt(&self.table, row)
    }

    /// The row as a JSON object, without the tracking columns and without
    /// unchanged TOASTed columns (None for DELETE and TRUNCATE).
    pub fn data_json(&self) -> Option<String> {
        if !matches!(self.op, Op::Insert | Op::Update) {
            return None;
        }
        let row = self.tuple.as_ref()?;
        Some(json_object(16 * row.0.len(), self.data_columns()))
    }

    /// The data columns with their values: tracking columns and unchanged
    /// TOAST left out.
    pub fn data_columns(&self) -> impl Iterator<Item = (&Column, &Value)> {
        let row = self.tuple.as_ref().map(|t| t.0.as_slice()).unwrap_or(&[]);
        self.table
            .relation
            .columns
            .iter()
            .zip(row)
            .filter(|(c, v)| {
                !tributary_core::tracking::is_tracking_column(&c.name)
                    && !matches!(v, Value::UnchangedToast)
            })
    }

    /// The key columns with their values.
    pub fn key_columns(&self) -> impl Iterator<Item = (&Column, &Value)> {
        let row = self.tuple.as_ref().map(|t| t.0.as_slice()).unwrap_or(&[]);
        self.table
            .relation
            .columns
            .iter()
            .zip(row)
            .filter(|(c, _)| c.key)
    }

    /// Columns left out because their TOASTed value did not change.
    pub fn unchanged(&self) -> Vec<&str> {
        let row = self.tuple.as_ref().map(|t| t.0.as_slice()).unwrap_or(&[]);
        self.table
            .relation
            .columns
            .iter()
            .zip(row)
            .filter(|(_, v)| matches!(v, Value::UnchangedToast))
            .map(|(c, _)| c.name.as_str())
            .collect()
    }
}

/// What assembly hands downstream, in commit order.
#[derive(Debug)]
pub enum Item {
    Begin {
        xid: u32,
        commit_lsn: Lsn,
        commit_time: i64,
    },
    Change(Change),
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("spill file: {0}")]
    Spill(#[from] std::io::Error),
    #[error("a change for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("a {0} message that cannot be read: {1}")]
    BadMessage(&'static str, String),
}

/// The per-transaction state that turns messages into changes.
#[derive(Default)]
struct TxnState {
    replication_origin: Option<String>,
    delete_origin: Option<String>,
    ord: u32,
}

/// One streamed transaction being spilled.
struct Spill {
    file: BufWriter<File>,
    aborted: HashSet<u32>,
}

pub struct Assembler {
    decoder: Decoder,
    tables: HashMap<u32, Arc<Table>>,
    /// The open non-streamed transaction.
    open: Option<TxnState>,
    streams: HashMap<u32, Spill>,
    /// The streamed transaction whose segment is open.
    current_stream: Option<u32>,
    spill_dir: PathBuf,
}

impl Assembler {
    pub fn new(spill_dir: PathBuf) -> Assembler {
        Assembler {
            decoder: Decoder::new(),
            tables: HashMap::new(),
            open: None,
            streams: HashMap::new(),
            current_stream: None,
            spill_dir,
        }
    }

    /// Whether the last message left no transaction half-received and no
    /// stream open: a keepalive seen now covers everything sent before it.
    pub fn idle(&self) -> bool {
        self.open.is_none() && self.streams.is_empty() && !self.decoder.in_stream()
    }

    /// Whether a non-streamed transaction is being received.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Feeds one XLogData payload. Items of non-streamed transactions are
    /// pushed to `out`; a Stream Commit returns a [`Replay`] of the spilled
    /// transaction, to be drained before the next message.
    pub fn feed(
        &mut self,
        buf: &[u8],
        out: &mut Vec<Item>,
    ) -> Result<Option<Replay>, AssembleError> {
        let was_streaming = self.decoder.in_stream();
        let Decoded { xid, message } = self.decoder.decode(buf)?;
        if let (true, Some(sub)) = (was_streaming, xid) {
            self.spill(buf, sub)?;
            return Ok(None);
        }
        match message {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                self.open = Some(TxnState::default());
                out.push(Item::Begin {
                    xid,
                    commit_lsn: final_lsn,
                    commit_time,
                });
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                if self.open.take().is_none() {
                    return Err(AssembleError::Protocol("Commit without Begin".into()));
                }
                out.push(Item::Commit {
                    commit_lsn,
                    end_lsn,
                    commit_time,
                });
            }
            Message::StreamStart { xid, first_segment } => self.stream_start(xid, first_segment)?,
            Message::StreamStop => self.current_stream = None,
            Message::StreamAbort { xid, subxact } => {
                if xid == subxact {
                    self.streams.remove(&xid);
                } else if let Some(s) = self.streams.get_mut(&xid) {
                    s.aborted.insert(subxact);
                }
            }
            Message::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                let commit = Item::Commit {
                    commit_lsn,
                    end_lsn,
                    commit_time,
                };
                let replay = self.stream_commit(xid, commit)?;
                out.push(Item::Begin {
                    xid,
                    commit_lsn,
                    commit_time,
                });
                return Ok(Some(replay));
            }
            other => {
                let state = self.open.as_mut().ok_or_else(|| {
                    AssembleError::Protocol("a change outside a transaction".into())
                })?;
                convert(&mut self.tables, state, other, out)?;
            }
        }
        Ok(None)
    }

    /// A change (or Relation) of a streamed transaction: spilled, without
    /// its xid, as a plain message for the replay.
    fn spill(&mut self, buf: &[u8], sub: u32) -> Result<(), AssembleError> {
        let top = self.current_stream.ok_or_else(|| {
            AssembleError::Protocol("a streamed change outside Stream Start/Stop".into())
        })?;
        let spill = self.streams.get_mut(&top).ok_or_else(|| {
            AssembleError::Protocol(format!("no open stream for transaction {top}"))
        })?;
        let len = (buf.len() - 4) as u32;
        spill.file.write_all(&len.to_be_bytes())?;
        spill.file.write_all(&sub.to_be_bytes())?;
        spill.file.write_all(&buf[..1])?;
        spill.file.write_all(&buf[5..])?;
        Ok(())
    }

    /// A Stream Start: the first segment of a transaction opens its spill
    /// file; a later one continues it.
    fn stream_start(&mut self, xid: u32, first_segment: bool) -> Result<(), AssembleError> {
        if first_segment || !self.streams.contains_key(&xid) {
            if !first_segment {
                return Err(AssembleError::Protocol(format!(
                    "stream segment of transaction {xid} without its first segment"
                )));
            }
            let file = tempfile::tempfile_in(&self.spill_dir)?;
            self.streams.insert(
                xid,
                Spill {
                    file: BufWriter::with_capacity(256 * 1024, file),
                    aborted: HashSet::new(),
                },
            );
        }
        self.current_stream = Some(xid);
        Ok(())
    }

    /// A Stream Commit: the spilled transaction, to replay up to `commit`.
    fn stream_commit(&mut self, xid: u32, commit: Item) -> Result<Replay, AssembleError> {
        let spill = self.streams.remove(&xid).ok_or_else(|| {
            AssembleError::Protocol(format!("Stream Commit of unknown transaction {xid}"))
        })?;
        let mut file = spill.file.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Replay {
            file: BufReader::with_capacity(256 * 1024, file),
            aborted: spill.aborted,
            decoder: Decoder::new(),
            state: TxnState::default(),
            commit: Some(commit),
            pending: Vec::new(),
        })
    }
}

/// The changes of a write-back message: the hub's rows (and vanished keys)
/// for the one peer whose pull emitted it, each with the next ordinal.
fn writeback_changes(
    tables: &HashMap<u32, Arc<Table>>,
    st: &mut TxnState,
    content: &[u8],
    out: &mut Vec<Item>,
) -> Result<(), AssembleError> {
    let w: Writeback = serde_json::from_slice(content)
        .map_err(|e| AssembleError::BadMessage(WRITEBACK_MESSAGE, e.to_string()))?;
    let columns = columns_of(&w.columns);
    // The stream's own description of the table when it matches.
    let t = match tables.get(&w.oid) {
        Some(t)
            if t.relation.columns.len() == columns.len()
                && t.relation.columns.iter().zip(&columns).all(|(a, b)| {
                    a.name == b.name && a.type_oid == b.type_oid && a.key == b.key
                }) =>
        {
            t.clone()
        }
        _ => Arc::new(Table::new(Relation {
            id: w.oid,
            namespace: w.schema.clone(),
            name: w.table.clone(),
            replica_identity: b'd',
            columns,
        })),
    };
    let peer: Arc<str> = Arc::from(w.peer.as_str());
    let tuple = |vals: Vec<Option<String>>| {
        Tuple(
            vals.into_iter()
                .map(|v| v.map_or(Value::Null, |s| Value::Text(s.into_bytes())))
                .collect(),
        )
    };
    for row in w.upserts {
        let mut c = row_change(&t, Op::Update, st, tuple(row));
        c.origin = None;
        c.only_for = Some(peer.clone());
        st.ord += 1;
        out.push(Item::Change(c));
    }
    for key in w.deletes {
        let mut c = bare_change(&t, Op::Delete, st, Some(tuple(key)), None);
        c.only_for = Some(peer.clone());
        st.ord += 1;
        out.push(Item::Change(c));
    }
    Ok(())
}

/// Turns one message of a transaction into its changes (Relation messages
/// update the cache and produce none).
fn convert(
    tables: &mut HashMap<u32, Arc<Table>>,
    st: &mut TxnState,
    message: Message,
    out: &mut Vec<Item>,
) -> Result<(), AssembleError> {
    let table = |tables: &HashMap<u32, Arc<Table>>, id: u32| {
        tables
            .get(&id)
            .cloned()
            .ok_or(AssembleError::UnknownRelation(id))
    };
    let mut push = |st: &mut TxnState, c: Change| {
        st.ord += 1;
        out.push(Item::Change(c));
    };
    match message {
        Message::Relation(r) => {
            tables.insert(r.id, Arc::new(Table::new(r)));
        }
        Message::Origin { name, .. } => st.replication_origin = Some(name),
        Message::Message {
            transactional: true,
            prefix,
            content,
            ..
        } if prefix == ORIGIN_MESSAGE => {
            st.delete_origin =
                Some(String::from_utf8_lossy(&content).into_owned()).filter(|s| !s.is_empty());
        }
        Message::Message {
            transactional: true,
            prefix,
            content,
            ..
        } if prefix == WRITEBACK_MESSAGE => writeback_changes(tables, st, &content, out)?,
        Message::Message {
            transactional: true,
            prefix,
            content,
            ..
        } if prefix == DDL_MESSAGE => {
            let c = schema_change(st, &content)?;
            push(st, c);
        }
        Message::Insert { relation, new } => {
            let t = table(tables, relation)?;
            let c = row_change(&t, Op::Insert, st, new);
            push(st, c);
        }
        Message::Update {
            relation, key, new, ..
        } => {
            let t = table(tables, relation)?;
            // A changed key: the old key is gone (a delete), then the row.
            if let Some(old) = key {
                let moved = t
                    .relation
                    .columns
                    .iter()
                    .zip(old.0.iter().zip(&new.0))
                    .any(|(c, (a, b))| c.key && a != b);
                if moved {
                    let c =
                        bare_change(&t, Op::Delete, st, Some(old), origin_of(&t, st, Some(&new)));
                    push(st, c);
                }
            }
            let c = row_change(&t, Op::Update, st, new);
            push(st, c);
        }
        Message::Delete { relation, key, old } => {
            let t = table(tables, relation)?;
            let tuple = key.or(old).ok_or_else(|| {
                AssembleError::Protocol(format!("a delete on {} without a key", t.display))
            })?;
            let c = bare_change(&t, Op::Delete, st, Some(tuple), st.delete_origin());
            push(st, c);
        }
        Message::Truncate { relations, .. } => {
            for id in relations {
                let t = table(tables, id)?;
                let c = bare_change(&t, Op::Truncate, st, None, st.delete_origin());
                push(st, c);
            }
        }
        // Type messages, non-transactional and other logical messages
        // carry no row change.
        _ => {}
    }
    Ok(())
}

/// The bytes of a text or binary value (None for NULL and unchanged TOAST).
pub fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Text(b) | Value::Binary(b) => Some(b),
        _ => None,
    }
}

fn origin_of(t: &Table, st: &TxnState, row: Option<&Tuple>) -> Option<String> {
    row.and_then(|r| t.origin_col.and_then(|i| r.0.get(i)))
        .and_then(text)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| st.replication_origin.clone())
}

/// The change a DDL message makes: the table as it is now (for routing;
/// the Relation message that describes it to the changes comes on its
/// own), and how it changed.
fn schema_change(st: &TxnState, content: &[u8]) -> Result<Change, AssembleError> {
    let schema: SchemaChange = serde_json::from_slice(content)
        .map_err(|e| AssembleError::BadMessage(DDL_MESSAGE, e.to_string()))?;
    Ok(Change {
        table: Arc::new(Table::new(schema.relation())),
        op: Op::Schema,
        ord: st.ord,
        tuple: None,
        version: None,
        origin: None,
        only_for: None,
        schema: Some(Arc::new(schema)),
    })
}

/// A change without row values of its own (a delete, a truncate): the
/// key or nothing, and who made it.
fn bare_change(
    t: &Arc<Table>,
    op: Op,
    st: &TxnState,
    tuple: Option<Tuple>,
    origin: Option<String>,
) -> Change {
    Change {
        table: t.clone(),
        op,
        ord: st.ord,
        tuple,
        version: None,
        origin,
        only_for: None,
        schema: None,
    }
}

impl TxnState {
    /// The origin of a delete or truncate: the `tributary.origin` its
    /// statement ran under, else the replication origin.
    fn delete_origin(&self) -> Option<String> {
        self.delete_origin
            .clone()
            .or_else(|| self.replication_origin.clone())
    }
}

fn row_change(t: &Arc<Table>, op: Op, st: &TxnState, row: Tuple) -> Change {
    Change {
        table: t.clone(),
        op,
        ord: st.ord,
        version: t
            .version_col
            .and_then(|i| row.0.get(i))
            .and_then(text)
            .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()),
        origin: origin_of(t, st, Some(&row)),
        tuple: Some(row),
        only_for: None,
        schema: None,
    }
}

fn key_json_opt(t: &Table, row: &Tuple) -> Option<String> {
    t.relation
        .columns
        .iter()
        .any(|c| c.key)
        .then(|| key_json(t, row))
}

/// The key columns of `row` as a JSON object. A key-only tuple (a delete
/// or an old key) holds NULL in the other columns.
fn key_json(t: &Table, row: &Tuple) -> String {
    json_object(
        32,
        t.relation.columns.iter().zip(&row.0).filter(|(c, _)| c.key),
    )
}

/// `{"column": value, ...}` of typed text values (NULL and unchanged TOAST
/// as null).
fn json_object<'a>(capacity: usize, cols: impl Iterator<Item = (&'a Column, &'a Value)>) -> String {
    let mut s = String::with_capacity(capacity + 2);
    s.push('{');
    for (i, (col, v)) in cols.enumerate() {
        if i > 0 {
            s.push(',');
        }
        value::push_str(&mut s, &col.name);
        s.push(':');
        match text(v) {
            Some(b) => value::push_json(&mut s, col.type_oid, b),
            None => s.push_str("null"),
        }
    }
    s.push('}');
    s
}

/// A committed streamed transaction, read back from its spill file one
/// change at a time.
pub struct Replay {
    file: BufReader<File>,
    aborted: HashSet<u32>,
    decoder: Decoder,
    state: TxnState,
    commit: Option<Item>,
    pending: Vec<Item>,
}

impl Replay {
    /// The next item (the last is the Commit), or None when done. Relation
    /// messages spilled with the stream update `assembler`'s cache.
    pub fn next(&mut self, assembler: &mut Assembler) -> Result<Option<Item>, AssembleError> {
        loop {
            if let Some(i) = self.pending.pop() {
                return Ok(Some(i));
            }
            let mut head = [0u8; 8];
            match self.file.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(self.commit.take());
                }
                Err(e) => return Err(e.into()),
            }
            let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
            let sub = u32::from_be_bytes(head[4..].try_into().unwrap());
            let mut buf = vec![0u8; len];
            self.file.read_exact(&mut buf)?;
            if self.aborted.contains(&sub) {
                continue;
            }
            let Decoded { message, .. } = self.decoder.decode(&buf)?;
            let mut out = Vec::new();
            convert(&mut assembler.tables, &mut self.state, message, &mut out)?;
            out.reverse();
            self.pending = out;
        }
    }
}
