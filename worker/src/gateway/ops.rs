//! What is not sync: the schema a peer may sync, health, metrics, the
//! OpenAPI document, and the JSON answers for unknown routes.

use super::error::{state, ApiError};
use super::{Authed, Gateway};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The OpenAPI 3 description of `/v1`.
pub const OPENAPI: &str = include_str!("openapi.json");

pub async fn schema(State(gw): State<Arc<Gateway>>, auth: Authed) -> Result<Response, ApiError> {
    let s = gw.hub.begin(&auth.peer).await?;
    let body: String = s.query_one("SELECT sync_schema()::text", &[]).await?.get(0);
    s.commit().await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// 200 when the hub answers, 503 otherwise.
pub async fn healthz(State(gw): State<Arc<Gateway>>) -> Response {
    let ok = match gw.hub.own().await {
        Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    if ok {
        (StatusCode::OK, "serving\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the hub does not answer\n").into_response()
    }
}

pub async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics.render(),
    )
        .into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, state::NOT_FOUND, "no such endpoint")
        .hint("See /v1/openapi.json for the endpoints.")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        state::BAD_INPUT,
        "this endpoint does not take that method",
    )
    .hint("See /v1/openapi.json for the endpoints.")
}
