//! The edge's settings, parsed from the Worker's environment variables with
//! defaults and bounds, so a bad deployment fails loudly and early. Every
//! span is a [`Duration`], whatever unit its variable is written in.

use crate::backend::BackendKind;
use crate::order_record::OrderPolicy;
use crate::record::KeyPolicy;
use std::time::Duration;
use thiserror::Error;

/// Workers KV refuses an `expirationTtl` below 60 seconds.
pub const KV_MIN_TTL: Duration = Duration::from_secs(60);

/// How long Stripe's Search API may lag behind a write. Stripe: "Don't use
/// search for read-after-write flows … Under normal operating conditions,
/// data is searchable in under 1 minute. Propagation of new or updated data
/// could be delayed during an outage." (<https://docs.stripe.com/search>,
/// "Data freshness"). Two minutes leaves room for a slow minute.
pub const STRIPE_LOOKUP_SETTLE: Duration = Duration::from_secs(120);

/// How long Stripe deduplicates an idempotency key: "You can remove keys
/// from the system automatically after they're at least 24 hours old. We
/// generate a new request if a key is reused after the original is pruned."
/// (<https://docs.stripe.com/idempotency>).
pub const STRIPE_KEY_RETENTION: Duration = Duration::from_secs(86_400);

/// The edge's settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EdgeConfig {
    /// Which backend API to speak (`PAYMENT_BACKEND`).
    pub backend: BackendKind,
    /// Where the backend is (`PAYMENT_BACKEND_URL`).
    pub backend_url: String,
    /// How long a final result is kept and replayed, and how long an
    /// unresolved key is reconciled before it becomes a tombstone
    /// (`IDEMPOTENCY_TTL_SECS`).
    pub answer_ttl: Duration,
    /// How long a claim holds the key (`CLAIM_LEASE_SECS`).
    pub lease: Duration,
    /// How long the edge waits for each backend call (`BACKEND_TIMEOUT_MS`).
    pub backend_timeout: Duration,
    /// How long after a forward ended a lookup's "nothing found" is
    /// conclusive (`LOOKUP_SETTLE_SECS`): at least the backend's lookup lag.
    pub lookup_settle: Duration,
    /// How long the backend itself deduplicates a key, so that forwarding it
    /// again is safe (`BACKEND_KEY_RETENTION_SECS`); zero when the backend's
    /// own deduplication is not relied on.
    pub backend_key_retention: Duration,
    /// Browser origins allowed to call the API (`ALLOWED_ORIGINS`, comma separated).
    pub allowed_origins: Vec<String>,
    /// The payment simulator whose `/__sim/*` test hooks the Worker passes
    /// through for the demo page (`DEV_SIMULATOR_URL`). Only `make dev` and
    /// the tests set it, with `--var`; wrangler.toml never does, so a
    /// deployed Worker has no such routes.
    pub dev_simulator_url: Option<String>,
    /// Whether the Worker issues order tokens for the demo shop's catalogue
    /// (`DEMO_STOREFRONT=true`), standing in for a storefront's server. Set
    /// with `--var` by `make dev` and the tests only, like
    /// `DEV_SIMULATOR_URL`.
    pub demo_storefront: bool,
    /// How many refused attempts (declines, failed authentication) one
    /// order may have while a token that authorised one is alive
    /// (`MAX_ATTEMPTS_PER_ORDER`).
    pub max_attempts_per_order: u32,
    /// Whether the Worker's rate limits are asked (`RATE_LIMITS`, `on` by
    /// default): requests per client address, and forwards per customer.
    /// `off` is for load tests, and for a deployment behind rate limits of
    /// its own.
    pub rate_limits: bool,
}

