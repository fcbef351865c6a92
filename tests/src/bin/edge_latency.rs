//! Commit-to-file latency for `bench/edge_sync`, with `tributary-edge run`
//! keeping an edge file in step.
//!
//! ```text
//!  edge_latency DB_URL FILE COMMITS
//!    one commit at a time: INSERT INTO lat (id) VALUES (i) at the hub, then
//!    read the edge file (busy timeout set, as an app does) every millisecond
//!    until row i is there; latency = seen - the commit returning (one clock)
//!    prints: commits=N p50_ms=… p99_ms=… max_ms=…
//! ```

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, file, n] = args.as_slice() else {
        eprintln!("usage: edge_latency DB_URL FILE COMMITS");
        std::process::exit(2);
    };
    let n: i64 = n.parse().expect("COMMITS is a number");
    let mut hub = postgres::Client::connect(url, postgres::NoTls).expect("the hub");
    let lite = rusqlite::Connection::open(file).expect("the edge file");
    lite.busy_timeout(Duration::from_secs(5)).unwrap();
    let start: i64 = hub
        .query_one("SELECT coalesce(max(id), 0) FROM lat", &[])
        .unwrap()
        .get(0);
    let mut lat = Vec::with_capacity(n as usize);
    for i in start + 1..=start + n {
        hub.execute("INSERT INTO lat (id) VALUES ($1)", &[&i])
            .unwrap();
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(30);
        loop {
            let seen: bool = lite
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM lat WHERE id = ?1)",
                    [i],
                    |r| r.get(0),
                )
                .unwrap_or(false);
            if seen {
                lat.push(committed.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                eprintln!("row {i} did not reach the edge file in 30 s");
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "commits={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        lat.len(),
        q(0.5),
        q(0.99),
        lat[lat.len() - 1]
    );
}
