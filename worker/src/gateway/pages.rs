//! Paged, streamed answers, and the continuation token that links pages.
//!
//! ```text
//!  handler ──spawn──> producer task (owns the Session): query rows ──> JSON chunks ──bounded channel──> body
//!     └── waits for the first chunk or the error: an error before the first byte is a proper status
//! ```
//!
//! A page asks the hub for one row more than it returns: that row, if it
//! comes, says that more pages follow, and the last returned row's key is
//! where the next page starts. Every page of a window carries the window's
//! bounds in its token, so all pages read the same `[since, until)` and
//! each change is returned exactly once (a row changed while a client
//! pages moves to the next window; it is not lost).

use super::error::ApiError;
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Where the next page of a window starts. Untrusted: it comes back from
/// the client, so every field is checked, and the hub checks the window
/// again (a version from the future, too old, a table not readable).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    /// The window: `[since, until)`.
    pub since: i64,
    pub until: i64,
    /// A table payload's Type and ReasonCode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<i32>,
    /// The last row returned: its table (the changes feed) and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_tbl: Option<u32>,
    pub after_pk: serde_json::Value,
}

/// A token longer than this is refused before it is decoded.
const MAX_TOKEN: usize = 16 * 1024;

impl Cursor {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a cursor serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(token: &str) -> Result<Cursor, ApiError> {
        let bad = |why: &str| {
            ApiError::bad_input("the continuation token is not valid")
                .detail(why.to_string())
                .hint("Pass the Next (next) value of the previous page unchanged, or start again without it.")
        };
        if token.len() > MAX_TOKEN {
            return Err(bad("it is too long"));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| bad("it is not base64url"))?;
        let c: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad("it is not a cursor"))?;
        if c.since < 0 || c.until < c.since {
            return Err(bad("its window is empty or negative"));
        }
        if !c.after_pk.is_object() {
            return Err(bad("its key is not an object"));
        }
        if !matches!(c.kind.as_deref(), None | Some("Full") | Some("Diff")) {
            return Err(bad("its type is neither Full nor Diff"));
        }
        Ok(c)
    }
}

/// The page size a request asks for, within the gateway's limits.
pub fn page_size(asked: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match asked {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_input(format!("pageSize {n} is out of range"))
            .detail(format!("pageSize must be 1 to {max}."))
            .hint("Ask for a smaller page and follow Next.")),
    }
}

/// Bytes gathered before they are handed to the body.
const CHUNK: usize = 32 * 1024;

enum Msg {
    Data(Bytes),
    Failed(ApiError),
}

/// What a producer writes a streamed answer into.
pub struct Out {
    tx: mpsc::Sender<Msg>,
    buf: BytesMut,
    started: bool,
}

impl Out {
    pub fn push(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// Hands over what was gathered once it is large enough. False when
    /// the client has gone away.
    /// Forgets what was pushed and not yet sent (nothing was sent).
    pub fn clear(&mut self) {
        debug_assert!(!self.started, "a started answer cannot be taken back");
        self.buf.clear();
    }

    pub async fn flush_if_full(&mut self) -> bool {
        if self.buf.len() < CHUNK {
            return true;
        }
        self.flush().await
    }

    pub async fn flush(&mut self) -> bool {
        self.started = true;
        let b = self.buf.split().freeze();
        self.tx.send(Msg::Data(b)).await.is_ok()
    }
}

/// Runs `produce` in its own task and answers with what it writes. An
/// error before the first flush is the answer's status; one after it cuts
/// the body short (the client sees a truncated JSON document).
pub async fn streamed<F, Fut>(content_type: &'static str, produce: F) -> Result<Response, ApiError>
where
    F: FnOnce(Out) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Out, ApiError>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Msg>(4);
    let out = Out {
        tx: tx.clone(),
        buf: BytesMut::with_capacity(CHUNK + 1024),
        started: false,
    };
    tokio::spawn(async move {
        match produce(out).await {
            Ok(mut out) => {
                if !out.buf.is_empty() || !out.started {
                    out.flush().await;
                }
            }
            Err(e) => {
                let _ = tx.send(Msg::Failed(e)).await;
            }
        }
    });
    let first = match rx.recv().await {
        Some(Msg::Data(b)) => b,
        Some(Msg::Failed(e)) => return Err(e),
        None => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                super::error::state::INTERNAL,
                "the page was not produced",
            ))
        }
    };
    let mut first = Some(first);
    // poll_recv keeps answering None once the channel is done, however
    // often the body is polled after its end.
    let body = futures_util::stream::poll_fn(move |cx| {
        if let Some(b) = first.take() {
            return std::task::Poll::Ready(Some(Ok(b)));
        }
        rx.poll_recv(cx).map(|m| match m {
            Some(Msg::Data(b)) => Some(Ok::<Bytes, std::io::Error>(b)),
            Some(Msg::Failed(e)) => {
                tracing::warn!(sqlstate = %e.sqlstate, message = %e.message, "a streamed answer failed after it started");
                Some(Err(std::io::Error::other(e.message.clone())))
            }
            None => None,
        })
    });
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cursor_survives_the_round_trip_and_a_forged_one_is_refused() {
        let c = Cursor {
            since: 5,
            until: 9,
            kind: Some("Diff".into()),
            reason: Some(0),
            after_tbl: Some(16384),
            after_pk: json!({"id": 7}),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        let forged = [
            Cursor {
                since: 9,
                until: 5,
                ..c.clone()
            },
            Cursor {
                since: -1,
                ..c.clone()
            },
            Cursor {
                after_pk: json!([1]),
                ..c.clone()
            },
            Cursor {
                kind: Some("Everything".into()),
                ..c.clone()
            },
        ];
        for f in forged {
            assert_eq!(
                Cursor::decode(&f.encode()).unwrap_err().status,
                400,
                "{f:?}"
            );
        }
        for junk in ["", "!!!", &"a".repeat(MAX_TOKEN + 1), "eyJmb28iOjF9"] {
            assert_eq!(Cursor::decode(junk).unwrap_err().status, 400, "{junk}");
        }
    }

    #[test]
    fn page_sizes_outside_the_limit_are_refused() {
        assert_eq!(page_size(None, 1000, 5000).unwrap(), 1000);
        assert_eq!(page_size(Some(5000), 1000, 5000).unwrap(), 5000);
        assert_eq!(page_size(Some(0), 1000, 5000).unwrap_err().status, 400);
        assert_eq!(page_size(Some(5001), 1000, 5000).unwrap_err().status, 400);
    }
}
