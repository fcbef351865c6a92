//! The NATS JetStream destination: one message per change, on the subject
//! `<prefix>.<schema>.<table>`, in a stream the destination creates when it
//! is missing.
//!
//! ```text
//!  open:   connect ── stream (create if missing) ── its last message of <prefix>.>
//!          └─> position = that message's (commit LSN, ord), when this hub wrote it
//!  write:  each change ──publish (Nats-Msg-Id = <commit lsn>:<ord>)──> [acks in flight, bounded]
//!          a change at or below the position is skipped (it is in the stream)
//!  commit: every ack back ──> the driver publishes the position (the slot may move)
//! ```
//!
//! Delivery contract (see [`crate::sink`]): the position lives in the
//! stream itself, in the last message's headers, so a restart (after a
//! crash, however long after) resumes right after the last message the
//! stream holds and publishes nothing twice, whether or not JetStream's
//! duplicate window still covers it. Within the window, the message id is
//! a second line. Publishes are pipelined; a destination transaction
//! counts as done only once every publish in it was acknowledged, so the
//! slot never moves past a change the stream may not have.
//!
//! Errors (the server down, a full stream, a quota, an unacknowledged
//! publish, and also a refused login or a stream that does not take our
//! subjects) are this destination's alone ([`Cause::BusUnavailable`]): it
//! is detached and probed while the other destinations go on, and a new
//! session starts from the stream's last message once it takes messages
//! again.

use super::{Done, Sink};
use crate::config::Destination;
use crate::error::{Cause, Error};
use crate::lsn::Lsn;
use crate::transaction::{Change, Op};
use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tributary_core::jsontext::push_str;

/// Publishes whose acknowledgement may be outstanding at once.
const IN_FLIGHT: u64 = 4096;

/// The message headers Tributary sets (besides `Nats-Msg-Id`): few, since
/// each costs the worker and the server per message.
pub const H_LSN: &str = "Tributary-Lsn";
pub const H_OP: &str = "Tributary-Op";
pub const H_ORIGIN: &str = "Tributary-Origin";

/// How long an acknowledgement may take before the destination is set
/// aside.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

pub struct NatsSink {
    name: String,
    client: async_nats::Client,
    prefix: String,
    /// The hub whose WAL positions the messages carry (see `hub::identity`).
    hub: String,
    progress: Lsn,
    /// The last change the stream holds: changes at or below it are not
    /// published again (the transaction it ends in comes again in full).
    held: Option<(Lsn, u32)>,
    /// Every publish asks for its acknowledgement on `<inbox>.<n>`, and
    /// this one subscription (`<inbox>.*`) receives them all: no reply
    /// subject, channel or map entry per message.
    acks: async_nats::Subscriber,
    inbox: String,
    /// Publishes sent, and acknowledgements received.
    sent: u64,
    acked: u64,
    /// The subject of each table (by relation id), made once.
    subjects: HashMap<u32, async_nats::Subject>,
}

/// The connection options of a destination: user and password (from env
/// `TRIBUTARY_NATS_PASSWORD_<NAME>`), a token (`TRIBUTARY_NATS_TOKEN_<NAME>`),
/// a creds file, TLS.
async fn connect(d: &Destination) -> Result<async_nats::Client, Error> {
    let env = |what: &str| std::env::var(env_name(what, &d.name)).ok();
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("tributary-worker {}", d.name))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(1));
    if let Some(f) = &d.creds_file {
        o = o.credentials_file(f).await.map_err(|e| {
            unavailable(
                &d.name,
                format!("the creds file {f} cannot be read ({e}): point creds_file at the .creds file nsc or your operator made"),
            )
        })?;
    }
    if let Some(u) = &d.user {
        o = o.user_and_password(u.clone(), env("PASSWORD").unwrap_or_default());
    }
    if let Some(t) = env("TOKEN") {
        o = o.token(t);
    }
    if let Some(ca) = &d.tls_ca {
        o = o.add_root_certificates(ca.into()).require_tls(true);
    }
    if d.tls_required == Some(true) {
        o = o.require_tls(true);
    }
    let url = d.url.as_deref().unwrap_or_default();
    // Every failure here is this destination's alone (the others go on),
    // a wrong password too: it is set aside and probed, and says what to fix.
    o.connect(url).await.map_err(|e| {
        use async_nats::ConnectErrorKind as K;
        // A certificate that does not verify comes as an I/O error.
        let tls = e.kind() == K::Tls || e.to_string().contains("certificate");
        let what = match e.kind() {
            _ if tls => format!(
                "TLS to NATS at {url} failed ({e}): check tls_ca against the certificate the server shows"
            ),
            K::Authentication | K::AuthorizationViolation => format!(
                "NATS at {url} refused the login ({e}): check user and {} (or {}, or creds_file)",
                env_name("PASSWORD", &d.name),
                env_name("TOKEN", &d.name)
            ),
            _ => format!("cannot reach NATS at {url}: {e}"),
        };
        unavailable(&d.name, what)
    })
}

