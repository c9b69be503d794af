//! What dominates a ChargeOnce request, from the edge's own `Server-Timing`
//! header: sequential orders (one customer at a time, nothing queued), each
//! step's time averaged (the Workers clock ticks in whole milliseconds, so
//! a mean over many requests says more than a median), beside what the
//! client saw end to end, and the floor's end to end for the same load.

use crate::storm::order_request;
use crate::{Scenario, Target};
use std::collections::BTreeMap;
use std::time::Instant;

/// Mean milliseconds per step for one scenario.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Which path.
    pub scenario: Scenario,
    /// Requests averaged.
    pub requests: usize,
    /// Step name to mean ms, in the order the edge reported them.
    pub steps: Vec<(String, f64)>,
    /// Mean ms the client waited for ChargeOnce.
    pub client_ms: f64,
    /// Mean ms the client waited for the floor, same load.
    pub floor_ms: f64,
}

/// `read;dur=0, kv;dur=1` as pairs.
pub fn parse_server_timing(value: &str) -> Vec<(String, f64)> {
    value
        .split(',')
        .filter_map(|entry| {
            let mut parts = entry.split(';').map(str::trim);
            let name = parts.next().filter(|n| !n.is_empty())?;
            let dur = parts.find_map(|p| p.strip_prefix("dur="))?.parse().ok()?;
            Some((name.to_owned(), dur))
        })
        .collect()
}

/// Sends `n` orders to `chargeonce` and `floor` alternately, one at a time:
/// new keys for `Scenario::First`, one stored key for `Scenario::Replay`.
pub async fn profile(
    http: &reqwest::Client,
    chargeonce: &Target,
    floor: &Target,
    scenario: Scenario,
    n: usize,
) -> Result<Profile, String> {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let (mut client, mut floor_total) = (0.0, 0.0);
    let replay_key = format!("profile-replay-{}", std::process::id());
    if scenario == Scenario::Replay {
        crate::storm::send(http, chargeonce, &replay_key, "o-profile-replay").await?;
        crate::storm::send(http, floor, &replay_key, "o-profile-replay").await?;
    }
    for i in 0..n {
        let (key, order_ref) = match scenario {
            Scenario::Replay => (replay_key.clone(), "o-profile-replay".to_owned()),
            _ => (
                format!("profile-first-{}-{i:06}", std::process::id()),
                format!("o-profile-{i}"),
            ),
        };
        let t0 = Instant::now();
        let res = order_request(http, chargeonce, &key, &order_ref)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let timing = res
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .map(parse_server_timing)
            .unwrap_or_default();
        let status = res.status();
        let _ = res.bytes().await;
        client += t0.elapsed().as_secs_f64() * 1000.0;
        if !status.is_success() || timing.is_empty() {
            return Err(format!(
                "ChargeOnce answered {status} without Server-Timing while profiling"
            ));
        }
        for (name, ms) in timing {
            if !order.contains(&name) {
                order.push(name.clone());
            }
            *sums.entry(name).or_default() += ms;
        }
        let t0 = Instant::now();
        let res = order_request(http, floor, &key, &order_ref)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let _ = res.bytes().await;
        floor_total += t0.elapsed().as_secs_f64() * 1000.0;
    }
    let n_f = n as f64;
    Ok(Profile {
        scenario,
        requests: n,
        steps: order
            .into_iter()
            .map(|name| {
                let mean = sums[&name] / n_f;
                (name, mean)
            })
            .collect(),
        client_ms: client / n_f,
        floor_ms: floor_total / n_f,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_edges_header() {
        assert_eq!(
            parse_server_timing("read;dur=0, kv;dur=1, claim;dur=3"),
            vec![
                ("read".to_owned(), 0.0),
                ("kv".to_owned(), 1.0),
                ("claim".to_owned(), 3.0)
            ]
        );
        assert!(parse_server_timing("").is_empty());
        assert_eq!(parse_server_timing("x;desc=\"a\";dur=2.5")[0].1, 2.5);
    }
}
