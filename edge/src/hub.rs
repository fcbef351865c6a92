//! The gateway, as the edge client speaks to it: blocking HTTP with the
//! peer's bearer token, JSON answers, and every failure sorted into
//! [`Error`]'s kinds.
//!
//! ```text
//!  Hub::new(url, token) ──GET /v1/schema──> TableDefs (the hub alone defines the schema)
//! ```
//!
//! What the hub sends is checked before the file is touched: a table needs
//! a schema, a name, a primary key, and each column a name and a type OID.

use crate::error::{Error, HubError, Result};
use std::time::Duration;
use tributary_sqlite::{ColumnDef, TableDef};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take (a long poll asks for less).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Hub {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

/// A table of `/v1/schema`, as the file needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTable {
    /// The hub's name of it (its regclass text), as the endpoints take it.
    pub table: String,
    pub def: TableDef,
    /// The hub's estimate of the table's rows (None: not analyzed yet, or
    /// a hub older than 0.8.0), for a first download's estimate.
    pub estimated_rows: Option<i64>,
}

impl Hub {
    /// `url`: the gateway's base URL (`https://gw.example.com`).
    pub fn new(url: &str, token: &str) -> Result<Hub> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Usage(format!(
                "the hub URL {url:?} must start with http:// or https://"
            )));
        }
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(Error::Usage(
                "no token: pass --token-file FILE or set TRIBUTARY_EDGE_TOKEN".into(),
            ));
        }
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::Usage(format!("cannot make an HTTP client: {e}")))?;
        Ok(Hub { base, token, http })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// GET `path` (from `/v1/…`): the body of a 200 answer.
    pub fn get_text(&self, path: &str) -> Result<String> {
        self.send(self.http.get(format!("{}{path}", self.base)))
    }

    /// POST a JSON `body` to `path`: the body of a 200 answer.
    pub fn post_text(&self, path: &str, body: String) -> Result<String> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
    }

    /// GET a row (`/v1/tables/{t}/rows/{key}`): its JSON and revision (the
    /// ETag), or None when the hub does not hold it.
    pub fn get_row(&self, path: &str) -> Result<Option<(String, i64)>> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| self.unreachable(e))?;
        let status = r.status().as_u16();
        let etag = r
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_matches('"').parse::<i64>().ok());
        let body = r.text().map_err(|e| self.unreachable(e))?;
        match (status, etag) {
            (200, Some(v)) => Ok(Some((body, v))),
            (404, _) => Ok(None),
            _ => Err(self.refused(status, &body)),
        }
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> Result<String> {
        let r = req
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| self.unreachable(e))?;
        let status = r.status().as_u16();
        let body = r.text().map_err(|e| self.unreachable(e))?;
        if status != 200 {
            return Err(self.refused(status, &body));
        }
        Ok(body)
    }

    /// A long poll: whether any table this peer reads changed after
    /// `since`, waiting up to `wait` for one to (`GET /v1/changes?wait=`).
    pub fn changed_since(&self, since: i64, wait: Duration) -> Result<bool> {
        let path = format!(
            "/v1/changes?since={since}&wait={}&pageSize=1",
            wait.as_secs().max(1)
        );
        let body = match self.send(
            self.http
                .get(format!("{}{path}", self.base))
                .timeout(wait + CONNECT_TIMEOUT + CONNECT_TIMEOUT),
        ) {
            // Too old for a diff: a pull starts the tables again.
            Err(Error::Hub(e)) if e.sqlstate == "TB002" => return Ok(true),
            r => r?,
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        Ok(v["changes"].as_array().is_some_and(|c| !c.is_empty()))
    }

    /// GET `path` (from `/v1/…`), as JSON.
    pub fn get(&self, path: &str) -> Result<serde_json::Value> {
        let body = self.get_text(path)?;
        serde_json::from_str(&body).map_err(|e| {
            Error::Hub(HubError {
                status: 200,
                message: format!("the answer to GET {path} is not JSON: {e}"),
                ..Default::default()
            })
        })
    }

    /// The tables this peer may sync (`GET /v1/schema`), checked.
    pub fn schema(&self) -> Result<Vec<RemoteTable>> {
        let v = self.get("/v1/schema")?;
        let tables = v["tables"]
            .as_array()
            .ok_or_else(|| bad("no tables array"))?;
        tables.iter().map(remote_table).collect()
    }

    fn unreachable(&self, e: reqwest::Error) -> Error {
        // The token is never in the error: reqwest's errors name the URL.
        Error::Unreachable {
            hub: self.base.clone(),
            cause: e.to_string(),
        }
    }

    fn refused(&self, status: u16, body: &str) -> Error {
        let e = HubError::from_body(status, body);
        match status {
            // 403 is the hub refusing this peer a table or a row, not the
            // token.
            401 => Error::TokenRefused(e),
            502..=504 => Error::Unreachable {
                hub: self.base.clone(),
                cause: e.to_string(),
            },
            _ => Error::Hub(e),
        }
    }
}

