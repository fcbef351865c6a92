//! Writing: a batch of changes (`POST /v1/tables/{table}/changes`) and
//! single rows (`GET`, `PUT`, `DELETE /v1/tables/{table}/rows/{key}`).
//!
//! ```text
//!  POST changes ──sync_apply(t, body, origin => peer)──> 200 {"outcomes":[…]} | 400 (nothing applied)
//!  PUT/DELETE row ──sync_row(t, key, lock)──> If-Match / If-None-Match ──412 with the current row
//!       └─ one change {op, pk, data, version: v+1, expect_version: v} ──sync_apply──>
//!          applied: 200 row + ETag | MANUAL: 409 conflict | STALE_SKIP: 409 row | DEFERRED: 202
//! ```
//!
//! The ETag is the row's `sync_version`. A conditional write locks the row
//! before it compares, in the same transaction as the write, so no other
//! write slips between the check and the change.

use super::db::Session;
use super::error::{state, ApiError};
use super::{Authed, Gateway};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::Arc;

/// Reads a JSON body within the gateway's limit: 413 above it, 400 for
/// malformed JSON (with where it broke).
pub async fn json_body(body: Body, limit: usize) -> Result<(String, Value), ApiError> {
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return Err(if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    state::TOO_LARGE,
                    "the request body is too large",
                )
                .detail(format!("The limit is {limit} bytes."))
                .hint("Send smaller batches (gateway.max_body_bytes).")
            } else {
                ApiError::bad_input("the request body cannot be read").detail(e.to_string())
            });
        }
    };
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            state::BAD_JSON,
            "the body is not UTF-8",
        )
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            state::BAD_JSON,
            "the body is not valid JSON",
        )
        .detail(format!("line {}, column {}: {e}", e.line(), e.column()))
        .hint("Send a JSON document (Content-Type: application/json).")
    })?;
    Ok((text, v))
}

fn json_response(status: StatusCode, body: String, etag: Option<i64>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = etag {
        if let Ok(h) = HeaderValue::from_str(&format!("\"{v}\"")) {
            r.headers_mut().insert(header::ETAG, h);
        }
    }
    r
}

pub async fn post_changes(
    State(gw): State<Arc<Gateway>>,
    auth: Authed,
    Path(table): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let (text, v) = json_body(body, gw.config.max_body_bytes).await?;
    if !v.is_array() {
        return Err(
            ApiError::bad_input("the body must be a JSON array of changes")
                .detail(format!("Got a JSON {}.", kind(&v)))
                .hint(
                    "Send [{\"op\": \"U\", \"pk\": {...}, \"data\": {...}, \"version\": n}, ...].",
                ),
        );
    }
    let mut s = gw.hub.begin(&auth.peer).await?;
    let r = s
        .query_one(
            "SELECT coalesce(json_agg(json_build_object('pk', a.pk, 'outcome', a.outcome, 'row_version', a.row_version,
                                                        'conflict_id', a.conflict_id, 'detail', a.detail)), '[]')::text
               FROM sync_apply($1::text::regclass, $2::text::jsonb, $3) AS a",
            &[&table, &text, &auth.peer.name],
        )
        .await;
    let outcomes: String = match r {
        Ok(row) => row.get(0),
        Err(e) => {
            s.rollback().await;
            return Err(e);
        }
    };
    s.commit().await?;
    Ok(json_response(
        StatusCode::OK,
        format!("{{\"outcomes\":{outcomes}}}"),
        None,
    ))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A row as the hub holds it.
struct Current {
    data: String,
    version: i64,
}

/// The primary key named by `{key}`: a JSON object, or for a one-column
/// key its value as text. Returns the key as JSON text.
async fn key_of(s: &Session, table: &str, key: &str) -> Result<String, ApiError> {
    let r = s
        .query_one(
            "SELECT CASE WHEN left($2, 1) = '{' THEN $2::jsonb::text
                         WHEN cardinality(t.pk_columns) = 1 THEN jsonb_build_object(t.pk_columns[1], $2)::text
                    END, cardinality(t.pk_columns)
               FROM tributary._tracked($1::text::regclass) AS t",
            &[&table, &key],
        )
        .await?;
    r.get::<_, Option<String>>(0).ok_or_else(|| {
        ApiError::bad_input("this table's key has several columns")
            .detail(format!(
                "The key of {table} has {} columns.",
                r.get::<_, i32>(1)
            ))
            .hint(
                "Pass the key as a JSON object, URL-encoded: rows/%7B%22a%22%3A1%2C%22b%22%3A2%7D.",
            )
    })
}

