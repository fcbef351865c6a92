//! Reading: a table's payload (`GET /v1/tables/{table}/sync`) and the
//! changes of all the peer's tables (`GET /v1/changes`, with long polls).
//!
//! ```text
//!  /tables/{t}/sync?fromVersion=F ──sync_payload_window(t, F)──> Version, Type, ReasonCode, since
//!       ──sync_payload_rows(t, since, Version, after, n+1)──> {"Data":[…],"Metadata":{"Sync":{…,"Next"}}}
//!  /changes?since=S[&tables=…][&wait=W] ──sync_changes_since(S, v, tables, n+1, after…)──>
//!       {"changes":[…],"version":v,"next"}      nothing yet and W > 0: wait on the watcher, then read again
//! ```
//!
//! Both stream their rows as the hub returns them and never echo-filter:
//! a peer's own writes come back to it once, with the hub's revision.

use super::error::ApiError;
use super::pages::{page_size, streamed, Cursor, Out};
use super::{Authed, Gateway};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::TryStreamExt;
use std::sync::Arc;
use tokio_postgres::types::ToSql;

/// The query parameters of a request (a bad encoding is a JSON 400 too).
pub struct Params(pub Vec<(String, String)>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Params, ApiError> {
        axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e| {
                ApiError::bad_input("the query string cannot be read").detail(e.body_text())
            })
    }
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.trim().parse::<T>().map(Some).map_err(|_| {
                ApiError::bad_input(format!("{name} must be a whole number"))
                    .detail(format!("{name} = {v:?}."))
            }),
        }
    }
}

/// `fromVersion` from the header (as Azure SQL's Change Tracking sample
/// sends it) or the query.
fn from_version(headers: &HeaderMap, q: &Params) -> Result<Option<i64>, ApiError> {
    if let Some(v) = headers.get("fromVersion") {
        let s = v.to_str().unwrap_or("");
        return s.trim().parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_input("the fromVersion header must be a whole number")
                .detail(format!("fromVersion: {s:?}."))
        });
    }
    q.number("fromVersion")
}

pub async fn table_sync(
    State(gw): State<Arc<Gateway>>,
    auth: Authed,
    Path(table): Path<String>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    let size = page_size(
        q.number("pageSize")?,
        gw.config.default_page_size(),
        gw.config.max_page_size,
    )?;
    let cursor = q.get("next").map(Cursor::decode).transpose()?;
    let from = from_version(&headers, &q)?;
    if cursor.is_none() && from.is_none() {
        return Err(ApiError::bad_input("fromVersion is required")
            .hint("Send fromVersion: 0 for a first sync, then the Version of your last payload (header or query parameter)."));
    }
    streamed("application/json", move |out| async move {
        payload_page(&gw, &auth, &table, from.unwrap_or(0), cursor, size, out).await
    })
    .await
}

async fn payload_page(
    gw: &Gateway,
    auth: &Authed,
    table: &str,
    from: i64,
    cursor: Option<Cursor>,
    size: u32,
    mut out: Out,
) -> Result<Out, ApiError> {
    let s = gw.hub.begin(&auth.peer).await?;
    let window = match cursor {
        Some(c) => c,
        None => {
            let r = s
                .query_one(
                    "SELECT version, type, reason_code, since FROM sync_payload_window($1::text::regclass, $2)",
                    &[&table, &from],
                )
                .await?;
            Cursor {
                until: r.get(0),
                kind: Some(r.get(1)),
                reason: Some(r.get(2)),
                since: r.get(3),
                after_tbl: None,
                after_pk: serde_json::Value::Null,
            }
        }
    };
    let after = (!window.after_pk.is_null()).then(|| window.after_pk.to_string());
    let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(table.to_string()),
        Box::new(window.since),
        Box::new(window.until),
        Box::new(after),
        Box::new(size as i32 + 1),
    ];
    let rows = s
        .stream(
            "SELECT pk::text, item::text FROM sync_payload_rows($1::text::regclass, $2, $3, $4::text::jsonb, $5)",
            params,
        )
        .await?;
    out.push("{\"Data\":[");
    let last = write_items(
        rows,
        &mut out,
        size,
        |r, o| o.push(r.get(1)),
        |r| (None, r.get(0)),
    )
    .await?
    .more_after;
    s.commit().await?;
    let mut sync = serde_json::json!({
        "Version": window.until,
        "Type": window.kind.as_deref().unwrap_or("Diff"),
        "ReasonCode": window.reason.unwrap_or(0),
    });
    if let Some((_, pk)) = last {
        let next = Cursor {
            after_pk: serde_json::from_str(&pk).unwrap_or_default(),
            ..window
        };
        sync["Next"] = next.encode().into();
    }
    out.push(&format!("],\"Metadata\":{{\"Sync\":{sync}}}}}"));
    Ok(out)
}

