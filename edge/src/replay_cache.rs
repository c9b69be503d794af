//! The Workers KV copy of final results: a fast, eventually consistent cache
//! in front of the Durable Object, never a lock.
//!
//! A hit is safe to act on because a final result never changes once stored
//! (see `KeyRecord::complete`). A miss, a stale entry or a KV failure only
//! means asking the Durable Object, which holds the authoritative record.

use chargeonce_protocol::{flow::CacheWrite, Completed};
use worker::{console_error, Env, KvStore};

/// The KV namespace binding in wrangler.toml.
pub const BINDING: &str = "REPLAYS";

/// The namespace, or `None` (with a log line) if the binding is missing.
pub fn store(env: &Env) -> Option<KvStore> {
    env.kv(BINDING)
        .map_err(|e| console_error!("KV binding {BINDING} unavailable: {e}"))
        .ok()
}

/// Looks up a cached final result. Failures are logged and read as a miss.
pub async fn get(kv: &KvStore, name: &str) -> Option<Completed> {
    match kv.get(name).text().await {
        Ok(Some(text)) => serde_json::from_str(&text)
            .map_err(|e| console_error!("unreadable KV entry {name}: {e}"))
            .ok(),
        Ok(None) => None,
        Err(e) => {
            console_error!("KV read of {name} failed: {e}");
            None
        }
    }
}

/// Caches a final result for its TTL (at least KV's 60 s minimum, which
/// `EdgeConfig` guarantees). Failures are logged: the Durable Object still
/// holds the result, so nothing is lost.
pub async fn put(kv: KvStore, write: CacheWrite) {
    let CacheWrite {
        name,
        completed,
        ttl,
    } = write;
    let json = match serde_json::to_string(&completed) {
        Ok(json) => json,
        Err(e) => return console_error!("could not encode KV entry {name}: {e}"),
    };
    let put = match kv.put(&name, json) {
        Ok(put) => put.expiration_ttl(ttl.as_secs()).execute().await,
        Err(e) => Err(e),
    };
    if let Err(e) = put {
        console_error!("KV write of {name} failed: {e}");
    }
}