/// A setting the edge cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable holds a value of the wrong form.
    #[error("{name}={value:?} is not valid: {expected}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// The lease would run out while a forwarded request may still be in
    /// flight, letting a second worker forward the same key concurrently.
    /// (A reconciling request renews its claim before it forwards, so one
    /// backend timeout is all a lease has to cover.)
    #[error("CLAIM_LEASE_SECS ({} s) must be longer than BACKEND_TIMEOUT_MS ({} ms)", .lease.as_secs(), .timeout.as_millis())]
    LeaseShorterThanTimeout {
        /// The lease.
        lease: Duration,
        /// The timeout.
        timeout: Duration,
    },
}

impl ConfigError {
    /// What a client may be told: the setting and what it should hold,
    /// never its value (a URL may carry credentials). The log gets
    /// [`std::fmt::Display`], value included.
    pub fn public_detail(&self) -> String {
        match self {
            Self::Invalid { name, expected, .. } => format!(
                "the edge's setting {name} is not valid (expected {expected}); the Worker's log has its value"
            ),
            Self::LeaseShorterThanTimeout { .. } => {
                "the edge's settings CLAIM_LEASE_SECS and BACKEND_TIMEOUT_MS are not valid: the lease must be longer than the timeout".to_owned()
            }
        }
    }
}