async fn current(
    s: &Session,
    table: &str,
    pk: &str,
    lock: bool,
) -> Result<Option<Current>, ApiError> {
    Ok(s.query_opt(
        "SELECT data::text, row_version FROM sync_row($1::text::regclass, $2::text::jsonb, $3)",
        &[&table, &pk, &lock],
    )
    .await?
    .map(|r| Current {
        data: r.get(0),
        version: r.get(1),
    }))
}

fn not_found(table: &str, pk: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        state::NOT_FOUND,
        "no row has this key",
    )
    .detail(format!("{table} has no row {pk}, or you may not read it."))
}

pub async fn get_row(
    State(gw): State<Arc<Gateway>>,
    auth: Authed,
    Path((table, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = gw.hub.begin(&auth.peer).await?;
    let pk = key_of(&s, &table, &key).await?;
    let row = current(&s, &table, &pk, false).await?;
    s.commit().await?;
    let row = row.ok_or_else(|| not_found(&table, &pk))?;
    if etags(&headers, header::IF_NONE_MATCH).is_some_and(|t| t.matches(row.version)) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(h) = HeaderValue::from_str(&format!("\"{}\"", row.version)) {
            r.headers_mut().insert(header::ETAG, h);
        }
        return Ok(r);
    }
    Ok(json_response(StatusCode::OK, row.data, Some(row.version)))
}

/// An `If-Match` / `If-None-Match` header: `*` or a list of strong ETags.
struct Etags(Option<Vec<i64>>);

impl Etags {
    fn matches(&self, version: i64) -> bool {
        match &self.0 {
            None => true,
            Some(v) => v.contains(&version),
        }
    }
}

fn etags(headers: &HeaderMap, name: header::HeaderName) -> Option<Etags> {
    let v = headers.get(name)?.to_str().ok()?.trim().to_string();
    if v == "*" {
        return Some(Etags(None));
    }
    // A weak or malformed tag matches no version (a strong comparison).
    Some(Etags(Some(
        v.split(',')
            .filter_map(|t| t.trim().strip_prefix('"')?.strip_suffix('"')?.parse().ok())
            .collect(),
    )))
}

/// 412 with the row the hub holds (when there is one).
fn precondition_failed(why: &str, row: Option<&Current>) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        state::PRECONDITION,
        why.to_string(),
    )
    .hint(
        "Read the row again (its ETag is its current version) and retry with If-Match set to it.",
    );
    if let Some(r) = row {
        e = e
            .extra(
                json!({"current": serde_json::from_str::<Value>(&r.data).unwrap_or(Value::Null)}),
            )
            .header(header::ETAG, &format!("\"{}\"", r.version));
    }
    e
}

fn check_preconditions(headers: &HeaderMap, row: Option<&Current>) -> Result<(), ApiError> {
    if let Some(tags) = etags(headers, header::IF_MATCH) {
        match row {
            None => {
                return Err(precondition_failed(
                    "If-Match: the row does not exist",
                    None,
                ))
            }
            Some(r) if !tags.matches(r.version) => {
                return Err(precondition_failed("If-Match: the row has changed", row))
            }
            _ => {}
        }
    }
    if let (Some(tags), Some(r)) = (etags(headers, header::IF_NONE_MATCH), row) {
        if tags.matches(r.version) {
            return Err(precondition_failed("If-None-Match: the row exists", row));
        }
    }
    Ok(())
}