/// `TRIBUTARY_NATS_<WHAT>_<NAME>`, the name upper-cased, `-` as `_`.
pub fn env_name(what: &str, dest: &str) -> String {
    format!(
        "TRIBUTARY_NATS_{what}_{}",
        dest.to_ascii_uppercase().replace('-', "_")
    )
}

fn unavailable(name: &str, what: String) -> Error {
    Error::Peer {
        message: format!("destination {name}: {what}"),
        cause: Cause::BusUnavailable,
    }
}

/// The stream, created (with the destination's subjects) when missing. One
/// whose subjects do not take the destination's is a configuration error.
async fn stream_of(d: &Destination, js: &jetstream::Context) -> Result<stream::Stream, Error> {
    let name = d.stream.as_deref().unwrap_or_default();
    let subjects = format!("{}.>", prefix_of(d));
    let mut s = js
        .get_or_create_stream(stream::Config {
            name: name.to_string(),
            subjects: vec![subjects.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&d.name, format!("stream {name}: {e}")))?;
    let info = s
        .info()
        .await
        .map_err(|e| unavailable(&d.name, format!("stream {name}: {e}")))?;
    let takes = info
        .config
        .subjects
        .iter()
        .any(|s| s == &subjects || s == ">" || s == &format!("{}.*.*", prefix_of(d)));
    if !takes {
        return Err(unavailable(
            &d.name,
            format!(
                "stream {name} takes {:?}, not {subjects}: add {subjects} to its subjects, or name another stream (or subject_prefix)",
                info.config.subjects
            ),
        ));
    }
    Ok(s)
}

fn prefix_of(d: &Destination) -> &str {
    d.subject_prefix.as_deref().unwrap_or("tributary")
}

/// Whether the destination takes messages again: NATS answers, and its
/// stream is not full (for the probe of a detached destination).
pub async fn reachable(d: &Destination) -> bool {
    let Ok(client) = connect(d).await else {
        return false;
    };
    let js = jetstream::new(client);
    let Ok(mut s) = stream_of(d, &js).await else {
        return false;
    };
    let Ok(info) = s.info().await else {
        return false;
    };
    let c = &info.config;
    let st = &info.state;
    let full = c.discard == stream::DiscardPolicy::New
        && ((c.max_messages > 0 && st.messages >= c.max_messages as u64)
            || (c.max_bytes > 0 && st.bytes >= c.max_bytes as u64));
    !full
}

impl NatsSink {
    /// Connects, makes sure of the stream, and reads the position from the
    /// stream's last message of this destination's subjects.
    pub async fn open(d: &Destination, hub: &str) -> Result<NatsSink, Error> {
        let client = connect(d).await?;
        let js = jetstream::new(client);
        let s = stream_of(d, &js).await?;
        let held = match s
            .get_last_raw_message_by_subject(&format!("{}.>", prefix_of(d)))
            .await
        {
            Ok(m) => position_of(&m.payload, hub),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
            Err(e) => {
                return Err(unavailable(
                    &d.name,
                    format!("reading the stream's last message: {e}"),
                ))
            }
        };
        let client = js.client();
        let inbox = client.new_inbox();
        let acks = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| unavailable(&d.name, format!("subscribing to acknowledgements: {e}")))?;
        Ok(NatsSink {
            name: d.name.clone(),
            client,
            prefix: prefix_of(d).to_string(),
            hub: hub.to_string(),
            progress: held.map_or(Lsn(0), |h| h.0),
            held,
            acks,
            inbox,
            sent: 0,
            acked: 0,
            subjects: HashMap::new(),
        })
    }

    /// Waits for the next acknowledgement; an error, a publish no stream
    /// took, or none in time fails the destination. JetStream answers a
    /// stream's publishes in the order it stored them.
    async fn acked(&mut self) -> Result<(), Error> {
        let m = match tokio::time::timeout(ACK_TIMEOUT, self.acks.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(unavailable(
                    &self.name,
                    "the connection closed with publishes unacknowledged".into(),
                ))
            }
            Err(_) => {
                return Err(unavailable(
                    &self.name,
                    format!("a publish was not acknowledged within {ACK_TIMEOUT:?}"),
                ))
            }
        };
        if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Err(unavailable(
                &self.name,
                "no stream takes the subject (was the stream deleted?)".into(),
            ));
        }
        #[derive(serde::Deserialize)]
        struct Ack {
            error: Option<serde_json::Value>,
        }
        match serde_json::from_slice::<Ack>(&m.payload) {
            Ok(Ack { error: None }) => {
                self.acked += 1;
                Ok(())
            }
            Ok(Ack { error: Some(e) }) => Err(unavailable(
                &self.name,
                format!(
                    "the stream refused a message: {}",
                    e.get("description").unwrap_or(&e)
                ),
            )),
            Err(e) => Err(unavailable(
                &self.name,
                format!("an acknowledgement that cannot be read: {e}"),
            )),
        }
    }

    fn subject(&mut self, c: &Change) -> async_nats::Subject {
        let prefix = &self.prefix;
        self.subjects
            .entry(c.table.id)
            .or_insert_with(|| {
                format!(
                    "{prefix}.{}.{}",
                    subject_token(&c.table.schema),
                    subject_token(&c.table.name)
                )
                .into()
            })
            .clone()
    }

    fn headers(&self, lsn: &str, c: &Change) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("{lsn}:{}", c.ord).as_str());
        h.insert(H_LSN, lsn);
        h.insert(H_OP, c.op.code());
        if let Some(o) = &c.origin {
            h.insert(H_ORIGIN, o.as_str());
        }
        h
    }
}