impl EdgeConfig {
    /// Reads the settings through `var`, which returns a variable's value if set.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let backend = match var("PAYMENT_BACKEND").as_deref().map(str::trim) {
            None | Some("" | "stripe") => BackendKind::Stripe,
            Some("passthrough") => BackendKind::Passthrough,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "PAYMENT_BACKEND",
                    value: other.into(),
                    expected: "\"stripe\" or \"passthrough\"",
                })
            }
        };
        let url = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match var(name)
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
            {
                Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) => {
                    Err(ConfigError::Invalid {
                        name,
                        value: u,
                        expected: "an http:// or https:// URL",
                    })
                }
                other => Ok(other),
            }
        };
        let backend_url =
            url("PAYMENT_BACKEND_URL")?.unwrap_or_else(|| "https://api.stripe.com".into());
        // `min` is 1 for spans that must not be zero, 0 where zero means "none".
        let number =
            |name: &'static str, default: u64, min: u64| -> Result<u64, ConfigError> {
                match var(name) {
                    None => Ok(default),
                    Some(v) if v.trim().is_empty() => Ok(default),
                    Some(v) => v.trim().parse::<u64>().ok().filter(|n| *n >= min).ok_or(
                        ConfigError::Invalid {
                            name,
                            value: v,
                            expected: if min == 0 {
                                "a whole number"
                            } else {
                                "a whole number greater than 0"
                            },
                        },
                    ),
                }
            };
        let secs = |name, default, min| number(name, default, min).map(Duration::from_secs);
        let (settle_default, retention_default) = match backend {
            BackendKind::Stripe => (STRIPE_LOOKUP_SETTLE, STRIPE_KEY_RETENTION),
            // A passthrough backend's lookup must be read-after-write, and
            // nothing is known of its own deduplication.
            BackendKind::Passthrough => (Duration::ZERO, Duration::ZERO),
        };
        let dev_simulator_url =
            url("DEV_SIMULATOR_URL")?.map(|u| u.trim_end_matches('/').to_owned());
        // A two-valued setting: `on` or `off` (and `default` when unset).
        let switch = |name: &'static str,
                      [on, off]: [&str; 2],
                      expected: &'static str,
                      default: bool|
         -> Result<bool, ConfigError> {
            match var(name).as_deref().map(str::trim) {
                None | Some("") => Ok(default),
                Some(v) if v == on => Ok(true),
                Some(v) if v == off => Ok(false),
                Some(other) => Err(ConfigError::Invalid {
                    name,
                    value: other.into(),
                    expected,
                }),
            }
        };
        let demo_storefront = switch(
            "DEMO_STOREFRONT",
            ["true", "false"],
            "\"true\" or \"false\"",
            false,
        )?;
        let rate_limits = switch("RATE_LIMITS", ["on", "off"], "\"on\" or \"off\"", true)?;
        let config = Self {
            rate_limits,
            dev_simulator_url,
            demo_storefront,
            backend,
            backend_url,
            answer_ttl: secs("IDEMPOTENCY_TTL_SECS", 86_400, 1)?.max(KV_MIN_TTL),
            lease: secs("CLAIM_LEASE_SECS", 30, 1)?,
            backend_timeout: Duration::from_millis(number("BACKEND_TIMEOUT_MS", 10_000, 1)?),
            lookup_settle: secs("LOOKUP_SETTLE_SECS", settle_default.as_secs(), 0)?,
            backend_key_retention: secs(
                "BACKEND_KEY_RETENTION_SECS",
                retention_default.as_secs(),
                0,
            )?,
            max_attempts_per_order: number("MAX_ATTEMPTS_PER_ORDER", 5, 1)?
                .try_into()
                .unwrap_or(u32::MAX),
            allowed_origins: var("ALLOWED_ORIGINS")
                .unwrap_or_default()
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        };
        if config.lease <= config.backend_timeout {
            return Err(ConfigError::LeaseShorterThanTimeout {
                lease: config.lease,
                timeout: config.backend_timeout,
            });
        }
        Ok(config)
    }

    /// The spans the key's record runs on.
    pub fn key_policy(&self) -> KeyPolicy {
        KeyPolicy {
            lease: self.lease,
            answer_ttl: self.answer_ttl,
            backend_timeout: self.backend_timeout,
            lookup_settle: self.lookup_settle,
            backend_key_retention: self.backend_key_retention,
        }
    }

    /// What the order's record runs on.
    pub fn order_policy(&self) -> OrderPolicy {
        OrderPolicy {
            answer_ttl: self.answer_ttl,
            max_refused: self.max_attempts_per_order,
        }
    }

    /// Whether a browser at `origin` may call the API.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == "*" || o == origin)
    }

    /// Whether a browser at `origin` may place an order, or ask about one,
    /// at the Worker whose own origin is `own_origin`: its own pages always
    /// may, other sites only if listed. Requests without an `Origin` come
    /// from servers and tools, not from a browser on another site, and are
    /// not refused here.
    pub fn accepts_requests_from(&self, origin: Option<&str>, own_origin: &str) -> bool {
        origin.is_none_or(|o| o == own_origin || self.allows_origin(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<EdgeConfig, ConfigError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EdgeConfig::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.backend, BackendKind::Stripe);
        assert_eq!(c.backend_url, "https://api.stripe.com");
        assert_eq!(
            (c.answer_ttl, c.lease, c.backend_timeout),
            (
                Duration::from_secs(86_400),
                Duration::from_secs(30),
                Duration::from_millis(10_000)
            )
        );
        assert_eq!(
            (c.lookup_settle, c.backend_key_retention),
            (STRIPE_LOOKUP_SETTLE, STRIPE_KEY_RETENTION)
        );
        assert!(c.allowed_origins.is_empty());
        assert_eq!(
            c.dev_simulator_url, None,
            "no simulator routes unless asked for"
        );
    }

    #[test]
    fn orders_may_come_from_the_workers_own_origin_listed_origins_or_no_browser() {
        let c = config(&[(
            "ALLOWED_ORIGINS",
            "https://shop.example, https://b.example/",
        )])
        .unwrap();
        let own = "https://edge.example";
        assert!(c.accepts_requests_from(Some(own), own));
        assert!(c.accepts_requests_from(Some("https://shop.example"), own));
        assert!(c.accepts_requests_from(Some("https://b.example"), own));
        assert!(c.accepts_requests_from(None, own));
        assert!(!c.accepts_requests_from(Some("https://evil.example"), own));
        assert!(!c.accepts_requests_from(Some("null"), own));
    }

    #[test]
    fn the_demo_storefront_is_off_unless_asked_for() {
        assert!(!config(&[]).unwrap().demo_storefront);
        assert!(
            config(&[("DEMO_STOREFRONT", "true")])
                .unwrap()
                .demo_storefront
        );
        assert!(config(&[("DEMO_STOREFRONT", "yes")]).is_err());
    }

    #[test]
    fn the_dev_simulator_url_must_be_a_url() {
        let c = config(&[("DEV_SIMULATOR_URL", "http://127.0.0.1:8790/")]).unwrap();
        assert_eq!(
            c.dev_simulator_url.as_deref(),
            Some("http://127.0.0.1:8790")
        );
        assert!(config(&[("DEV_SIMULATOR_URL", "127.0.0.1:8790")]).is_err());
    }

    #[test]
    fn ttl_never_goes_below_kvs_minimum() {
        assert_eq!(
            config(&[("IDEMPOTENCY_TTL_SECS", "5")]).unwrap().answer_ttl,
            KV_MIN_TTL
        );
    }

    #[test]
    fn a_passthrough_lookup_settles_at_once_and_its_keys_are_not_relied_on() {
        let c = config(&[("PAYMENT_BACKEND", "passthrough")]).unwrap();
        assert_eq!(
            (c.lookup_settle, c.backend_key_retention),
            (Duration::ZERO, Duration::ZERO)
        );
        let c = config(&[
            ("LOOKUP_SETTLE_SECS", "0"),
            ("BACKEND_KEY_RETENTION_SECS", "3600"),
        ])
        .unwrap();
        assert_eq!(
            (c.lookup_settle, c.backend_key_retention),
            (Duration::ZERO, Duration::from_secs(3_600))
        );
        assert!(config(&[("LOOKUP_SETTLE_SECS", "-1")]).is_err());
        assert!(config(&[("CLAIM_LEASE_SECS", "0")]).is_err());
    }

    #[test]
    fn an_order_may_be_refused_five_times_unless_told_otherwise() {
        assert_eq!(config(&[]).unwrap().order_policy().max_refused, 5);
        let c = config(&[("MAX_ATTEMPTS_PER_ORDER", "2")]).unwrap();
        assert_eq!(c.order_policy().max_refused, 2);
        assert!(config(&[("MAX_ATTEMPTS_PER_ORDER", "0")]).is_err());
    }

    #[test]
    fn rate_limits_are_on_unless_turned_off() {
        assert!(config(&[]).unwrap().rate_limits);
        assert!(!config(&[("RATE_LIMITS", "off")]).unwrap().rate_limits);
        assert!(config(&[("RATE_LIMITS", "no")]).is_err());
    }

    #[test]
    fn a_client_is_told_the_setting_but_never_its_value() {
        let err =
            config(&[("PAYMENT_BACKEND_URL", "ftp://user:hunter2@backend.example")]).unwrap_err();
        assert!(err.to_string().contains("hunter2"), "the log has it: {err}");
        let told = err.public_detail();
        assert!(told.contains("PAYMENT_BACKEND_URL"), "{told}");
        assert!(!told.contains("hunter2"), "{told}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = config(&[("CLAIM_LEASE_SECS", "soon")]).unwrap_err();
        assert!(err.to_string().contains("CLAIM_LEASE_SECS"), "{err}");
        assert!(config(&[("PAYMENT_BACKEND", "paypal")]).is_err());
        assert!(config(&[("PAYMENT_BACKEND_URL", "ftp://x")]).is_err());
    }

    #[test]
    fn lease_must_outlast_the_backend_timeout() {
        let err = config(&[("CLAIM_LEASE_SECS", "10")]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::LeaseShorterThanTimeout {
                lease: Duration::from_secs(10),
                timeout: Duration::from_millis(10_000)
            }
        );
        assert_eq!(
            err.to_string(),
            "CLAIM_LEASE_SECS (10 s) must be longer than BACKEND_TIMEOUT_MS (10000 ms)"
        );
    }

    #[test]
    fn origins_are_an_exact_allow_list() {
        let c = config(&[(
            "ALLOWED_ORIGINS",
            "https://shop.example, http://127.0.0.1:8787/",
        )])
        .unwrap();
        assert!(c.allows_origin("https://shop.example"));
        assert!(c.allows_origin("http://127.0.0.1:8787"));
        assert!(!c.allows_origin("https://evil.example"));
    }
}
