//! The gateway's own metrics, at its `/metrics` (Prometheus text):
//! requests by route and status, a latency histogram per route, and the
//! long polls waiting now.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct GatewayMetrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    pub waiting: AtomicI64,
    /// Long polls that began waiting without a read (see `watch`).
    pub waited_without_read: AtomicI64,
}

impl GatewayMetrics {
    pub fn record(&self, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((route.to_string(), status))
            .or_default() += 1;
        let mut l = self.latency.lock().expect("metrics lock");
        let h = l.entry(route.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let esc = |r: &str| r.replace('\\', "\\\\").replace('"', "\\\"");
        s.push_str("# HELP tributary_gateway_requests_total Requests answered, by route and status.\n# TYPE tributary_gateway_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                s,
                "tributary_gateway_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                esc(route)
            );
        }
        s.push_str("# HELP tributary_gateway_request_seconds Time to the response's head, by route.\n# TYPE tributary_gateway_request_seconds histogram\n");
        for (route, h) in self.latency.lock().expect("metrics lock").iter() {
            let r = esc(route);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "tributary_gateway_request_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                s,
                "tributary_gateway_request_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                s,
                "tributary_gateway_request_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                s,
                "tributary_gateway_request_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            s,
            "# HELP tributary_gateway_long_polls_waiting Long polls waiting for a change now.\n# TYPE tributary_gateway_long_polls_waiting gauge\ntributary_gateway_long_polls_waiting {}",
            self.waiting.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP tributary_gateway_long_polls_without_read_total Long polls that began waiting without a read: they came back with the version just given, and the watcher had seen no later one.\n# TYPE tributary_gateway_long_polls_without_read_total counter\ntributary_gateway_long_polls_without_read_total {}",
            self.waited_without_read.load(Ordering::Relaxed)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_latencies_are_counted_per_route() {
        let m = GatewayMetrics::default();
        m.record("/v1/changes", 200, 0.02);
        m.record("/v1/changes", 200, 3.0);
        m.record("/v1/schema", 401, 0.001);
        let out = m.render();
        assert!(
            out.contains(
                "tributary_gateway_requests_total{route=\"/v1/changes\",status=\"200\"} 2"
            ),
            "{out}"
        );
        assert!(
            out.contains("tributary_gateway_requests_total{route=\"/v1/schema\",status=\"401\"} 1")
        );
        assert!(out.contains(
            "tributary_gateway_request_seconds_bucket{route=\"/v1/changes\",le=\"0.025\"} 1"
        ));
        assert!(out.contains(
            "tributary_gateway_request_seconds_bucket{route=\"/v1/changes\",le=\"5\"} 2"
        ));
        assert!(out.contains("tributary_gateway_long_polls_waiting 0"));
    }
}
