//! Identifier minting for PaymentIntents, their client secrets and `Request-Id` headers.
//!
//! Ids must be unique across every simulator in the process (the tests run many side by side) and
//! across processes started one after the other (a demo restarts paysim), but they need not be
//! unpredictable: nothing here is a secret. So an id is a per-process seed followed by a
//! process-wide counter, both in base 62, which keeps Stripe's alphanumeric look without an RNG.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Base-62 digits of the per-process seed; 62^10 ≈ 8·10^17 keeps collisions between runs unlikely.
const SEED_DIGITS: usize = 10;
/// Base-62 digits of the counter; 62^14 outlasts any u64 the counter can reach in practice.
const COUNTER_DIGITS: usize = 14;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new PaymentIntent id: `pi_` and 24 alphanumerics.
pub(crate) fn payment_intent_id() -> String {
    format!("pi_{}", unique_suffix())
}

/// A new client secret for the PaymentIntent `id`: `{id}_secret_` and 24 alphanumerics, the
/// shape of Stripe's (`pi_..._secret_...`).
pub(crate) fn client_secret(id: &str) -> String {
    format!("{id}_secret_{}", unique_suffix())
}

/// A new request id: `req_` and 24 alphanumerics.
pub(crate) fn request_id() -> String {
    format!("req_{}", unique_suffix())
}

fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = String::with_capacity(SEED_DIGITS + COUNTER_DIGITS);
    push_base62(&mut out, process_seed(), SEED_DIGITS);
    push_base62(&mut out, n, COUNTER_DIGITS);
    out
}

fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        // A clock before 1970 only costs uniqueness across restarts, never within this process.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 40)
    })
}

/// Appends exactly `digits` base-62 digits of `value` (modulo 62^digits), most significant first.
fn push_base62(out: &mut String, mut value: u64, digits: usize) {
    let mut buf = vec![b'0'; digits];
    for slot in buf.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    out.extend(buf.into_iter().map(char::from));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_intent_ids_look_like_stripes_and_never_repeat() {
        let a = payment_intent_id();
        let b = payment_intent_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            let suffix = id.strip_prefix("pi_").expect("pi_ prefix");
            assert_eq!(suffix.len(), 24, "{id}");
            assert!(suffix.bytes().all(|c| c.is_ascii_alphanumeric()), "{id}");
        }
    }

    #[test]
    fn client_secrets_belong_to_their_intent_and_never_repeat() {
        let id = payment_intent_id();
        let (a, b) = (client_secret(&id), client_secret(&id));
        assert_ne!(a, b);
        let suffix = a.strip_prefix(&format!("{id}_secret_")).expect("id prefix");
        assert_eq!(suffix.len(), 24, "{a}");
        assert!(suffix.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
    }

    #[test]
    fn base62_is_fixed_width() {
        let mut s = String::new();
        push_base62(&mut s, 61, 3);
        push_base62(&mut s, 62, 3);
        assert_eq!(s, "00z010");
    }
}
