//! Runs `wrk` (Debian's, with `bench/wrk/orders.lua`) and reads its report.

use chargeonce_tests::stack::workspace_root;
use std::process::Command;

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Requests answered.
    pub requests: u64,
    /// Answers that were not 2xx or 3xx (409s on the conflict path).
    pub non_2xx: u64,
}

/// One load: where, what, how hard.
pub struct Load<'a> {
    /// Base URL.
    pub url: &'a str,
    /// Path orders are POSTed to.
    pub path: &'a str,
    /// `unique` (a new key per request, `key` its prefix) or `same`.
    pub mode: &'a str,
    /// The key, or the prefix of the keys.
    pub key: &'a str,
    /// The JSON body.
    pub body: &'a str,
    /// A file of bodies, one per line, sent in turn instead of `body`.
    pub bodies: Option<&'a std::path::Path>,
    /// The `Authorization` value ("" for none).
    pub authorization: &'a str,
    /// Open connections.
    pub connections: usize,
    /// Duration.
    pub secs: u64,
}

/// One run of `load.secs` seconds on one thread.
pub fn run(load: &Load<'_>) -> Result<Run, String> {
    let script = workspace_root().join("bench/wrk/orders.lua");
    let output = Command::new("wrk")
        .args(["-t1", &format!("-c{}", load.connections)])
        .arg(format!("-d{}s", load.secs))
        .args(["--latency", "--timeout", "30s", "-s"])
        .arg(&script)
        .arg(format!("{}{}", load.url, load.path))
        .args([
            "--",
            load.mode,
            load.key,
            load.body,
            load.authorization,
            load.path,
        ])
        .args(load.bodies)
        .output()
        .map_err(|e| format!("could not run wrk (make bench installs it): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse(&text).ok_or_else(|| format!("could not read wrk's report:\n{text}"))
}

/// Reads wrk's `--latency` report.
pub fn parse(text: &str) -> Option<Run> {
    let mut run = Run {
        rps: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        requests: 0,
        non_2xx: 0,
    };
    let mut answered = None;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(v)) => run.p50_ms = millis(v)?,
            (Some("99%"), Some(v)) => run.p99_ms = millis(v)?,
            (Some("Requests/sec:"), Some(v)) => run.rps = v.parse().ok()?,
            (Some(n), Some("requests")) => answered = Some(n.parse().ok()?),
            _ if line.starts_with("Non-2xx or 3xx responses:") => {
                run.non_2xx = line.rsplit(' ').next()?.parse().ok()?;
            }
            _ => {}
        }
    }
    run.requests = answered?;
    if run.requests == 0 && !run.rps.is_nan() {
        // Nothing answered within the run (a contender that holds every
        // duplicate until the first finishes): wrk's latencies are zeros
        // then, not measurements.
        run.p50_ms = f64::NAN;
        run.p99_ms = f64::NAN;
        return Some(run);
    }
    (!run.rps.is_nan() && !run.p50_ms.is_nan() && !run.p99_ms.is_nan()).then_some(run)
}

/// `812.00us`, `1.23ms`, `2.01s` or `1.50m` in milliseconds.
fn millis(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 5s test @ http://127.0.0.1:1/v1/orders
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms    1.01ms  20.01ms   90.00%
  Latency Distribution
     50%  812.00us
     75%    2.50ms
     90%    3.00ms
     99%    1.20s
  7012 requests in 5.00s, 3.00MB read
  Non-2xx or 3xx responses: 7011
Requests/sec:   1402.40
Transfer/sec:    600.00KB
";

    #[test]
    fn reads_the_latency_report() {
        let run = parse(REPORT).unwrap();
        assert!((run.p50_ms - 0.812).abs() < 1e-9);
        assert!((run.p99_ms - 1200.0).abs() < 1e-9);
        assert!((run.rps - 1402.4).abs() < 1e-9);
        assert_eq!((run.requests, run.non_2xx), (7012, 7011));
    }

    #[test]
    fn a_run_nothing_answered_has_no_latencies() {
        let report = "  Latency Distribution\n     50%    0.00us\n     99%    0.00us\n  0 requests in 3.00s, 0.00B read\nRequests/sec:      0.00\n";
        let run = parse(report).unwrap();
        assert_eq!((run.requests, run.rps), (0, 0.0));
        assert!(run.p50_ms.is_nan() && run.p99_ms.is_nan());
    }

    #[test]
    fn a_report_without_latencies_is_not_read() {
        assert!(parse("Requests/sec: 5").is_none());
    }
}
