//! A decoder for the `pgoutput` logical replication protocol (version 2:
//! streamed transactions), as sent inside XLogData.
//!
//! ```text
//!  bytes ──Decoder::decode──> Decoded { xid: Some(x) inside a stream, message }
//!   B begin · C commit · O origin · R relation · Y type · I insert · U update
//!   D delete · T truncate · M message · S stream start · E stream stop
//!   c stream commit · A stream abort
//! ```
//!
//! Inside a streamed transaction (between Stream Start and Stream Stop)
//! every change message carries the xid of its transaction first; the
//! decoder tracks that state. Values are kept as sent: text, binary, NULL,
//! or **unchanged TOAST**, which is not NULL and must never be written as
//! NULL downstream. Malformed input is an error, never a panic.

use crate::lsn::Lsn;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated: needed {needed} more bytes at offset {at} of a '{tag}' message")]
    Truncated { tag: char, at: usize, needed: usize },
    #[error("unknown message type {0:?}")]
    UnknownTag(u8),
    #[error("in a '{tag}' message: {what}")]
    Invalid { tag: char, what: String },
    #[error("empty message")]
    Empty,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the key).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    /// The value did not change and was not sent (a TOASTed column): keep
    /// the destination's current value.
    UnchangedToast,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple(pub Vec<Value>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Tuple,
    },
    /// `key` is sent when the key changed (replica identity default/index),
    /// `old` with replica identity full.
    Update {
        relation: u32,
        key: Option<Tuple>,
        old: Option<Tuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        key: Option<Tuple>,
        old: Option<Tuple>,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Vec<u8>,
    },
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    StreamAbort {
        xid: u32,
        subxact: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The streamed transaction a change belongs to (None outside streams).
    pub xid: Option<u32>,
    pub message: Message,
}

