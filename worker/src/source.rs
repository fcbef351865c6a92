//! Our own streaming replication client: a `replication=database`
//! connection speaking the protocol directly (upstream tokio-postgres has
//! no replication support).
//!
//! ```text
//!  connect (TCP or Unix socket; TLS over TCP as sslmode says (tls.rs); trust, md5 or SCRAM-SHA-256)
//!   ├─ IDENTIFY_SYSTEM
//!   ├─ CREATE_REPLICATION_SLOT name LOGICAL pgoutput [EXPORT_SNAPSHOT]
//!   └─ START_REPLICATION SLOT name LOGICAL lsn (proto_version '2', streaming 'on', publication_names ...)
//!        └─ CopyBoth: server  XLogData 'w' | keepalive 'k'
//!                     client  standby status update 'r' (written, flushed, applied)
//! ```
//!
//! Server errors keep their SQLSTATE, and are classed: a missing or
//! invalidated slot, a missing publication or a `wal_level` below logical
//! is definite (the operator must act, and a slot is never silently
//! recreated); anything else is transient.

use crate::error::{Action, Cause};
use crate::lsn::Lsn;
use crate::tls::{Negotiate, SslMode, TlsError};
use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tributary_core::quote::{ident as quote_ident, literal as quote_literal};

/// Where and how to connect, from a `postgres://user:pass@host:port/db` URL.
/// A host starting with `/` is a Unix socket directory. The query may set
/// `host`, `sslmode` and `sslrootcert` (libpq's names, %-escapes decoded);
/// other `ssl*` parameters are refused, the rest ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// A PEM file of the CA certificates to trust.
    pub sslrootcert: Option<String>,
}

/// A URL the worker cannot use: a configuration error.
fn bad_url(why: &str, hint: &str) -> SourceError {
    SourceError::Definite {
        cause: Cause::Config,
        code: None,
        message: format!("invalid source URL: {why}"),
        hint: hint.into(),
    }
}

const URL_HINT: &str =
    "Use postgres://user@host:port/database (password via TRIBUTARY_SOURCE_PASSWORD).";
const SSL_HINT: &str = "Use ?sslmode=disable|prefer|require|verify-ca|verify-full; verify-ca and verify-full need &sslrootcert=<PEM file of the CA>.";

/// What the URL's query sets.
#[derive(Default)]
struct Query {
    host: Option<String>,
    sslmode: SslMode,
    sslrootcert: Option<String>,
}

fn parse_query(query: &str) -> Result<Query, SourceError> {
    let mut q = Query::default();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v)
            .ok_or_else(|| bad_url(&format!("the value of {k} has a bad %-escape"), URL_HINT))?;
        match k {
            "host" => q.host = Some(v),
            "sslmode" => q.sslmode = SslMode::parse(&v).map_err(|why| bad_url(&why, SSL_HINT))?,
            "sslrootcert" if v == "system" => {
                return Err(bad_url(
                    "sslrootcert=system (the system's CA store) is not supported",
                    SSL_HINT,
                ))
            }
            "sslrootcert" => q.sslrootcert = Some(v).filter(|v| !v.is_empty()),
            k if k.starts_with("ssl") => {
                return Err(bad_url(
                    &format!("{k} is not supported (only sslmode and sslrootcert are)"),
                    SSL_HINT,
                ))
            }
            _ => {}
        }
    }
    if q.sslmode.needs_root_cert() && q.sslrootcert.is_none() {
        return Err(bad_url(
            &format!("sslmode={} needs sslrootcert", q.sslmode.as_str()),
            SSL_HINT,
        ));
    }
    Ok(q)
}

/// Decodes `%XX` escapes; None for a malformed one or bytes that are not
/// UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

