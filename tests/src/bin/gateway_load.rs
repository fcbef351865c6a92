//! Load for `bench/gateway`, against a running gateway and its hub.
//!
//! ```text
//!  gateway_load latency BASE DB_URL TENANTS RATE SECS
//!    TENANTS clients, each its own token (sub t<i>, claim tenant t<i>), long-poll /v1/changes
//!    one writer: RATE single-row commits per second, round-robin over the tenants
//!    latency = the client's receipt - the writer's commit returning (one process, one clock)
//!  gateway_load full BASE TABLE PAGE
//!    every page of TABLE's Full payload; rows per second
//! ```
//!
//! The HS256 secret comes from TRIBUTARY_GATEWAY_JWT_SECRET.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn token(secret: &str, tenant: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": tenant, "tenant": tenant, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Commit instants by row id, written by the writer, read by the clients.
type Commits = Arc<Mutex<HashMap<i64, Instant>>>;

struct Shared {
    commits: Commits,
    latencies: Mutex<Vec<f64>>,
    delivered: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
}

async fn client(http: reqwest::Client, base: String, tok: String, sh: Arc<Shared>) {
    let mut since = 0i64;
    while !sh.stop.load(Ordering::Relaxed) {
        let url = format!("{base}/v1/changes?since={since}&wait=10&tables=orders");
        let r = match http.get(&url).bearer_auth(&tok).send().await {
            Ok(r) if r.status() == 200 => r,
            Ok(r) => {
                eprintln!("client: {}", r.status());
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => {
                eprintln!("client: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let body: Value = match r.json().await {
            Ok(b) => b,
            Err(_) => continue,
        };
        let got = Instant::now();
        if let Some(ch) = body["changes"].as_array() {
            for c in ch {
                let Some(id) = c["pk"]["id"].as_i64() else {
                    continue;
                };
                // Only commits made while measuring are in the map; their
                // answers count even when they arrive in the grace period.
                let at = sh.commits.lock().unwrap().remove(&id);
                if let Some(at) = at {
                    sh.latencies
                        .lock()
                        .unwrap()
                        .push(got.saturating_duration_since(at).as_secs_f64());
                    sh.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        since = body["version"].as_i64().unwrap_or(since);
    }
}

fn writer(db_url: String, tenants: usize, rate: u64, sh: Arc<Shared>) -> u64 {
    let mut c = postgres::Client::connect(&db_url, postgres::NoTls).unwrap();
    let st = c
        .prepare("INSERT INTO orders (tenant, amount) VALUES ($1, $2::float8) RETURNING id")
        .unwrap();
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let mut next = Instant::now();
    let mut written = 0u64;
    let mut i = 0usize;
    while !sh.stop.load(Ordering::Relaxed) {
        let tenant = format!("t{}", i % tenants);
        i += 1;
        let amount = i as f64;
        let id: i64 = c.query_one(&st, &[&tenant, &amount]).unwrap().get(0);
        if sh.measuring.load(Ordering::Relaxed) {
            sh.commits.lock().unwrap().insert(id, Instant::now());
            written += 1;
        }
        next += every;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    written
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency(base: String, db_url: String, tenants: usize, rate: u64, secs: u64) {
    let secret =
        std::env::var("TRIBUTARY_GATEWAY_JWT_SECRET").expect("TRIBUTARY_GATEWAY_JWT_SECRET");
    let sh = Arc::new(Shared {
        commits: Default::default(),
        latencies: Mutex::new(Vec::new()),
        delivered: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(tenants + 16)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..tenants {
        let t = token(&secret, &format!("t{i}"));
        tasks.push(tokio::spawn(client(
            http.clone(),
            base.clone(),
            t,
            sh.clone(),
        )));
    }
    // Let every client reach its long poll.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let w = {
        let sh = sh.clone();
        std::thread::spawn(move || writer(db_url, tenants, rate, sh))
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    sh.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    sh.measuring.store(false, Ordering::Relaxed);
    // The last commits' answers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sh.stop.store(true, Ordering::Relaxed);
    let written = w.join().unwrap();
    for t in tasks {
        t.abort();
    }
    let mut l = sh.latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "LATENCY clients={tenants} rate={rate}/s secs={secs} written={written} delivered={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        sh.delivered.load(Ordering::Relaxed),
        percentile(&l, 0.5) * 1000.0,
        percentile(&l, 0.99) * 1000.0,
        l.last().copied().unwrap_or(f64::NAN) * 1000.0
    );
}

async fn full(base: String, table: String, page: u32) {
    let secret =
        std::env::var("TRIBUTARY_GATEWAY_JWT_SECRET").expect("TRIBUTARY_GATEWAY_JWT_SECRET");
    let tok = token(&secret, "t0");
    let http = reqwest::Client::builder()
        .no_gzip()
        .no_zstd()
        .build()
        .unwrap();
    let start = Instant::now();
    let mut rows = 0u64;
    let mut bytes = 0u64;
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            None => format!("{base}/v1/tables/{table}/sync?fromVersion=0&pageSize={page}"),
            Some(n) => format!("{base}/v1/tables/{table}/sync?next={n}&pageSize={page}"),
        };
        let r = http.get(&url).bearer_auth(&tok).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let text = r.text().await.unwrap();
        bytes += text.len() as u64;
        // Counted, not parsed: the bench measures the download, as COPY's
        // side is not parsed either. The Metadata is the document's tail.
        rows += text.matches("\"$operation\"").count() as u64;
        let meta_at = text
            .rfind("\"Metadata\"")
            .expect("a payload ends with its Metadata");
        let meta: Value = serde_json::from_str(&format!("{{{}", &text[meta_at..])).unwrap();
        next = meta["Metadata"]["Sync"]["Next"]
            .as_str()
            .map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "FULL rows={rows} bytes={bytes} secs={s:.2} rows_per_s={:.0}",
        rows as f64 / s
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match a.get(1).map(String::as_str) {
        Some("latency") if a.len() == 7 => rt.block_on(latency(
            a[2].clone(),
            a[3].clone(),
            a[4].parse().unwrap(),
            a[5].parse().unwrap(),
            a[6].parse().unwrap(),
        )),
        Some("full") if a.len() == 5 => {
            rt.block_on(full(a[2].clone(), a[3].clone(), a[4].parse().unwrap()))
        }
        _ => {
            eprintln!(
                "usage: gateway_load latency BASE DB_URL TENANTS RATE SECS | full BASE TABLE PAGE"
            );
            std::process::exit(2);
        }
    }
}