pub async fn put_row(
    State(gw): State<Arc<Gateway>>,
    auth: Authed,
    Path((table, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, v) = json_body(body, gw.config.max_body_bytes).await?;
    let Value::Object(mut data) = v else {
        return Err(
            ApiError::bad_input("the body must be a JSON object: the row's columns")
                .detail(format!("Got a JSON {}.", kind(&v))),
        );
    };
    let s = gw.hub.begin(&auth.peer).await?;
    let r = write_row(&auth, &s, &table, &key, &headers, Some(&mut data)).await;
    finish(s, r).await
}

pub async fn delete_row(
    State(gw): State<Arc<Gateway>>,
    auth: Authed,
    Path((table, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = gw.hub.begin(&auth.peer).await?;
    let r = write_row(&auth, &s, &table, &key, &headers, None).await;
    finish(s, r).await
}

/// Commits what was decided (a logged conflict, a parked change
/// included), or rolls back on an error.
async fn finish(mut s: Session, r: Result<Response, ApiError>) -> Result<Response, ApiError> {
    match r {
        Ok(resp) => {
            s.commit().await?;
            Ok(resp)
        }
        Err(e) => {
            s.rollback().await;
            Err(e)
        }
    }
}

/// One change for the row at `key`: an upsert of `data`, or a delete.
async fn write_row(
    auth: &Authed,
    s: &Session,
    table: &str,
    key: &str,
    headers: &HeaderMap,
    data: Option<&mut serde_json::Map<String, Value>>,
) -> Result<Response, ApiError> {
    let pk_text = key_of(s, table, key).await?;
    let pk: Value = serde_json::from_str(&pk_text).unwrap_or(Value::Null);
    let row = current(s, table, &pk_text, true).await?;
    check_preconditions(headers, row.as_ref())?;
    let base = row.as_ref().map(|r| r.version);
    let mut change = json!({
        "pk": pk,
        "version": base.unwrap_or(0) + 1,
    });
    if let Some(b) = base {
        change["expect_version"] = b.into();
    }
    match data {
        Some(data) => {
            // The key is the path's: a body that names another is refused.
            if let Value::Object(k) = &pk {
                for (col, want) in k {
                    if let Some(got) = data.remove(col) {
                        if text_of(&got) != text_of(want) {
                            return Err(ApiError::bad_input(format!(
                                "the body's {col} differs from the key in the path"
                            ))
                            .detail(format!("path: {want}, body: {got}."))
                            .hint("A row's key cannot change; leave it out of the body."));
                        }
                    }
                }
            }
            change["op"] = if row.is_some() { "U" } else { "I" }.into();
            change["data"] = Value::Object(data.clone());
        }
        None => {
            if row.is_none() {
                return Err(not_found(table, &pk_text));
            }
            change["op"] = "D".into();
        }
    }
    let batch = Value::Array(vec![change]).to_string();
    let o = s
        .query_one(
            "SELECT a.outcome, a.row_version, a.conflict_id, a.detail
               FROM sync_apply($1::text::regclass, $2::text::jsonb, $3) AS a",
            &[&table, &batch, &auth.peer.name],
        )
        .await?;
    let (outcome, version, conflict, detail): (String, Option<i64>, Option<i64>, Option<String>) =
        (o.get(0), o.get(1), o.get(2), o.get(3));
    answer(
        s,
        table,
        &pk_text,
        row.as_ref(),
        &outcome,
        version,
        conflict,
        detail,
    )
    .await
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn answer(
    s: &Session,
    table: &str,
    pk: &str,
    before: Option<&Current>,
    outcome: &str,
    version: Option<i64>,
    conflict: Option<i64>,
    detail: Option<String>,
) -> Result<Response, ApiError> {
    let now = current(s, table, pk, false).await?;
    let row_json = |r: Option<&Current>| {
        r.map(|r| serde_json::from_str::<Value>(&r.data).unwrap_or(Value::Null))
            .unwrap_or(Value::Null)
    };
    match outcome {
        "MANUAL" => {
            let c = s
                .query_opt(
                    "SELECT row_to_json(c)::text FROM sync_conflicts AS c WHERE c.id = $1",
                    &[&conflict],
                )
                .await?
                .map(|r| serde_json::from_str::<Value>(r.get(0)).unwrap_or(Value::Null));
            // Answered, not failed: the conflict and the interim value are
            // committed.
            Ok(ApiError::new(StatusCode::CONFLICT, state::CONFLICT, "the change conflicts with another at the same revision")
                .detail(detail.unwrap_or_default())
                .hint("The conflict is logged: settle it with sync_resolve_conflict, or write again with the current ETag.")
                .extra(json!({"conflict": c, "current": row_json(now.as_ref())}))
                .into_response())
        }
        "STALE_SKIP" => Ok(ApiError::new(
            StatusCode::CONFLICT,
            state::STALE,
            "the hub holds a newer revision of this row",
        )
        .detail(detail.unwrap_or_default())
        .hint("Read the row again and write on top of it.")
        .extra(json!({"current": row_json(now.as_ref())}))
        .into_response()),
        "DEFERRED" => Ok(json_response(
            StatusCode::ACCEPTED,
            json!({"outcome": outcome, "detail": detail}).to_string(),
            None,
        )),
        _ => {
            let mut r = match (&now, before) {
                (Some(n), _) => json_response(StatusCode::OK, n.data.clone(), Some(n.version)),
                // A delete: the row as it was, and the tombstone's revision.
                (None, Some(b)) => json_response(StatusCode::OK, b.data.clone(), version),
                (None, None) => json_response(StatusCode::OK, "null".into(), version),
            };
            if let Ok(h) = HeaderValue::from_str(outcome) {
                r.headers_mut().insert("tributary-outcome", h);
            }
            Ok(r)
        }
    }
}
