//! The sync gateway: an authenticated HTTP API for remote peers.
//!
//! ```text
//!  device ──HTTPS──> server (axum/hyper: request id, trace, metrics, body limit,
//!    JWT              timeout, compression, per-peer concurrency)
//!                      │ auth: token ──> Peer {sub, claims}
//!                      v
//!                    routes: schema | tables/{t}/sync | changes (long poll) | tables/{t}/changes | rows/{key}
//!                            | conflicts | conflicts/{id}/resolve
//!                      │ db: one transaction per request: sync_act_for_peer(sub, claims) = the peer's
//!                      │     role and sync_claim(); then the hub's own SQL API (sync_payload_rows,
//!                      │     sync_changes_since, sync_apply, sync_row): privileges, RLS, origin checks
//!                      v
//!                    hub (PostgreSQL + tributary)
//!  watch: one task per process polls sync_current_version(); on a move, sync_tables_changed()
//!         names the tables, and only the long polls waiting on them wake
//! ```
//!
//! Stateless: any number of processes serve one hub, and a client may
//! alternate between them (a continuation token carries its window).

pub mod auth;
pub mod config;
mod conflicts;
mod db;
pub mod error;
mod metrics;
mod ops;
mod pages;
mod server;
mod sync;
mod watch;
mod write;

use auth::{Peer, Verifier};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use config::GatewayConfig;
use error::ApiError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use server::serve;

/// What every request shares.
pub struct Gateway {
    pub config: GatewayConfig,
    verifier: Verifier,
    hub: db::Hub,
    watch: watch::Watcher,
    metrics: metrics::GatewayMetrics,
    /// Requests in flight per peer.
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Cancelled at shutdown: waiting long polls answer at once.
    shutdown: tokio_util::sync::CancellationToken,
}

/// A request's verified peer, holding one of its concurrency permits.
pub struct Authed {
    pub peer: Peer,
    _permit: OwnedSemaphorePermit,
}

impl FromRequestParts<Arc<Gateway>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Arc<Gateway>) -> Result<Authed, ApiError> {
        let h = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        let peer = gw.verifier.verify(h)?;
        tracing::Span::current().record("peer", peer.name.as_str());
        let sem = {
            let mut m = gw.in_flight.lock().expect("in_flight lock");
            if m.len() > 10_000 {
                // Forget idle peers so the map stays small.
                m.retain(|_, s| s.available_permits() < gw.config.max_concurrent_per_peer);
            }
            m.entry(peer.name.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(gw.config.max_concurrent_per_peer)))
                .clone()
        };
        let permit = sem.try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                error::state::TOO_MANY,
                "too many requests in flight for this peer",
            )
            .detail(format!(
                "Peer {} already has {} requests in flight.",
                peer.name, gw.config.max_concurrent_per_peer
            ))
            .hint("Wait for a request to finish (gateway.max_concurrent_per_peer).")
            .header(header::RETRY_AFTER, "1")
        })?;
        Ok(Authed {
            peer,
            _permit: permit,
        })
    }
}