/// Decodes one message at a time, remembering whether a stream is open.
#[derive(Debug, Default)]
pub struct Decoder {
    in_stream: bool,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: char,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                at: self.pos,
                needed: n - (self.buf.len() - self.pos),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64()? as u64))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(DecodeError::Invalid {
                tag: self.tag,
                what: format!("unterminated string at offset {}", self.pos),
            })?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }
    fn invalid(&self, what: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            tag: self.tag,
            what: what.into(),
        }
    }
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(self.invalid(format!("negative column count {n}")));
        }
        let mut values = Vec::with_capacity((n as usize).min(1600));
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let len = self.i32()?;
                    if len < 0 {
                        return Err(self.invalid(format!("negative value length {len}")));
                    }
                    let data = self.take(len as usize)?.to_vec();
                    if kind == b't' {
                        Value::Text(data)
                    } else {
                        Value::Binary(data)
                    }
                }
                other => {
                    return Err(
                        self.invalid(format!("unknown tuple value kind {:?}", other as char))
                    )
                }
            });
        }
        Ok(Tuple(values))
    }
    fn done(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.invalid(format!(
                "{} unexpected trailing bytes",
                self.buf.len() - self.pos
            )))
        }
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Whether a streamed transaction's segment is open.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    pub fn decode(&mut self, buf: &[u8]) -> Result<Decoded, DecodeError> {
        let tag = *buf.first().ok_or(DecodeError::Empty)?;
        let mut r = Reader {
            buf,
            pos: 1,
            tag: tag as char,
        };
        // Change messages inside a stream start with the transaction's xid.
        let streamed_kind = matches!(tag, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M');
        let xid = if self.in_stream && streamed_kind {
            Some(r.u32()?)
        } else {
            None
        };
        let message = match tag {
            b'B' => Message::Begin {
                final_lsn: r.lsn()?,
                commit_time: r.i64()?,
                xid: r.u32()?,
            },
            b'C' => Message::Commit {
                flags: r.u8()?,
                commit_lsn: r.lsn()?,
                end_lsn: r.lsn()?,
                commit_time: r.i64()?,
            },
            b'O' => Message::Origin {
                commit_lsn: r.lsn()?,
                name: r.string()?,
            },
            b'R' => {
                let id = r.u32()?;
                let namespace = r.string()?;
                let name = r.string()?;
                let replica_identity = r.u8()?;
                let n = r.i16()?;
                if n < 0 {
                    return Err(r.invalid(format!("negative column count {n}")));
                }
                let mut columns = Vec::with_capacity((n as usize).min(1600));
                for _ in 0..n {
                    let flags = r.u8()?;
                    columns.push(Column {
                        key: flags & 1 != 0,
                        name: r.string()?,
                        type_oid: r.u32()?,
                        type_modifier: r.i32()?,
                    });
                }
                Message::Relation(Relation {
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }
            b'Y' => Message::Type {
                id: r.u32()?,
                namespace: r.string()?,
                name: r.string()?,
            },
            b'I' => {
                let relation = r.u32()?;
                match r.u8()? {
                    b'N' => Message::Insert {
                        relation,
                        new: r.tuple()?,
                    },
                    other => {
                        return Err(r.invalid(format!("expected 'N', got {:?}", other as char)))
                    }
                }
            }
            b'U' => {
                let relation = r.u32()?;
                let (mut key, mut old) = (None, None);
                let new = loop {
                    match r.u8()? {
                        b'K' if key.is_none() && old.is_none() => key = Some(r.tuple()?),
                        b'O' if key.is_none() && old.is_none() => old = Some(r.tuple()?),
                        b'N' => break r.tuple()?,
                        other => {
                            return Err(
                                r.invalid(format!("unexpected tuple marker {:?}", other as char))
                            )
                        }
                    }
                };
                Message::Update {
                    relation,
                    key,
                    old,
                    new,
                }
            }
            b'D' => {
                let relation = r.u32()?;
                match r.u8()? {
                    b'K' => Message::Delete {
                        relation,
                        key: Some(r.tuple()?),
                        old: None,
                    },
                    b'O' => Message::Delete {
                        relation,
                        key: None,
                        old: Some(r.tuple()?),
                    },
                    other => {
                        return Err(
                            r.invalid(format!("expected 'K' or 'O', got {:?}", other as char))
                        )
                    }
                }
            }
            b'T' => {
                let n = r.i32()?;
                if n < 0 {
                    return Err(r.invalid(format!("negative relation count {n}")));
                }
                let options = r.u8()?;
                let mut relations = Vec::with_capacity((n as usize).min(65536));
                for _ in 0..n {
                    relations.push(r.u32()?);
                }
                Message::Truncate {
                    relations,
                    cascade: options & 1 != 0,
                    restart_identity: options & 2 != 0,
                }
            }
            b'M' => {
                let flags = r.u8()?;
                let lsn = r.lsn()?;
                let prefix = r.string()?;
                let len = r.i32()?;
                if len < 0 {
                    return Err(r.invalid(format!("negative content length {len}")));
                }
                Message::Message {
                    transactional: flags & 1 != 0,
                    lsn,
                    prefix,
                    content: r.take(len as usize)?.to_vec(),
                }
            }
            b'S' => {
                let m = Message::StreamStart {
                    xid: r.u32()?,
                    first_segment: r.u8()? == 1,
                };
                self.in_stream = true;
                m
            }
            b'E' => {
                self.in_stream = false;
                Message::StreamStop
            }
            b'c' => Message::StreamCommit {
                xid: r.u32()?,
                flags: r.u8()?,
                commit_lsn: r.lsn()?,
                end_lsn: r.lsn()?,
                commit_time: r.i64()?,
            },
            b'A' => Message::StreamAbort {
                xid: r.u32()?,
                subxact: r.u32()?,
            },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.done()?;
        Ok(Decoded { xid, message })
    }
}

/// Encodes a message as pgoutput does; used by tests to feed the decoder,
/// and to fuzz it by round trips. Test-only: built with the
/// `test-support` feature (the worker's own tests enable it).
#[cfg(any(test, feature = "test-support"))]
pub fn encode(d: &Decoded) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    fn tuple(out: &mut Vec<u8>, t: &Tuple) {
        out.extend_from_slice(&(t.0.len() as i16).to_be_bytes());
        for v in &t.0 {
            match v {
                Value::Null => out.push(b'n'),
                Value::UnchangedToast => out.push(b'u'),
                Value::Text(b) | Value::Binary(b) => {
                    out.push(if matches!(v, Value::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }
    let mut out = Vec::new();
    let tag = match &d.message {
        Message::Begin { .. } => b'B',
        Message::Commit { .. } => b'C',
        Message::Origin { .. } => b'O',
        Message::Relation(_) => b'R',
        Message::Type { .. } => b'Y',
        Message::Insert { .. } => b'I',
        Message::Update { .. } => b'U',
        Message::Delete { .. } => b'D',
        Message::Truncate { .. } => b'T',
        Message::Message { .. } => b'M',
        Message::StreamStart { .. } => b'S',
        Message::StreamStop => b'E',
        Message::StreamCommit { .. } => b'c',
        Message::StreamAbort { .. } => b'A',
    };
    out.push(tag);
    if let Some(x) = d.xid {
        out.extend_from_slice(&x.to_be_bytes());
    }
    match &d.message {
        Message::Begin {
            final_lsn,
            commit_time,
            xid,
        } => {
            out.extend_from_slice(&final_lsn.0.to_be_bytes());
            out.extend_from_slice(&commit_time.to_be_bytes());
            out.extend_from_slice(&xid.to_be_bytes());
        }
        Message::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            out.push(*flags);
            out.extend_from_slice(&commit_lsn.0.to_be_bytes());
            out.extend_from_slice(&end_lsn.0.to_be_bytes());
            out.extend_from_slice(&commit_time.to_be_bytes());
        }
        Message::Origin { commit_lsn, name } => {
            out.extend_from_slice(&commit_lsn.0.to_be_bytes());
            string(&mut out, name);
        }
        Message::Relation(r) => {
            out.extend_from_slice(&r.id.to_be_bytes());
            string(&mut out, &r.namespace);
            string(&mut out, &r.name);
            out.push(r.replica_identity);
            out.extend_from_slice(&(r.columns.len() as i16).to_be_bytes());
            for c in &r.columns {
                out.push(u8::from(c.key));
                string(&mut out, &c.name);
                out.extend_from_slice(&c.type_oid.to_be_bytes());
                out.extend_from_slice(&c.type_modifier.to_be_bytes());
            }
        }
        Message::Type {
            id,
            namespace,
            name,
        } => {
            out.extend_from_slice(&id.to_be_bytes());
            string(&mut out, namespace);
            string(&mut out, name);
        }
        Message::Insert { relation, new } => {
            out.extend_from_slice(&relation.to_be_bytes());
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Update {
            relation,
            key,
            old,
            new,
        } => {
            out.extend_from_slice(&relation.to_be_bytes());
            if let Some(k) = key {
                out.push(b'K');
                tuple(&mut out, k);
            }
            if let Some(o) = old {
                out.push(b'O');
                tuple(&mut out, o);
            }
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Delete { relation, key, old } => {
            out.extend_from_slice(&relation.to_be_bytes());
            match (key, old) {
                (Some(k), _) => {
                    out.push(b'K');
                    tuple(&mut out, k);
                }
                (None, Some(o)) => {
                    out.push(b'O');
                    tuple(&mut out, o);
                }
                (None, None) => {}
            }
        }
        Message::Truncate {
            relations,
            cascade,
            restart_identity,
        } => {
            out.extend_from_slice(&(relations.len() as i32).to_be_bytes());
            out.push(u8::from(*cascade) | (u8::from(*restart_identity) << 1));
            for r in relations {
                out.extend_from_slice(&r.to_be_bytes());
            }
        }
        Message::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            out.push(u8::from(*transactional));
            out.extend_from_slice(&lsn.0.to_be_bytes());
            string(&mut out, prefix);
            out.extend_from_slice(&(content.len() as i32).to_be_bytes());
            out.extend_from_slice(content);
        }
        Message::StreamStart { xid, first_segment } => {
            out.extend_from_slice(&xid.to_be_bytes());
            out.push(u8::from(*first_segment));
        }
        Message::StreamStop => {}
        Message::StreamCommit {
            xid,
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            out.extend_from_slice(&xid.to_be_bytes());
            out.push(*flags);
            out.extend_from_slice(&commit_lsn.0.to_be_bytes());
            out.extend_from_slice(&end_lsn.0.to_be_bytes());
            out.extend_from_slice(&commit_time.to_be_bytes());
        }
        Message::StreamAbort { xid, subxact } => {
            out.extend_from_slice(&xid.to_be_bytes());
            out.extend_from_slice(&subxact.to_be_bytes());
        }
    }
    out
}