/// What [`write_items`] wrote: how many items and, when the hub had one
/// more row (more pages follow), the key (table oid, pk text) of the last
/// one written.
struct Written {
    n: u32,
    more_after: Option<(Option<u32>, String)>,
}

/// Writes up to `size` rows as the elements of a JSON array (`item`
/// writes one); `key` gives a row's key (table oid, pk text).
async fn write_items(
    rows: tokio_postgres::RowStream,
    out: &mut Out,
    size: u32,
    mut item: impl FnMut(&tokio_postgres::Row, &mut Out),
    key: impl Fn(&tokio_postgres::Row) -> (Option<u32>, String),
) -> Result<Written, ApiError> {
    let mut rows = Box::pin(rows);
    let mut n = 0u32;
    let mut last = None;
    while let Some(row) = rows.try_next().await? {
        if n == size {
            return Ok(Written {
                n,
                more_after: last,
            });
        }
        if n > 0 {
            out.push(",");
        }
        item(&row, out);
        last = Some(key(&row));
        n += 1;
        if !out.flush_if_full().await {
            return Err(ApiError::bad_input("the client went away"));
        }
    }
    Ok(Written {
        n,
        more_after: None,
    })
}

/// Table names in `tables=a,b` (or repeated): a name holding a comma is
/// quoted as SQL quotes it (`"a,b"`), so splitting respects quotes.
fn table_list(q: &Params) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for v in q.all("tables") {
        let mut cur = String::new();
        let mut quoted = false;
        for ch in v.chars() {
            match ch {
                '"' => {
                    quoted = !quoted;
                    cur.push(ch);
                }
                ',' if !quoted => names.push(std::mem::take(&mut cur)),
                _ => cur.push(ch),
            }
        }
        names.push(cur);
    }
    let names: Vec<String> = names
        .into_iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    (!names.is_empty()).then_some(names)
}

/// The peer's tables: those asked for, or every tracked table it may read.
const TABLES_SQL: &str = "SELECT CASE WHEN $1::text[] IS NULL THEN
       (SELECT coalesce(array_agg(relid::oid ORDER BY relid::oid), '{}') FROM tributary.tracked
         WHERE active AND has_table_privilege(relid, 'SELECT'))
     ELSE (SELECT array_agg(t::regclass::oid ORDER BY t::regclass::oid) FROM unnest($1::text[]) AS t) END";

pub async fn changes(
    State(gw): State<Arc<Gateway>>,
    auth: Authed,
    q: Params,
) -> Result<Response, ApiError> {
    let size = page_size(
        q.number("pageSize")?,
        gw.config.default_page_size(),
        gw.config.max_page_size,
    )?;
    let cursor = q.get("next").map(Cursor::decode).transpose()?;
    let since: Option<i64> = q.number("since")?;
    let wait: u64 = q.number("wait")?.unwrap_or(0);
    if wait > gw.config.max_wait_s {
        return Err(ApiError::bad_input(format!("wait {wait} is too long"))
            .detail(format!(
                "The longest wait is {} seconds.",
                gw.config.max_wait_s
            ))
            .hint("Ask for a shorter wait and poll again."));
    }
    let tables = table_list(&q);
    let Some(since) = cursor.as_ref().map(|c| c.since).or(since) else {
        return Err(ApiError::bad_input("since is required")
            .hint("Pass since=0 for a first sync, then the version of your last answer."));
    };
    // A long poll: the first page of a window, with a wait.
    let deadline = (cursor.is_none() && wait > 0)
        .then(|| tokio::time::Instant::now() + std::time::Duration::from_secs(wait));
    streamed("application/json", move |out| async move {
        changes_page(&gw, &auth, since, tables, cursor, size, deadline, out).await
    })
    .await
}

