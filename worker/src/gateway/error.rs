//! What a failed request answers: an HTTP status and a JSON body,
//! `{"error": {"sqlstate", "message", "detail", "hint"}}`.
//!
//! A hub error keeps its SQLSTATE, DETAIL and HINT; its status comes from
//! the worker's one classifier ([`crate::error::classify`]), so the gateway
//! and the worker read a SQLSTATE the same way:
//!
//! | cause                                   | status |
//! |-----------------------------------------|--------|
//! | login (28xxx: unknown peer, no role)    | 401    |
//! | privilege, peer identity (42501)        | 403    |
//! | missing object, table not tracked       | 404    |
//! | bad column, refused value (22, 23, TB)  | 400    |
//! | version too old for a diff (TB002)      | 410    |
//! | contention (40001, 40P01), connection   | 503    |
//! | statement timeout (57014)               | 504    |
//! | anything else                           | 500    |

use crate::error::{classify, Cause};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// SQLSTATEs the gateway uses for its own refusals (the hub's where one
/// fits; HTTP-level ones otherwise).
pub mod state {
    /// No token, a bad one, an expired one.
    pub const BAD_TOKEN: &str = "28000";
    /// Malformed JSON, a bad parameter.
    pub const BAD_INPUT: &str = "22023";
    pub const BAD_JSON: &str = "22P02";
    pub const NOT_FOUND: &str = "P0002";
    pub const TOO_LARGE: &str = "54000";
    pub const TOO_MANY: &str = "53300";
    pub const TIMEOUT: &str = "57014";
    pub const UNAVAILABLE: &str = "08006";
    /// If-Match / If-None-Match failed (412).
    pub const PRECONDITION: &str = "TB010";
    /// A single-row write the resolver logged as a conflict (409).
    pub const CONFLICT: &str = "TB011";
    /// A single-row write older than what the hub holds (409).
    pub const STALE: &str = "TB012";
    pub const INTERNAL: &str = "XX000";
}

/// Boxed: it travels in every `Result` of a request's path.
#[derive(Debug)]
pub struct ApiError(Box<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub status: StatusCode,
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// Extra members of the body (the current row of a 412, a conflict).
    pub extra: Option<serde_json::Value>,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl std::ops::Deref for ApiError {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.0
    }
}

impl ApiError {
    pub fn new(status: StatusCode, sqlstate: &str, message: impl Into<String>) -> ApiError {
        ApiError(Box::new(Inner {
            status,
            sqlstate: sqlstate.into(),
            message: message.into(),
            detail: None,
            hint: None,
            extra: None,
            headers: Vec::new(),
        }))
    }

    pub fn detail(mut self, d: impl Into<String>) -> ApiError {
        self.detail = Some(d.into());
        self
    }

    pub fn hint(mut self, h: impl Into<String>) -> ApiError {
        self.hint = Some(h.into());
        self
    }

    pub fn extra(mut self, v: serde_json::Value) -> ApiError {
        self.extra = Some(v);
        self
    }

    pub fn header(mut self, name: header::HeaderName, value: &str) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn bad_input(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, state::BAD_INPUT, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, state::BAD_TOKEN, message).header(
            header::WWW_AUTHENTICATE,
            "Bearer realm=\"tributary\", error=\"invalid_token\"",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, state::UNAVAILABLE, message)
            .header(header::RETRY_AFTER, "1")
    }

    /// The status a hub error answers with.
    pub fn status_for(code: &str, message: &str) -> StatusCode {
        match code {
            "TB002" => return StatusCode::GONE,
            "TB003" | "P0002" => return StatusCode::NOT_FOUND,
            // A table name that is not a name at all.
            "42602" => return StatusCode::BAD_REQUEST,
            "57014" => return StatusCode::GATEWAY_TIMEOUT,
            _ => {}
        }
        match classify(code, message) {
            Cause::Login => StatusCode::UNAUTHORIZED,
            Cause::Privilege | Cause::PeerIdentity => StatusCode::FORBIDDEN,
            Cause::MissingObject => StatusCode::NOT_FOUND,
            Cause::BadColumn | Cause::RefusedValue => StatusCode::BAD_REQUEST,
            Cause::Contention | Cause::Connection => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> serde_json::Value {
        let mut e = json!({
            "sqlstate": self.sqlstate,
            "message": self.message,
            "detail": self.detail,
            "hint": self.hint,
        });
        let mut body = json!({ "error": e.take() });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (&self.extra, body.as_object_mut())
        {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        body
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> ApiError {
        match e.as_db_error() {
            Some(d) => {
                let code = d.code().code();
                let mut a = ApiError::new(Self::status_for(code, d.message()), code, d.message());
                a.detail = d.detail().map(str::to_string);
                a.hint = d.hint().map(str::to_string);
                if a.status == StatusCode::SERVICE_UNAVAILABLE {
                    a = a.header(header::RETRY_AFTER, "1");
                }
                a
            }
            None => ApiError::unavailable("the hub connection failed").detail(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> ApiError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => ApiError::unavailable("no hub connection is free")
                .detail(e.to_string())
                .hint("The gateway's pool (gateway.pool_size) is busy or the hub is down; retry."),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), sqlstate = %self.sqlstate, message = %self.message, "request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), sqlstate = %self.sqlstate, message = %self.message, "request refused");
        }
        let mut r = (self.status, axum::Json(self.body())).into_response();
        for (k, v) in std::mem::take(&mut self.0.headers) {
            r.headers_mut().insert(k, v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_errors_answer_with_the_status_their_cause_calls_for() {
        let cases = [
            ("28000", "unknown peer x", 401),
            ("42501", "permission denied for table t", 403),
            ("42501", "permission denied to write as peer p", 403),
            ("42P01", "relation does not exist", 404),
            ("TB003", "table is not tracked", 404),
            ("42602", "invalid name syntax", 400),
            ("42703", "unknown column", 400),
            ("22023", "bad value", 400),
            ("23505", "duplicate key", 400),
            ("TB001", "version is from the future", 400),
            ("TB002", "version too old", 410),
            ("40001", "could not serialize", 503),
            ("57014", "canceling statement due to statement timeout", 504),
            ("XX000", "internal", 500),
        ];
        for (code, msg, want) in cases {
            assert_eq!(ApiError::status_for(code, msg).as_u16(), want, "{code}");
        }
    }

    #[test]
    fn the_body_carries_the_sqlstate_detail_hint_and_extra_members() {
        let b = ApiError::bad_input("bad")
            .detail("d")
            .hint("h")
            .extra(json!({"current": {"id": 1}}))
            .body();
        assert_eq!(b["error"]["sqlstate"], "22023");
        assert_eq!(b["error"]["detail"], "d");
        assert_eq!(b["error"]["hint"], "h");
        assert_eq!(b["current"]["id"], 1);
    }
}
