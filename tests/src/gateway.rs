//! Running the real gateway (`tributary-worker gateway`) against a test
//! cluster, and speaking HTTP to it.
//!
//! ```text
//!  setup_gateway_role(db)        LOGIN NOINHERIT role "gateway" + sync_gateway_grant
//!  add_peer(db, name, role, …)   a NOLOGIN role for the peer, granted to gateway,
//!                                with table privileges and sync_apply; sync_set_peer
//!  GatewayProc::start(…)         the process; waits for /healthz
//!  token(sub, claims, ttl)       an HS256 JWT signed with SECRET
//!  gw.call(method, path, token)  real HTTP over loopback; JSON in, status + headers + JSON out
//! ```

use crate::worker::WorkerProc;
use crate::{Cluster, Db};
use reqwest::blocking::Client as Http;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The HS256 secret every test gateway trusts.
pub const SECRET: &str = "tributary-test-secret-0123456789abcdef";

/// Creates the role `gateway` (LOGIN NOINHERIT: it holds no data
/// privileges of its own) and grants it what the gateway needs.
pub fn setup_gateway_role(db: &Db) {
    let mut c = db.connect();
    c.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gateway') THEN
             CREATE ROLE gateway LOGIN NOINHERIT;
           END IF;
         END $$;
         SELECT sync_gateway_grant('gateway');",
    )
    .unwrap();
}

/// A peer `name` spoken for by the NOLOGIN role `role`, which may read and
/// write `tables` (SQL names) and apply changes; the gateway may take it.
pub fn add_peer(db: &Db, name: &str, role: &str, tables: &[&str]) {
    let mut c = db.connect();
    let r = tributary_core::quote::ident(role);
    c.batch_execute(&format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {lit}) THEN
             CREATE ROLE {r} NOLOGIN;
           END IF;
         END $$;
         GRANT {r} TO gateway;
         GRANT EXECUTE ON FUNCTION sync_apply(regclass, jsonb, text) TO {r};
         GRANT EXECUTE ON FUNCTION sync_resolve_conflict(bigint, jsonb) TO {r};",
        lit = tributary_core::quote::literal(role),
    ))
    .unwrap();
    for t in tables {
        c.batch_execute(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {r}"
        ))
        .unwrap();
    }
    c.execute(
        "SELECT sync_set_peer($1, 10, $2::text::regrole)",
        &[&name, &r],
    )
    .unwrap();
}

/// A `[gateway]` configuration for `db`, listening on a free port, with
/// `extra` lines added to the section.
pub fn config(cluster: &Cluster, db: &Db, extra: &str) -> (String, u16) {
    let port = crate::free_port();
    (
        format!(
            "[gateway]\nlisten = \"127.0.0.1:{port}\"\ndatabase_url = \"postgres://gateway@127.0.0.1:{}/{}\"\n{extra}\n",
            cluster.port, db.name
        ),
        port,
    )
}

pub struct GatewayProc {
    pub proc: WorkerProc,
    pub base: String,
    pub http: Http,
}

impl GatewayProc {
    /// `tributary-worker gateway` with [`config`]`(…, extra)`.
    pub fn start(cluster: &Cluster, db: &Db, extra: &str) -> GatewayProc {
        let (cfg, port) = config(cluster, db, extra);
        GatewayProc::start_with(&cfg, &format!("http://127.0.0.1:{port}"), Http::new())
    }

    /// Any configuration; `base` is the URL it serves.
    pub fn start_with(cfg: &str, base: &str, http: Http) -> GatewayProc {
        let proc =
            WorkerProc::start_command("gateway", cfg, &[("TRIBUTARY_GATEWAY_JWT_SECRET", SECRET)]);
        let mut g = GatewayProc {
            proc,
            base: base.to_string(),
            http,
        };
        g.until_healthy();
        g
    }

    pub fn until_healthy(&mut self) {
        let url = format!("{}/healthz", self.base);
        let http = self.http.clone();
        self.proc
            .until(Duration::from_secs(60), "the gateway's /healthz", || {
                http.get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .is_ok_and(|r| r.status() == 200)
            });
    }

    /// A request with a bearer token (when given) and a JSON body (when
    /// given). Returns the status, the headers and the body as JSON (a
    /// body that is not JSON comes back as a JSON string).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let mut rq = self
            .http
            .request(m, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(120));
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        if let Some(b) = body {
            rq = rq.json(b);
        }
        for (k, v) in headers {
            rq = rq.header(*k, *v);
        }
        let r = rq.send().unwrap_or_else(|e| {
            panic!(
                "{method} {path}: {e:?}\ngateway log:\n{}",
                self.proc.log_text()
            )
        });
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str, token: &str) -> Answer {
        self.call("GET", path, Some(token), None, &[])
    }
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Asserts the status; returns the body.
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "unexpected answer: {:#}", self.body);
        &self.body
    }

    /// Asserts an error answer with this status and SQLSTATE.
    pub fn expect_error(&self, status: u16, sqlstate: &str) -> &Value {
        assert_eq!(self.status, status, "unexpected answer: {:#}", self.body);
        assert_eq!(self.body["error"]["sqlstate"], sqlstate, "{:#}", self.body);
        assert!(self.body["error"]["message"].is_string(), "{:#}", self.body);
        &self.body
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HS256 token for peer `sub` with `claims` added, valid for `ttl`
/// seconds (negative: expired that long ago).
pub fn token(sub: &str, claims: Value, ttl: i64) -> String {
    token_with(json!({"sub": sub, "exp": now() + ttl}), claims, SECRET)
}

pub fn token_with(base: Value, claims: Value, secret: &str) -> String {
    let mut c = base;
    if let (Some(o), Value::Object(extra)) = (c.as_object_mut(), claims) {
        o.extend(extra);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &c,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// URL-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every page of a table's payload from `from`: the items, the Version of
/// each page, and how many pages. `next` alternates between `gateways`.
pub fn all_pages(
    gateways: &[&GatewayProc],
    table: &str,
    from: i64,
    page: u32,
    token: &str,
) -> (Vec<Value>, Vec<i64>, usize) {
    let mut items = Vec::new();
    let mut versions = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    let start = Instant::now();
    loop {
        let g = gateways[pages % gateways.len()];
        let q = match &next {
            None => format!(
                "/v1/tables/{}/sync?fromVersion={from}&pageSize={page}",
                enc(table)
            ),
            Some(n) => format!("/v1/tables/{}/sync?next={n}&pageSize={page}", enc(table)),
        };
        let a = g.get(&q, token);
        let b = a.expect(200);
        items.extend(b["Data"].as_array().unwrap().iter().cloned());
        versions.push(b["Metadata"]["Sync"]["Version"].as_i64().unwrap());
        pages += 1;
        next = b["Metadata"]["Sync"]["Next"].as_str().map(str::to_string);
        if next.is_none() {
            return (items, versions, pages);
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "paging does not end"
        );
    }
}
