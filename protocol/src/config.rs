//! The edge's settings, parsed from the Worker's environment variables with
//! defaults and bounds, so a bad deployment fails loudly and early.

use crate::backend::BackendKind;
use thiserror::Error;

/// Workers KV refuses an `expirationTtl` below 60 seconds.
pub const KV_MIN_TTL_SECS: u64 = 60;

/// The edge's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// Which backend API to speak (`PAYMENT_BACKEND`).
    pub backend: BackendKind,
    /// Where the backend is (`PAYMENT_BACKEND_URL`).
    pub backend_url: String,
    /// How long a final result is kept and replayed (`IDEMPOTENCY_TTL_SECS`).
    pub ttl_secs: u64,
    /// How long a claim holds the key (`CLAIM_LEASE_SECS`).
    pub lease_secs: u64,
    /// How long the edge waits for the backend (`BACKEND_TIMEOUT_MS`).
    pub backend_timeout_ms: u64,
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
    #[error("CLAIM_LEASE_SECS ({lease_secs} s) must be longer than BACKEND_TIMEOUT_MS ({timeout_ms} ms)")]
    LeaseShorterThanTimeout {
        /// The lease.
        lease_secs: u64,
        /// The timeout.
        timeout_ms: u64,
    },
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
        let number =
            |name: &'static str, default: u64| -> Result<u64, ConfigError> {
                match var(name) {
                    None => Ok(default),
                    Some(v) if v.trim().is_empty() => Ok(default),
                    Some(v) => v.trim().parse::<u64>().ok().filter(|n| *n > 0).ok_or(
                        ConfigError::Invalid {
                            name,
                            value: v,
                            expected: "a whole number greater than 0",
                        },
                    ),
                }
            };
        let dev_simulator_url =
            url("DEV_SIMULATOR_URL")?.map(|u| u.trim_end_matches('/').to_owned());
        let demo_storefront = match var("DEMO_STOREFRONT").as_deref().map(str::trim) {
            None | Some("" | "false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "DEMO_STOREFRONT",
                    value: other.into(),
                    expected: "\"true\" or \"false\"",
                })
            }
        };
        let config = Self {
            dev_simulator_url,
            demo_storefront,
            backend,
            backend_url,
            ttl_secs: number("IDEMPOTENCY_TTL_SECS", 86_400)?.max(KV_MIN_TTL_SECS),
            lease_secs: number("CLAIM_LEASE_SECS", 30)?,
            backend_timeout_ms: number("BACKEND_TIMEOUT_MS", 10_000)?,
            allowed_origins: var("ALLOWED_ORIGINS")
                .unwrap_or_default()
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        };
        if config.lease_secs * 1000 <= config.backend_timeout_ms {
            return Err(ConfigError::LeaseShorterThanTimeout {
                lease_secs: config.lease_secs,
                timeout_ms: config.backend_timeout_ms,
            });
        }
        Ok(config)
    }

    /// Whether a browser at `origin` may call the API.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == "*" || o == origin)
    }

    /// Whether a browser at `origin` may place an order at the Worker whose
    /// own origin is `own_origin`: its own pages always may, other sites only
    /// if listed. Requests without an `Origin` come from servers and tools,
    /// not from a browser on another site, and are not refused here.
    pub fn may_post_from(&self, origin: Option<&str>, own_origin: &str) -> bool {
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
            (c.ttl_secs, c.lease_secs, c.backend_timeout_ms),
            (86_400, 30, 10_000)
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
        assert!(c.may_post_from(Some(own), own));
        assert!(c.may_post_from(Some("https://shop.example"), own));
        assert!(c.may_post_from(Some("https://b.example"), own));
        assert!(c.may_post_from(None, own));
        assert!(!c.may_post_from(Some("https://evil.example"), own));
        assert!(!c.may_post_from(Some("null"), own));
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
            config(&[("IDEMPOTENCY_TTL_SECS", "5")]).unwrap().ttl_secs,
            60
        );
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
        assert_eq!(
            config(&[("CLAIM_LEASE_SECS", "10")]).unwrap_err(),
            ConfigError::LeaseShorterThanTimeout {
                lease_secs: 10,
                timeout_ms: 10_000
            }
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