/// The (commit LSN, ord) of a message this hub published, from its body;
/// None for another hub's (a stream fed before a restore into a new
/// cluster: its positions mean nothing here) or a message that is not one
/// of ours.
pub fn position_of(body: &[u8], hub: &str) -> Option<(Lsn, u32)> {
    #[derive(serde::Deserialize)]
    struct Pos<'a> {
        hub: &'a str,
        lsn: &'a str,
        ord: u32,
    }
    let p: Pos = serde_json::from_slice(body).ok()?;
    (p.hub == hub).then_some(())?;
    Some((p.lsn.parse().ok()?, p.ord))
}

/// A subject token for a schema or table name: letters, digits, `_` and
/// `-` as they are, every other byte (`.`, `*`, `>`, spaces, `%`, non-ASCII)
/// as `%XX`, so that any name is one token and the mapping reverses.
pub fn subject_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    out
}

/// The message body: the JSON of a queue row (`tributary.queue_<name>`:
/// `hub`, `lsn`, `ord`, `tbl`, `op`, `pk`, `data`, `origin`,
/// `committed_at`), written in one buffer.
pub fn body(hub: &str, lsn: &str, time: i64, c: &Change) -> String {
    use std::fmt::Write;
    let pk = c.pk_json();
    let data = c.data_json();
    let mut b = String::with_capacity(
        128 + pk.as_ref().map_or(0, String::len) + data.as_ref().map_or(0, String::len),
    );
    b.push_str("{\"hub\":");
    push_str(&mut b, hub);
    b.push_str(",\"lsn\":");
    push_str(&mut b, lsn);
    let _ = write!(b, ",\"ord\":{},\"tbl\":", c.ord);
    push_str(&mut b, &c.table.display);
    b.push_str(",\"op\":");
    push_str(&mut b, c.op.code());
    b.push_str(",\"pk\":");
    b.push_str(pk.as_deref().unwrap_or("null"));
    b.push_str(",\"data\":");
    b.push_str(data.as_deref().unwrap_or("null"));
    b.push_str(",\"origin\":");
    match &c.origin {
        Some(o) => push_str(&mut b, o),
        None => b.push_str("null"),
    }
    b.push_str(",\"committed_at\":\"");
    b.push_str(&timestamp(time));
    b.push_str("\"}");
    b
}