/// Waits on the watcher until a change of `oids` that `role` with `claims`
/// may read is committed after `checked`, the deadline, or shutdown.
/// Returns whether it was woken, and the version the watcher found nothing
/// before.
async fn wait_for_change(
    gw: &Gateway,
    role: &str,
    claims: &str,
    oids: Vec<u32>,
    checked: i64,
    deadline: tokio::time::Instant,
) -> (bool, i64) {
    let mut w = gw.watch.register(role, claims, oids, checked);
    let waiting = || {
        gw.metrics.waiting.store(
            gw.watch.waiting() as i64,
            std::sync::atomic::Ordering::Relaxed,
        )
    };
    waiting();
    let woken = tokio::select! {
        w = w.until(deadline) => w,
        _ = gw.shutdown.cancelled() => false,
    };
    let checked = w.checked();
    drop(w);
    waiting();
    (woken, checked)
}

/// One page of changes. With a `deadline` (a long poll), an empty first
/// page is not sent: the request waits on the watcher until a change it
/// may read is committed (then reads the page again, in a new
/// transaction) or the deadline passes (then answers no changes, with the
/// version up to which the watcher found none). So a woken poll costs the
/// hub one transaction, which both checks and reads; and a poll that comes
/// back with the version it was just given, while the watcher saw nothing
/// later, starts waiting without one (see `watch`).
#[allow(clippy::too_many_arguments)]
async fn changes_page(
    gw: &Gateway,
    auth: &Authed,
    since: i64,
    tables: Option<Vec<String>>,
    cursor: Option<Cursor>,
    size: u32,
    deadline: Option<tokio::time::Instant>,
    mut out: Out,
) -> Result<Out, ApiError> {
    let claims = serde_json::Value::Object(auth.peer.claims.clone()).to_string();
    let key = (auth.peer.name.clone(), tables.clone());
    // (role, tables, checked) to wait with, before reading.
    let mut wait: Option<(String, Vec<u32>, i64)> = None;
    if deadline.is_some()
        && gw
            .watch
            .recent_version(std::time::Duration::from_millis(
                gw.config.watch_interval_ms * 4 + 100,
            ))
            .is_some_and(|v| since >= v)
    {
        wait = gw.watch.seen(&key).map(|(role, oids)| (role, oids, since));
        if wait.is_some() {
            gw.metrics
                .waited_without_read
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    loop {
        if let Some((role, oids, checked)) = wait.take() {
            let deadline = deadline.expect("waits only with a deadline");
            let (woken, checked) =
                wait_for_change(gw, &role, &claims, oids, checked, deadline).await;
            if !woken {
                out.clear();
                out.push(&format!("{{\"changes\":[],\"version\":{checked}}}"));
                return Ok(out);
            }
            out.clear();
        }
        let (n, role, oids, until) =
            read_page(gw, auth, since, &tables, cursor.as_ref(), size, &mut out).await?;
        if deadline.is_none() {
            return Ok(out);
        }
        gw.watch.saw(key.clone(), &role, &oids);
        if n > 0 || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Ok(out);
        }
        // Nothing yet: wait for a change of these tables this peer may read.
        wait = Some((role, oids, until));
    }
}

/// One transaction as the peer: the page of changes in `out`. Returns how
/// many it holds, the role and table oids it read with, and its version.
async fn read_page(
    gw: &Gateway,
    auth: &Authed,
    since: i64,
    tables: &Option<Vec<String>>,
    cursor: Option<&Cursor>,
    size: u32,
    out: &mut Out,
) -> Result<(u32, String, Vec<u32>, i64), ApiError> {
    let s = gw.hub.begin(&auth.peer).await?;
    let (oids, window): (Vec<u32>, Cursor) = match cursor {
        Some(c) => (s.query_one(TABLES_SQL, &[tables]).await?.get(0), c.clone()),
        None => {
            let r = s
                .query_one(
                    &format!("SELECT ({TABLES_SQL}), sync_current_version()"),
                    &[tables],
                )
                .await?;
            let window = Cursor {
                since,
                until: r.get(1),
                ..Default::default()
            };
            (r.get(0), window)
        }
    };
    let after = (!window.after_pk.is_null()).then(|| window.after_pk.to_string());
    let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(window.since),
        Box::new(window.until),
        Box::new(oids.clone()),
        Box::new(size as i32 + 1),
        Box::new(window.after_tbl.filter(|_| after.is_some())),
        Box::new(after),
    ];
    // The tables' names, once: the JSON of each change is put together
    // here rather than by json_build_object in the hub, which took more
    // of a page's time in the one backend than reading the rows did.
    let names: std::collections::HashMap<u32, String> = s
        .query_one(
            "SELECT coalesce(jsonb_object_agg(o::text, o::regclass::text), '{}')::text
               FROM unnest($1::oid[]) AS o",
            &[&oids],
        )
        .await
        .map(|r| serde_json::from_str::<std::collections::HashMap<u32, String>>(r.get(0)))?
        .unwrap_or_default();
    let rows = s
        .stream(
            "SELECT c.tbl::oid, c.pk::text, c.op, c.data::text, c.row_version, c.origin,
                    c.changed_columns
               FROM sync_changes_since($1, $2, $3::oid[]::regclass[], NULL, $4, $5::oid::regclass, $6::text::jsonb) AS c",
            params,
        )
        .await?;
    out.push("{\"changes\":[");
    let written = write_items(
        rows,
        out,
        size,
        |r, o| write_change(r, &names, o),
        |r| (Some(r.get(0)), r.get(1)),
    )
    .await?;
    let role = s.role.clone();
    s.commit().await?;
    if cursor.is_none() {
        gw.watch.note_version(window.until);
    }
    out.push(&format!("],\"version\":{}", window.until));
    let until = window.until;
    if let Some((tbl, pk)) = written.more_after {
        let next = Cursor {
            after_tbl: tbl,
            after_pk: serde_json::from_str(&pk).unwrap_or_default(),
            ..window
        };
        out.push(&format!(",\"next\":\"{}\"", next.encode()));
    }
    out.push("}");
    Ok((written.n, role, oids, until))
}