impl ConnectOptions {
    pub fn from_url(url: &str, password: Option<String>) -> Result<ConnectOptions, SourceError> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| bad_url("it must start with postgres://", URL_HINT))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth, hostpart) = rest.rsplit_once('@').unwrap_or(("", rest));
        let (user, url_password) = match auth.split_once(':') {
            Some((u, p)) => (u.to_string(), Some(p.to_string())),
            None => (auth.to_string(), None),
        };
        let (hostport, dbname) = hostpart.split_once('/').unwrap_or((hostpart, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| bad_url("the port is not a number", URL_HINT))?,
            ),
            None => (hostport.to_string(), 5432),
        };
        let q = parse_query(query)?;
        let host = match q.host.unwrap_or(host) {
            h if h.is_empty() => "localhost".to_string(),
            h => h,
        };
        let user = if user.is_empty() {
            "postgres".to_string()
        } else {
            user
        };
        let dbname = if dbname.is_empty() {
            user.clone()
        } else {
            dbname.to_string()
        };
        Ok(ConnectOptions {
            host,
            port,
            user,
            password: password.or(url_password),
            dbname,
            sslmode: q.sslmode,
            sslrootcert: q.sslrootcert,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The operator must act; retrying cannot help.
    #[error("{message}{}. Hint: {hint}", code.as_deref().map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default())]
    Definite {
        cause: Cause,
        code: Option<String>,
        message: String,
        hint: String,
    },
    /// Retry with backoff.
    #[error("{message}{}", code.as_deref().map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default())]
    Transient {
        code: Option<String>,
        message: String,
    },
}

impl From<std::io::Error> for SourceError {
    fn from(e: std::io::Error) -> Self {
        SourceError::Transient {
            code: None,
            message: format!("connection: {e}"),
        }
    }
}

/// A server error, classed by the worker's one classifier
/// ([`crate::error::classify`]).
pub fn classify(code: &str, message: &str) -> SourceError {
    let cause = crate::error::classify(code, message);
    if cause.action() == Action::Stop {
        SourceError::Definite {
            cause,
            code: Some(code.to_string()),
            message: message.to_string(),
            hint: cause.hint().to_string(),
        }
    } else {
        SourceError::Transient {
            code: Some(code.to_string()),
            message: message.to_string(),
        }
    }
}

impl SourceError {
    pub fn cause(&self) -> Cause {
        match self {
            SourceError::Definite { cause, .. } => *cause,
            SourceError::Transient { code, message } => match code {
                Some(c) => crate::error::classify(c, message),
                None => Cause::Connection,
            },
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Asks for TLS as `o.sslmode` says, before the startup message: the
/// 8-byte SSLRequest, then one byte, 'S' (the handshake follows) or 'N'.
/// Exactly one byte is read before the handshake, so nothing the server
/// sent in plaintext can be taken as coming from inside TLS.
async fn start_tls(
    mut s: tokio::net::TcpStream,
    o: &ConnectOptions,
) -> Result<Box<dyn Io>, SourceError> {
    let negotiate = o.negotiate();
    if negotiate == Negotiate::Plain {
        return Ok(Box::new(s));
    }
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    s.write_all(&request).await?;
    let answer = s.read_u8().await?;
    match (answer, negotiate) {
        (b'S', _) => Ok(Box::new(crate::tls::handshake(s, o).await?)),
        (b'N', Negotiate::Try) => Ok(Box::new(s)),
        (b'N', _) => Err(TlsError::refused(o).into()),
        (other, _) => Err(SourceError::Transient {
            code: None,
            message: format!("unexpected answer {other:#04x} to the SSL request"),
        }),
    }
}

/// One backend message, framed: its tag and body.
struct Frame {
    tag: u8,
    body: BytesMut,
}

pub struct Connection {
    io: Box<dyn Io>,
    read: BytesMut,
    write: BytesMut,
}

/// What IDENTIFY_SYSTEM says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
    pub dbname: String,
}

/// What CREATE_REPLICATION_SLOT says: where the slot starts, and the
/// snapshot that sees exactly the data before that point (for a consistent
/// initial copy), when exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    pub consistent_point: Lsn,
    pub snapshot: Option<String>,
}

/// One event of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A pgoutput message, at `wal_start`.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Vec<u8>,
    },
    /// The server's position; it asks for a status update when `reply`.
    Keepalive { wal_end: Lsn, reply: bool },
}