/// Microseconds since 2000-01-01 UTC (PostgreSQL's epoch) as RFC 3339.
pub fn timestamp(us: i64) -> String {
    let unix = us.div_euclid(1_000_000) + 946_684_800;
    let micros = us.rem_euclid(1_000_000);
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

impl Sink for NatsSink {
    fn progress(&self) -> Lsn {
        self.progress
    }

    async fn begin(&mut self) -> Result<(), Error> {
        Ok(())
    }

    async fn write(&mut self, commit: (Lsn, i64), changes: Vec<Arc<Change>>) -> Result<(), Error> {
        let (lsn, time) = commit;
        let lsn_text = lsn.to_string();
        for c in changes {
            if c.op == Op::Schema || self.held.is_some_and(|h| (lsn, c.ord) <= h) {
                continue;
            }
            let subject = self.subject(&c);
            let headers = self.headers(&lsn_text, &c);
            let reply = format!("{}.{}", self.inbox, self.sent);
            let body = body(&self.hub, &lsn_text, time, &c);
            self.client
                .publish_with_reply_and_headers(subject, reply, headers, body.into())
                .await
                .map_err(|e| unavailable(&self.name, format!("publishing: {e}")))?;
            self.sent += 1;
            if self.sent - self.acked >= IN_FLIGHT {
                self.acked().await?;
            }
        }
        Ok(())
    }

    async fn commit(&mut self, d: &Done) -> Result<(), Error> {
        while self.acked < self.sent {
            self.acked().await?;
        }
        crate::failpoint::hit("nats.after_acks");
        self.progress = d.end;
        self.held = None;
        Ok(())
    }

    async fn rollback(&mut self) {
        // What was sent may still land; the next session reads the
        // position from the stream again.
        self.acked = self.sent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_from_the_postgres_epoch() {
        assert_eq!(timestamp(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(-1), "1999-12-31T23:59:59.999999Z");
        // 2026-12-04 08:52:34.123456 UTC
        let us = (1_796_374_354 - 946_684_800) * 1_000_000 + 123_456;
        assert_eq!(timestamp(us), "2026-12-04T08:52:34.123456Z");
        // A leap day.
        let us = (951_782_400 - 946_684_800) * 1_000_000;
        assert_eq!(timestamp(us), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn any_name_is_one_subject_token_and_the_mapping_reverses() {
        assert_eq!(subject_token("orders"), "orders");
        assert_eq!(subject_token("a.b"), "a%2Eb");
        assert_eq!(subject_token("tab'le"), "tab%27le");
        assert_eq!(subject_token("*>% x"), "%2A%3E%25%20x");
        assert_eq!(subject_token("é"), "%C3%A9");
        assert_eq!(subject_token(""), "%");
        for name in ["a.b", "x%2Ey", "]\"'", "sp ace"] {
            let t = subject_token(name);
            assert!(!t.contains(['.', '*', '>', ' ']));
            let mut back = Vec::new();
            let b = t.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    back.push(u8::from_str_radix(&t[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    back.push(b[i]);
                    i += 1;
                }
            }
            assert_eq!(String::from_utf8(back).unwrap(), name);
        }
    }

    #[test]
    fn a_position_is_read_only_from_this_hubs_messages() {
        let m = br#"{"hub":"hub-a","lsn":"0/16B3748","ord":7,"tbl":"public.t"}"#;
        assert_eq!(
            position_of(m, "hub-a"),
            Some(("0/16B3748".parse().unwrap(), 7))
        );
        assert_eq!(position_of(m, "hub-b"), None, "another cluster's");
        assert_eq!(position_of(b"not json", "hub-a"), None);
        assert_eq!(
            position_of(br#"{"hub":"hub-a","lsn":"x","ord":1}"#, "hub-a"),
            None
        );
    }
}