fn bad(why: &str) -> Error {
    Error::Hub(HubError {
        status: 200,
        message: format!("the hub's schema cannot be used: {why}"),
        ..Default::default()
    })
}

/// One table of the schema, with every column it lists (generated ones
/// too, as a worker-attached file has them).
fn remote_table(t: &serde_json::Value) -> Result<RemoteTable> {
    let s = |k: &str| {
        t[k].as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| bad(&format!("a table without {k}")))
    };
    let (table, schema, name) = (s("table")?, s("schema")?, s("name")?);
    let keys: Vec<&str> = t["primary_key"]
        .as_array()
        .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
        .unwrap_or_default();
    if keys.is_empty() {
        return Err(bad(&format!("table {table} has no primary key")));
    }
    let mut columns = Vec::new();
    for c in t["columns"].as_array().into_iter().flatten() {
        let (Some(cname), Some(oid)) = (c["name"].as_str(), c["type_oid"].as_u64()) else {
            return Err(bad(&format!(
                "a column of {table} without a name or type_oid (a hub older than 0.7.0?)"
            )));
        };
        let type_oid = u32::try_from(oid).map_err(|_| bad("a type_oid out of range"))?;
        columns.push(ColumnDef {
            name: cname.to_string(),
            type_oid,
            key: keys.contains(&cname),
        });
    }
    for k in &keys {
        if !columns.iter().any(|c| c.name == *k) {
            return Err(bad(&format!(
                "table {table}: key column {k:?} is not among the columns this peer may read"
            )));
        }
    }
    Ok(RemoteTable {
        table,
        def: TableDef {
            schema,
            name,
            columns,
        },
        estimated_rows: t["estimated_rows"].as_i64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_schema_table_becomes_a_table_def() {
        let t = json!({"table": "\"tab'le\"", "schema": "public", "name": "tab'le", "primary_key": ["\""],
            "columns": [
                {"name": "\"", "type": "integer", "type_oid": 23, "generated": false},
                {"name": "g", "type": "integer", "type_oid": 23, "generated": true},
                {"name": "]", "type": "text", "type_oid": 25, "generated": false}]});
        let r = remote_table(&t).unwrap();
        assert_eq!(r.table, "\"tab'le\"");
        assert_eq!(r.def.file_name(), "tab'le");
        assert_eq!(
            r.def.columns,
            vec![
                ColumnDef {
                    name: "\"".into(),
                    type_oid: 23,
                    key: true
                },
                ColumnDef {
                    name: "g".into(),
                    type_oid: 23,
                    key: false
                },
                ColumnDef {
                    name: "]".into(),
                    type_oid: 25,
                    key: false
                }
            ]
        );
    }

    #[test]
    fn a_table_the_file_cannot_hold_is_refused_with_its_name() {
        let no_key = json!({"table": "t", "schema": "public", "name": "t", "primary_key": [],
            "columns": [{"name": "a", "type_oid": 23}]});
        let hidden_key = json!({"table": "t", "schema": "public", "name": "t", "primary_key": ["id"],
            "columns": [{"name": "a", "type_oid": 23}]});
        let old_hub = json!({"table": "t", "schema": "public", "name": "t", "primary_key": ["id"],
            "columns": [{"name": "id", "type": "integer"}]});
        for (t, want) in [
            (no_key, "no primary key"),
            (hidden_key, "key column \"id\""),
            (old_hub, "type_oid"),
        ] {
            let e = remote_table(&t).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(e.exit_code(), 6);
        }
    }

    #[test]
    fn a_hub_url_must_be_http_and_a_token_present() {
        assert_eq!(Hub::new("gw:8080", "t").err().unwrap().exit_code(), 2);
        assert_eq!(
            Hub::new("http://gw:8080", " \n").err().unwrap().exit_code(),
            2
        );
        assert_eq!(Hub::new("https://gw/", "t").unwrap().url(), "https://gw");
    }
}