fn cstr(body: &mut BytesMut) -> String {
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance((end + 1).min(body.len()));
    s
}

fn server_error(mut body: BytesMut) -> SourceError {
    let (mut code, mut message) = (String::new(), String::new());
    while !body.is_empty() {
        let kind = body.get_u8();
        if kind == 0 {
            break;
        }
        let v = cstr(&mut body);
        match kind {
            b'C' => code = v,
            b'M' => message = v,
            _ => {}
        }
    }
    classify(&code, &message)
}

impl Connection {
    pub async fn connect(o: &ConnectOptions) -> Result<Connection, SourceError> {
        let io: Box<dyn Io> = if o.host.starts_with('/') {
            Box::new(
                tokio::net::UnixStream::connect(format!("{}/.s.PGSQL.{}", o.host, o.port)).await?,
            )
        } else {
            let s = tokio::net::TcpStream::connect((o.host.as_str(), o.port)).await?;
            s.set_nodelay(true)?;
            start_tls(s, o).await?
        };
        let mut c = Connection {
            io,
            read: BytesMut::with_capacity(64 * 1024),
            write: BytesMut::new(),
        };
        // pgoutput prints values with the walsender's settings: pin them.
        let name = crate::hub::tagged("tributary-worker");
        let params = [
            ("user", o.user.as_str()),
            ("database", o.dbname.as_str()),
            ("replication", "database"),
            ("application_name", name.as_str()),
        ];
        let params = params
            .into_iter()
            .chain(crate::hub::SESSION_SETTINGS.iter().copied());
        frontend::startup_message(params, &mut c.write)?;
        c.flush().await?;
        c.authenticate(o).await?;
        Ok(c)
    }

    async fn flush(&mut self) -> Result<(), SourceError> {
        self.io.write_all(&self.write).await?;
        self.io.flush().await?;
        self.write.clear();
        Ok(())
    }

    async fn frame(&mut self) -> Result<Frame, SourceError> {
        loop {
            if self.read.len() >= 5 {
                let len = u32::from_be_bytes(self.read[1..5].try_into().unwrap()) as usize;
                if len < 4 {
                    return Err(SourceError::Transient {
                        code: None,
                        message: "invalid message length from server".into(),
                    });
                }
                if self.read.len() > len {
                    let mut msg = self.read.split_to(len + 1);
                    let tag = msg.get_u8();
                    msg.advance(4);
                    return Ok(Frame { tag, body: msg });
                }
                self.read.reserve(len + 1 - self.read.len());
            }
            // Splitting frames off eats the buffer's spare room: keep it
            // large, or every read becomes a small syscall.
            if self.read.capacity() - self.read.len() < 16 * 1024 {
                self.read.reserve(128 * 1024);
            }
            if self.io.read_buf(&mut self.read).await? == 0 {
                return Err(SourceError::Transient {
                    code: None,
                    message: "the server closed the connection".into(),
                });
            }
        }
    }