/// One change as JSON: `{"table", "op", "pk", "data", "row_version",
/// "origin", "changed_columns"}` from a row of the query in [`read_page`].
fn write_change(
    r: &tokio_postgres::Row,
    names: &std::collections::HashMap<u32, String>,
    o: &mut Out,
) {
    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_else(|_| "null".into())
    }
    let tbl: u32 = r.get(0);
    let table = names.get(&tbl).cloned().unwrap_or_else(|| tbl.to_string());
    o.push("{\"table\":");
    o.push(&json(&table));
    o.push(",\"op\":");
    o.push(&json(&r.get::<_, String>(2)));
    o.push(",\"pk\":");
    o.push(r.get(1));
    o.push(",\"data\":");
    o.push(r.get::<_, Option<&str>>(3).unwrap_or("null"));
    o.push(",\"row_version\":");
    o.push(&json(&r.get::<_, Option<i64>>(4)));
    o.push(",\"origin\":");
    o.push(&json(&r.get::<_, Option<String>>(5)));
    o.push(",\"changed_columns\":");
    o.push(&json(&r.get::<_, Option<Vec<String>>>(6)));
    o.push("}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_split_on_commas_outside_quotes_and_may_repeat() {
        let q = Params(vec![
            ("tables".into(), "orders, public.\"a,b\"".into()),
            ("tables".into(), "\"tab'le\"".into()),
        ]);
        assert_eq!(
            table_list(&q).unwrap(),
            vec!["orders", "public.\"a,b\"", "\"tab'le\""]
        );
        assert_eq!(table_list(&Params(vec![])), None);
    }
}
