//! The HTTP server: routes, the middleware every request passes, and the
//! listener (TCP, or TLS with rustls).
//!
//! ```text
//!  accept ──(TLS handshake, in its own task)──> hyper (HTTP/1.1, HTTP/2)
//!    ──> request id (x-request-id, kept if the client sent one) ──> trace span {id, method, route, peer}
//!    ──> metrics (route, status, latency) ──> timeout (504) ──> compression (gzip, zstd) ──> route
//! ```

use super::config::GatewayConfig;
use super::error::{state, ApiError};
use super::{db, metrics, ops, sync, watch, write, Gateway};
use crate::error::Error;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

pub const SCHEMA: &str = "/v1/schema";
pub const TABLE_SYNC: &str = "/v1/tables/{table}/sync";
pub const CHANGES: &str = "/v1/changes";
pub const TABLE_CHANGES: &str = "/v1/tables/{table}/changes";
pub const ROW: &str = "/v1/tables/{table}/rows/{key}";
pub const CONFLICTS: &str = "/v1/conflicts";
pub const RESOLVE: &str = "/v1/conflicts/{id}/resolve";
pub const OPENAPI: &str = "/v1/openapi.json";
pub const HEALTHZ: &str = "/healthz";
pub const METRICS: &str = "/metrics";

/// Every route, for the check that the OpenAPI document describes them.
#[cfg(test)]
pub const ROUTES: [(&str, &str); 12] = [
    ("get", SCHEMA),
    ("get", TABLE_SYNC),
    ("get", CHANGES),
    ("post", TABLE_CHANGES),
    ("get", ROW),
    ("put", ROW),
    ("delete", ROW),
    ("get", CONFLICTS),
    ("post", RESOLVE),
    ("get", OPENAPI),
    ("get", HEALTHZ),
    ("get", METRICS),
];

/// Request ids: a per-process prefix and a counter.
#[derive(Clone)]
struct Ids {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl MakeRequestId for Ids {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

fn router(gw: Arc<Gateway>) -> Router {
    let ids = Ids {
        prefix: format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64 & 0xffffff)
                .unwrap_or(0)
        )
        .into(),
        next: Arc::new(AtomicU64::new(1)),
    };
    let trace = tower_http::trace::TraceLayer::new_for_http()
        .make_span_with(|req: &axum::http::Request<_>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str())
                .unwrap_or("(none)");
            tracing::info_span!("request", id = %id, method = %req.method(), route = %route, peer = tracing::field::Empty)
        })
        .on_request(())
        .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO));
    Router::new()
        .route(SCHEMA, get(ops::schema))
        .route(TABLE_SYNC, get(sync::table_sync))
        .route(CHANGES, get(sync::changes))
        .route(TABLE_CHANGES, post(write::post_changes))
        .route(
            ROW,
            get(write::get_row)
                .put(write::put_row)
                .delete(write::delete_row),
        )
        .route(CONFLICTS, get(super::conflicts::list))
        .route(RESOLVE, post(super::conflicts::resolve))
        .route(OPENAPI, get(ops::openapi))
        .route(HEALTHZ, get(ops::healthz))
        .route(METRICS, get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(gw.clone(), limit_time))
        .layer(axum::middleware::from_fn_with_state(gw.clone(), count))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(ids))
        .with_state(gw)
}

/// Counts every answer by route and status, with its latency.
async fn count(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "(none)".into());
    let t = Instant::now();
    let r = next.run(req).await;
    gw.metrics
        .record(&route, r.status().as_u16(), t.elapsed().as_secs_f64());
    r
}

/// The request timeout, plus the wait a long poll asked for.
async fn limit_time(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let wait = req
        .uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("wait="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        .min(gw.config.max_wait_s);
    let limit = Duration::from_millis(gw.config.request_timeout_ms) + Duration::from_secs(wait);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            state::TIMEOUT,
            "the request took too long",
        )
        .detail(format!(
            "The limit is {} ms (gateway.request_timeout_ms).",
            gw.config.request_timeout_ms
        ))
        .hint("Ask for smaller pages, or retry.")
        .into_response(),
    }
}

fn tls_config(c: &GatewayConfig) -> Result<Option<Arc<rustls::ServerConfig>>, Error> {
    let (Some(cert), Some(key)) = (&c.tls_cert, &c.tls_key) else {
        return Ok(None);
    };
    let bad = |what: &str, e: String| Error::Config(format!("gateway.{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("tls_cert", format!("{cert}: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("tls_cert", format!("{cert}: {e}")))?;
    if certs.is_empty() {
        return Err(bad("tls_cert", format!("{cert}: no certificate")));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| bad("tls_key", format!("{key}: {e}")))?;
    let mut sc = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("tls_cert", e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        bad(
            "tls_cert",
            format!("the certificate and key do not go together: {e}"),
        )
    })?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(sc)))
}

/// A TLS listener for axum: handshakes run in their own tasks, so a slow
/// client cannot hold up the others' accepts.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (shutdown): wait for the server to stop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

fn tls_listener(
    tcp: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<TlsListener> {
    let local = tcp.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (sock, addr) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = tcp.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send((s, addr)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(TlsListener { rx, local })
}

/// Serves the gateway until `shutdown`; waiting long polls answer at once
/// then, and open requests finish.
pub async fn serve(config: GatewayConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let tls = tls_config(&config)?;
    let verifier = super::auth::Verifier::new(&config.auth).map_err(Error::Config)?;
    let hub = db::Hub::new(&config)?;
    let tcp = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| Error::Config(format!("gateway.listen {}: {e}", config.listen)))?;
    tracing::info!(listen = %config.listen, tls = tls.is_some(), "serving the gateway");
    let gw = Arc::new(Gateway {
        verifier,
        hub,
        watch: watch::Watcher::default(),
        metrics: metrics::GatewayMetrics::default(),
        in_flight: Default::default(),
        shutdown: shutdown.clone(),
        config,
    });
    let watcher = {
        let gw = gw.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(gw.config.watch_interval_ms);
            gw.watch.run(&gw.hub, every, stop).await
        })
    };
    let app = router(gw.clone());
    let stop = shutdown.clone();
    let served = match tls {
        None => {
            axum::serve(tcp, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
        Some(tls) => {
            let l = tls_listener(tcp, tls, shutdown.clone())?;
            axum::serve(l, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    };
    watcher.abort();
    served.map_err(Error::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(ops::OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "openapi.json lacks {method} {path}"
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| {
                p.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| *k != "parameters")
                    .count()
            })
            .sum();
        assert_eq!(
            documented,
            ROUTES.len(),
            "openapi.json documents a route the server lacks"
        );
    }
}