    async fn authenticate(&mut self, o: &ConnectOptions) -> Result<(), SourceError> {
        let password = || {
            o.password.clone().ok_or_else(|| SourceError::Definite {
                cause: Cause::Login,
                code: None,
                message: "the server asks for a password".into(),
                hint: "Set TRIBUTARY_SOURCE_PASSWORD.".into(),
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let mut f = self.frame().await?;
            match f.tag {
                b'R' => match f.body.get_i32() {
                    0 => {}
                    3 => {
                        frontend::password_message(password()?.as_bytes(), &mut self.write)?;
                        self.flush().await?;
                    }
                    5 => {
                        let salt: [u8; 4] = f.body[..4].try_into().unwrap_or_default();
                        let hash = postgres_protocol::authentication::md5_hash(
                            o.user.as_bytes(),
                            password()?.as_bytes(),
                            salt,
                        );
                        frontend::password_message(hash.as_bytes(), &mut self.write)?;
                        self.flush().await?;
                    }
                    10 => {
                        let s = sasl::ScramSha256::new(
                            password()?.as_bytes(),
                            sasl::ChannelBinding::unsupported(),
                        );
                        frontend::sasl_initial_response(
                            sasl::SCRAM_SHA_256,
                            s.message(),
                            &mut self.write,
                        )?;
                        self.flush().await?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or_else(|| SourceError::Transient {
                            code: None,
                            message: "SASL out of order".into(),
                        })?;
                        s.update(&f.body).map_err(|e| SourceError::Definite {
                            cause: Cause::Login,
                            code: None,
                            message: format!("SCRAM: {e}"),
                            hint: "Check the password.".into(),
                        })?;
                        frontend::sasl_response(s.message(), &mut self.write)?;
                        self.flush().await?;
                    }
                    12 => {
                        if let Some(s) = scram.as_mut() {
                            s.finish(&f.body).map_err(|e| SourceError::Definite {
                                cause: Cause::Login,
                                code: None,
                                message: format!("SCRAM: {e}"),
                                hint: "The server's proof did not verify.".into(),
                            })?;
                        }
                    }
                    other => {
                        return Err(SourceError::Definite {
                            cause: Cause::Login,
                            code: None,
                            message: format!("unsupported authentication method {other}"),
                            hint: "Use trust, md5 or scram-sha-256 in pg_hba.conf for the worker."
                                .into(),
                        })
                    }
                },
                b'E' => return Err(server_error(f.body)),
                b'Z' => return Ok(()),
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    /// Runs a replication command; returns its rows as text.
    pub async fn command(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            let mut f = self.frame().await?;
            match f.tag {
                b'D' => {
                    let n = f.body.get_i16();
                    let mut row = Vec::with_capacity(n.max(0) as usize);
                    for _ in 0..n {
                        let len = f.body.get_i32();
                        if len < 0 {
                            row.push(None);
                        } else {
                            row.push(Some(
                                String::from_utf8_lossy(&f.body.split_to(len as usize))
                                    .into_owned(),
                            ));
                        }
                    }
                    rows.push(row);
                }
                b'E' => failure = Some(server_error(f.body)),
                b'Z' => return failure.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemInfo, SourceError> {
        let rows = self.command("IDENTIFY_SYSTEM").await?;
        let r = rows.first().ok_or_else(|| SourceError::Transient {
            code: None,
            message: "IDENTIFY_SYSTEM returned no row".into(),
        })?;
        let field = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        Ok(SystemInfo {
            system_id: field(0),
            timeline: field(1).parse().unwrap_or(0),
            xlogpos: field(2).parse().unwrap_or_default(),
            dbname: field(3),
        })
    }

    /// Creates a logical pgoutput slot. With `export_snapshot`, the snapshot
    /// stays usable until the next command on this connection.
    pub async fn create_slot(
        &mut self,
        name: &str,
        export_snapshot: bool,
    ) -> Result<SlotInfo, SourceError> {
        self.create_slot_with(name, false, export_snapshot).await
    }

    /// Creates a logical pgoutput slot; a temporary one is dropped when
    /// this connection closes.
    pub async fn create_slot_with(
        &mut self,
        name: &str,
        temporary: bool,
        export_snapshot: bool,
    ) -> Result<SlotInfo, SourceError> {
        let rows = self
            .command(&format!(
                "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput {}",
                quote_ident(name),
                if temporary { " TEMPORARY" } else { "" },
                if export_snapshot {
                    "EXPORT_SNAPSHOT"
                } else {
                    "NOEXPORT_SNAPSHOT"
                }
            ))
            .await?;
        let r = rows.first().ok_or_else(|| SourceError::Transient {
            code: None,
            message: "CREATE_REPLICATION_SLOT returned no row".into(),
        })?;
        Ok(SlotInfo {
            name: r.first().cloned().flatten().unwrap_or_default(),
            consistent_point: r
                .get(1)
                .cloned()
                .flatten()
                .unwrap_or_default()
                .parse()
                .unwrap_or_default(),
            snapshot: r.get(2).cloned().flatten(),
        })
    }

    /// Starts streaming from `lsn` (0/0: the slot's confirmed position).
    pub async fn start_replication(
        mut self,
        slot: &str,
        lsn: Lsn,
        publication: &str,
    ) -> Result<Stream, SourceError> {
        frontend::query(
            &format!(
                "START_REPLICATION SLOT {} LOGICAL {lsn} (proto_version '2', streaming 'on', messages 'true', publication_names {})",
                quote_ident(slot),
                quote_literal(&quote_ident(publication))
            ),
            &mut self.write,
        )?;
        self.flush().await?;
        loop {
            let f = self.frame().await?;
            match f.tag {
                b'W' => return Ok(Stream { conn: self }),
                b'E' => return Err(server_error(f.body)),
                _ => {}
            }
        }
    }
}

/// The CopyBoth replication stream.
pub struct Stream {
    conn: Connection,
}

/// Microseconds since 2000-01-01, PostgreSQL's epoch.
fn pg_now() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    unix.as_micros() as i64 - 946_684_800_000_000
}

impl Stream {
    pub async fn next(&mut self) -> Result<Event, SourceError> {
        loop {
            let mut f = self.conn.frame().await?;
            match f.tag {
                b'd' if !f.body.is_empty() => match f.body.get_u8() {
                    b'w' if f.body.len() >= 24 => {
                        let wal_start = Lsn(f.body.get_u64());
                        let wal_end = Lsn(f.body.get_u64());
                        let _send_time = f.body.get_i64();
                        return Ok(Event::XLogData {
                            wal_start,
                            wal_end,
                            data: f.body.to_vec(),
                        });
                    }
                    b'k' if f.body.len() >= 17 => {
                        let wal_end = Lsn(f.body.get_u64());
                        let _send_time = f.body.get_i64();
                        return Ok(Event::Keepalive {
                            wal_end,
                            reply: f.body.get_u8() == 1,
                        });
                    }
                    other => {
                        return Err(SourceError::Transient {
                            code: None,
                            message: format!("unexpected copy message {:?}", other as char),
                        })
                    }
                },
                b'E' => return Err(server_error(f.body)),
                b'c' => {
                    return Err(SourceError::Transient {
                        code: None,
                        message: "the server ended the stream".into(),
                    })
                }
                _ => {}
            }
        }
    }

    /// Tells the server what is durable: the slot may release WAL up to
    /// `flushed`.
    pub async fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        applied: Lsn,
        reply: bool,
    ) -> Result<(), SourceError> {
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(written.0);
        msg.put_u64(flushed.0);
        msg.put_u64(applied.0);
        msg.put_i64(pg_now());
        msg.put_u8(u8::from(reply));
        frontend::CopyData::new(msg.freeze())?.write(&mut self.conn.write);
        self.conn.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_connect_options() {
        let o = ConnectOptions::from_url("postgres://rep:pw@127.0.0.1:5433/hub", None).unwrap();
        assert_eq!(
            (
                o.host.as_str(),
                o.port,
                o.user.as_str(),
                o.password.as_deref(),
                o.dbname.as_str()
            ),
            ("127.0.0.1", 5433, "rep", Some("pw"), "hub")
        );
        let o = ConnectOptions::from_url(
            "postgresql://rep@/hub?host=%2Frun%2Fpostgresql",
            Some("env".into()),
        )
        .unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.password.as_deref()),
            ("/run/postgresql", 5432, Some("env"))
        );
        assert!(ConnectOptions::from_url("mysql://x", None).is_err());
        assert!(ConnectOptions::from_url("postgres://h:notaport/db", None).is_err());
    }

    #[test]
    fn sslmode_and_sslrootcert_are_read_from_the_query() {
        let o = |q: &str| ConnectOptions::from_url(&format!("postgres://u:pw@h/d{q}"), None);
        assert_eq!(o("").unwrap().sslmode, SslMode::Prefer, "libpq's default");
        for mode in SslMode::ALL {
            let got = o(&format!("?sslmode={}&sslrootcert=/ca.pem", mode.as_str())).unwrap();
            assert_eq!(
                (got.sslmode, got.sslrootcert.as_deref()),
                (mode, Some("/ca.pem"))
            );
        }
        // %-escapes are decoded; a raw space or quote is taken as it is.
        let got = o("?sslmode=verify-full&sslrootcert=/etc/my%20certs/o%27brien%22.pem").unwrap();
        assert_eq!(
            got.sslrootcert.as_deref(),
            Some("/etc/my certs/o'brien\".pem")
        );
        let got = o("?sslrootcert=/my certs/ca's.pem&sslmode=verify-ca").unwrap();
        assert_eq!(got.sslrootcert.as_deref(), Some("/my certs/ca's.pem"));
        // The last value wins, as in libpq; other parameters are ignored.
        let got = o("?sslmode=disable&application_name=x&sslmode=require").unwrap();
        assert_eq!((got.sslmode, got.sslrootcert), (SslMode::Require, None));
    }

    #[test]
    fn bad_ssl_settings_are_refused_as_configuration_errors() {
        let cases = [
            ("sslmode=allow", "sslmode \"allow\" is not supported"),
            (
                "sslmode=bogus",
                "sslmode \"bogus\" is not one of disable, prefer, require, verify-ca, verify-full",
            ),
            ("sslmode=Require", "is not one of"),
            ("sslmode=", "is not one of"),
            ("sslmode=verify-ca", "sslmode=verify-ca needs sslrootcert"),
            (
                "sslmode=verify-full&sslrootcert=",
                "sslmode=verify-full needs sslrootcert",
            ),
            ("sslmode=require&sslrootcert=system", "sslrootcert=system"),
            ("sslcert=/c.pem&sslkey=/k.pem", "sslcert is not supported"),
            ("sslmode=verify-full&sslrootcert=%zz", "bad %-escape"),
            ("sslrootcert=%C3%28", "bad %-escape"),
        ];
        for (query, want) in cases {
            let e = ConnectOptions::from_url(&format!("postgres://u:s3cret@h/d?{query}"), None)
                .unwrap_err();
            assert_eq!(e.cause(), Cause::Config, "{query}: {e}");
            let text = e.to_string();
            assert!(
                text.contains(want),
                "{query}: expected {want:?} in {text:?}"
            );
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[test]
    fn server_errors_are_classed() {
        assert!(matches!(
            classify("42704", "replication slot \"s\" does not exist"),
            SourceError::Definite { .. }
        ));
        assert!(matches!(
            classify(
                "55000",
                "can no longer get changes from replication slot \"s\""
            ),
            SourceError::Definite { .. }
        ));
        assert!(matches!(
            classify("42704", "publication \"p\" does not exist"),
            SourceError::Definite { .. }
        ));
        assert!(matches!(
            classify("55000", "logical decoding requires wal_level >= logical"),
            SourceError::Definite { .. }
        ));
        assert!(matches!(
            classify(
                "57P01",
                "terminating connection due to administrator command"
            ),
            SourceError::Transient { .. }
        ));
        assert!(matches!(
            classify("53300", "too many connections"),
            SourceError::Transient { .. }
        ));
    }
}
