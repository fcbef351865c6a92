//! A peer's conflicts: listed (`GET /v1/conflicts`) and settled
//! (`POST /v1/conflicts/{id}/resolve`), as the peer's role.
//!
//! ```text
//!  GET  /v1/conflicts[?status=open|all] ──sync_conflicts (the hub's RLS: a scoped
//!        session sees its own peer's alone; the query names it too)──> 200 {"conflicts":[…]}
//!  POST /v1/conflicts/{id}/resolve {"resolution": "keep_local"|"take_remote"|{row}}
//!        ──sync_resolve_conflict(id, resolution) (privileges and the row filter,
//!          before and after, checked in the hub)──> 200 {"id", "row", "row_version"}
//!        unknown (or another peer's): 404 · already resolved: 409
//! ```
//!
//! `local` is the hub's row when the conflict was logged, `remote` the
//! peer's change; the resolution is a new hub revision, so it reaches every
//! peer (the writer included).

use super::error::{state, ApiError};
use super::write::json_body;
use super::{Authed, Gateway};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// The columns a conflict is listed with, as one JSON object per row.
const CONFLICT_JSON: &str =
    "json_build_object('id', c.id, 'table', c.tbl::text, 'schema', n.nspname, 'name', cl.relname, 'pk', c.pk, 'columns', c.columns,
        'local', c.local, 'remote', c.remote, 'local_version', c.local_version,
        'remote_version', c.remote_version, 'remote_op', c.remote_op, 'interim', c.interim,
        'detail', c.detail, 'status', c.status, 'resolution', c.resolution,
        'created_at', c.created_at, 'resolved_at', c.resolved_at)";

fn json_ok(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub async fn list(
    State(gw): State<Arc<Gateway>>,
    auth: Authed,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let all = match q.get("status").map(String::as_str) {
        None | Some("open") => false,
        Some("all") => true,
        Some(other) => {
            return Err(ApiError::bad_input("status must be open or all")
                .detail(format!("Got status={other}."))
                .hint("GET /v1/conflicts (open ones) or /v1/conflicts?status=all."))
        }
    };
    let s = gw.hub.begin(&auth.peer).await?;
    let sql = format!(
        "SELECT coalesce(json_agg({CONFLICT_JSON} ORDER BY c.id), '[]')::text
           FROM sync_conflicts c JOIN pg_class cl ON cl.oid = c.tbl JOIN pg_namespace n ON n.oid = cl.relnamespace
          WHERE c.remote_origin = $1 AND ($2 OR c.status = 'open')"
    );
    let r = s.query_one(&sql, &[&auth.peer.name, &all]).await?;
    s.commit().await?;
    Ok(json_ok(format!(
        "{{\"conflicts\":{}}}",
        r.get::<_, String>(0)
    )))
}

fn not_found(id: i64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        state::NOT_FOUND,
        format!("no conflict {id}"),
    )
    .detail(format!(
        "Conflict {id} does not exist, or it is not one of this peer's."
    ))
    .hint("GET /v1/conflicts lists this peer's open conflicts.")
}

pub async fn resolve(
    State(gw): State<Arc<Gateway>>,
    auth: Authed,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_input("the conflict id must be an integer")
            .detail(format!("Got {id:?}."))
            .hint("POST /v1/conflicts/42/resolve, with an id from GET /v1/conflicts.")
    })?;
    let (_, v) = json_body(body, gw.config.max_body_bytes).await?;
    let resolution = match v.get("resolution") {
        Some(r @ Value::String(s)) if s == "keep_local" || s == "take_remote" => r.clone(),
        Some(r @ Value::Object(_)) => r.clone(),
        _ => {
            return Err(ApiError::bad_input(
                "resolution must be \"keep_local\", \"take_remote\" or a row object",
            )
            .detail(format!("Got {}.", v.to_string().chars().take(200).collect::<String>()))
            .hint("Send {\"resolution\": \"take_remote\"} to keep the peer's change, {\"resolution\": \"keep_local\"} to keep the hub's row."))
        }
    };
    let mut s = gw.hub.begin(&auth.peer).await?;
    let found = s
        .query_opt(
            "SELECT c.status, c.tbl::text, c.pk::text, n.nspname::text, cl.relname::text
               FROM sync_conflicts c JOIN pg_class cl ON cl.oid = c.tbl
               JOIN pg_namespace n ON n.oid = cl.relnamespace
              WHERE c.id = $1 AND c.remote_origin = $2",
            &[&id, &auth.peer.name],
        )
        .await?;
    let Some(found) = found else {
        s.rollback().await;
        return Err(not_found(id));
    };
    if found.get::<_, String>(0) != "open" {
        s.rollback().await;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            state::CONFLICT,
            format!("conflict {id} is already resolved"),
        )
        .hint(
            "Nothing to do: the resolution is already at the hub and on its way to every peer.",
        ));
    }
    let (table, pk, schema, name): (String, String, String, String) =
        (found.get(1), found.get(2), found.get(3), found.get(4));
    let resolved = s
        .query_one(
            "SELECT sync_resolve_conflict($1, $2::text::jsonb)",
            &[&id, &resolution.to_string()],
        )
        .await;
    // The row as the resolution left it (none: a delete won), for the
    // writer to hold at once.
    let r = match resolved {
        Ok(_) => {
            s.query_one(
                "SELECT (SELECT json_build_object('row', r.data, 'row_version', r.row_version)::text
                           FROM sync_row($1::text::regclass, $2::text::jsonb) AS r)",
                &[&table, &pk],
            )
            .await
        }
        Err(e) => Err(e),
    };
    let row: Option<String> = match r {
        Ok(r) => r.get(0),
        Err(e) => {
            s.rollback().await;
            return Err(e);
        }
    };
    s.commit().await?;
    let row: Value = row
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({"row": null, "row_version": null}));
    Ok(json_ok(
        serde_json::json!({"id": id, "table": table, "schema": schema, "name": name, "pk": serde_json::from_str::<Value>(&pk).unwrap_or(Value::Null),
                           "row": row["row"], "row_version": row["row_version"]})
        .to_string(),
    ))
}
