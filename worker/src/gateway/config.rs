//! The `[gateway]` section of the worker's configuration.
//!
//! ```toml
//! [gateway]
//! listen = "0.0.0.0:8080"
//! tls_cert = "/etc/tributary/cert.pem"   # optional, with tls_key: HTTPS
//! tls_key = "/etc/tributary/key.pem"
//! database_url = "postgres://gateway@127.0.0.1/hub"   # default: [source] url
//! [gateway.auth]
//! jwt_public_keys = "/etc/tributary/jwks.json"   # RS256, ES256, EdDSA
//! audience = "tributary"                           # optional
//! ```
//!
//! The HS256 secret comes from the environment only
//! (`TRIBUTARY_GATEWAY_JWT_SECRET`), the database password too
//! (`TRIBUTARY_GATEWAY_PASSWORD`, else the source's). At least one way to
//! verify tokens is required. Every limit has a default; each is checked
//! here so that a bad value is refused at start, not at the first request.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// The hub, as the gateway's own login role; default: `[source] url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Only from the environment (TRIBUTARY_GATEWAY_PASSWORD).
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Connections to the hub, shared by all requests.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Rows per page when the client asks for no page size (default:
    /// 1000, or max_page_size when that is lower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
    /// The largest page a client may ask for (400 above it).
    #[serde(default = "default_max_page_size")]
    pub max_page_size: u32,
    /// The largest request body (413 above it).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests one peer may have in flight at once (429 above it).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_per_peer: usize,
    /// How long a request may take, long-poll wait excluded (504 past it);
    /// also the statement timeout of its queries.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// The longest long poll a client may ask for (`wait`, seconds).
    #[serde(default = "default_max_wait_s")]
    pub max_wait_s: u64,
    /// How often the shared watcher looks at the hub's version while long
    /// polls wait.
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
    #[serde(default)]
    pub auth: AuthConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A JWKS file (`{"keys": [...]}`) of RS256, ES256 or EdDSA keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_public_keys: Option<String>,
    /// When set, a token's `aud` must name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// When set, a token's `iss` must be it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// Only from the environment (TRIBUTARY_GATEWAY_JWT_SECRET).
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub hs256_secret: Option<String>,
}

fn default_pool_size() -> usize {
    16
}
fn default_max_page_size() -> u32 {
    10_000
}
fn default_max_body_bytes() -> usize {
    8 << 20
}
fn default_max_concurrent() -> usize {
    8
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_max_wait_s() -> u64 {
    60
}
fn default_watch_interval_ms() -> u64 {
    50
}
fn default_leeway_s() -> u64 {
    5
}

impl GatewayConfig {
    /// Takes the secrets from the environment and checks every value.
    /// `source_url` is the `[source] url`, the default database.
    pub fn finish(
        &mut self,
        source_url: Option<&str>,
        source_password: Option<&str>,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if let Some(v) = env("TRIBUTARY_GATEWAY_LISTEN") {
            self.listen = v;
        }
        if self.database_url.is_none() {
            self.database_url = source_url.map(str::to_string);
        }
        self.password = env("TRIBUTARY_GATEWAY_PASSWORD").or(source_password.map(str::to_string));
        self.auth.hs256_secret = env("TRIBUTARY_GATEWAY_JWT_SECRET").filter(|s| !s.is_empty());
        let Some(url) = &self.database_url else {
            return bad("gateway.database_url is required when there is no [source] url".into());
        };
        crate::source::ConnectOptions::from_url(url, None)
            .map_err(|e| Error::Config(format!("gateway.database_url: {e}")))?;
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad(format!(
                "gateway.listen {:?} must be an address like 0.0.0.0:8080",
                self.listen
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("gateway.tls_cert and gateway.tls_key go together".into());
        }
        if self.auth.hs256_secret.is_none() && self.auth.jwt_public_keys.is_none() {
            return bad("the gateway needs a way to verify tokens: set TRIBUTARY_GATEWAY_JWT_SECRET (HS256) or gateway.auth.jwt_public_keys (a JWKS file)".into());
        }
        if self
            .auth
            .hs256_secret
            .as_ref()
            .is_some_and(|s| s.len() < 32)
        {
            return bad("TRIBUTARY_GATEWAY_JWT_SECRET must be at least 32 bytes".into());
        }
        let ranges: [(&str, u64, u64, u64); 8] = [
            ("pool_size", self.pool_size as u64, 1, 1000),
            (
                "page_size",
                self.default_page_size().into(),
                1,
                self.max_page_size.into(),
            ),
            ("max_page_size", self.max_page_size.into(), 1, 1_000_000),
            ("max_body_bytes", self.max_body_bytes as u64, 1024, 1 << 30),
            (
                "max_concurrent_per_peer",
                self.max_concurrent_per_peer as u64,
                1,
                100_000,
            ),
            (
                "request_timeout_ms",
                self.request_timeout_ms,
                100,
                3_600_000,
            ),
            ("max_wait_s", self.max_wait_s, 0, 3600),
            ("watch_interval_ms", self.watch_interval_ms, 5, 60_000),
        ];
        for (name, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                return bad(format!("gateway.{name} must be {lo} to {hi}, got {v}"));
            }
        }
        Ok(())
    }

    /// The page size of a request that names none.
    pub fn default_page_size(&self) -> u32 {
        self.page_size.unwrap_or(1000.min(self.max_page_size))
    }

    pub fn redact(&mut self) {
        if let Some(u) = &self.database_url {
            self.database_url = Some(crate::config::redact_url(u));
        }
        if self.password.is_some() {
            self.password = Some("<set by the environment>".into());
        }
        if self.auth.hs256_secret.is_some() {
            self.auth.hs256_secret = Some("<set by TRIBUTARY_GATEWAY_JWT_SECRET>".into());
        }
    }
}
