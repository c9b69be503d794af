//! Idempotency keys: parsing the `Idempotency-Key` header once into a type that
//! cannot hold an invalid key, and scoping a key to the customer it belongs to.
//!
//! This module owns the key's syntax. It does not decide what a key means for
//! a request (see [`crate::record`]) and it never sees the body.

use sha2::{Digest, Sha256};
use std::fmt;
use thiserror::Error;

/// The longest key we accept, in characters (as Stripe and the IETF draft do).
pub const MAX_KEY_LEN: usize = 255;

/// The shortest key we accept. The IETF draft warns that guessable keys let
/// one client reach another's stored responses; 16 characters is the floor
/// below which a key cannot carry even 64 bits of randomness in hex. A UUID
/// (36 characters), which the widget sends, is well above it.
pub const MIN_KEY_LEN: usize = 16;

/// A validated idempotency key: 16 to 255 visible ASCII characters.
///
/// Constructed only by [`IdempotencyKey::parse`], so holding one proves the
/// header was well formed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Why an `Idempotency-Key` header was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The request had no `Idempotency-Key` header.
    #[error("the Idempotency-Key header is required")]
    Missing,
    /// The header was present but held no key (`""` or only spaces).
    #[error("the Idempotency-Key header is empty")]
    Empty,
    /// The key is shorter than [`MIN_KEY_LEN`]: too easy to guess.
    #[error("the Idempotency-Key is {len} characters long; it must have at least {MIN_KEY_LEN}, such as a UUID, so that it cannot be guessed")]
    TooShort {
        /// The key's length in bytes.
        len: usize,
    },
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("the Idempotency-Key is {len} characters long; the limit is {MAX_KEY_LEN}")]
    TooLong {
        /// The key's length in bytes.
        len: usize,
    },
    /// The key holds a byte that is not visible ASCII (0x21 to 0x7E).
    #[error("the Idempotency-Key may hold only visible ASCII characters; byte {byte:#04x} at position {position} is not one")]
    InvalidCharacter {
        /// The offending byte.
        byte: u8,
        /// Its position in the key (after any quotes were removed).
        position: usize,
    },
    /// The header opened a quoted string (`"...`) and did not close it properly.
    #[error("the Idempotency-Key opens a quoted string that is not closed or holds a bad escape")]
    BadQuoting,
    /// The header was sent more than once (runtimes join repeats as `a, b`).
    #[error("the Idempotency-Key header was sent more than once")]
    Repeated,
}

impl IdempotencyKey {
    /// Parses the header value, accepting both the bare Stripe form
    /// (`Idempotency-Key: 8e03978e-40d5`) and the IETF draft's structured-field
    /// string form (`Idempotency-Key: "8e03978e-40d5"`, with `\"` and `\\`
    /// escapes). `None` means the header was absent.
    pub fn parse(header: Option<&str>) -> Result<Self, KeyError> {
        let raw = header.ok_or(KeyError::Missing)?;
        // HTTP allows optional whitespace around a field value.
        let raw = raw.trim_matches([' ', '\t']);
        let key = match raw.strip_prefix('"') {
            Some(quoted) => unquote(quoted)?,
            None => raw.to_owned(),
        };
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong { len: key.len() });
        }
        if let Some((position, &byte)) = key
            .as_bytes()
            .iter()
            .enumerate()
            .find(|(_, b)| !b.is_ascii_graphic())
        {
            // Runtimes join a repeated header with ", "; a key cannot hold a
            // space, so this shape can only mean the header came twice.
            if key[position..].starts_with(' ') && key[..position].ends_with(',') {
                return Err(KeyError::Repeated);
            }
            return Err(KeyError::InvalidCharacter { byte, position });
        }
        // After the character check, so a short key with a bad byte (or two
        // joined headers) is told about the byte, which is the real mistake.
        if key.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { len: key.len() });
        }
        Ok(Self(key))
    }

    /// The key as sent, without quotes: this is what is echoed to the
    /// client. The backend gets [`ScopedKey::backend_key`] instead.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Undoes a structured-field string (RFC 8941 §3.3.3); `rest` follows the
/// opening quote.
fn unquote(rest: &str) -> Result<String, KeyError> {
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('"' | '\\')) => out.push(escaped),
                _ => return Err(KeyError::BadQuoting),
            },
            '"' => {
                // The closing quote must end the value.
                return if chars.next().is_none() {
                    Ok(out)
                } else {
                    Err(KeyError::BadQuoting)
                };
            }
            other => out.push(other),
        }
    }
    Err(KeyError::BadQuoting)
}

/// The backend key of the scoped key stored under `storage_name`
/// ([`ScopedKey::backend_key`]), for the key's object, which knows its key
/// only by that name.
pub fn backend_key_of(storage_name: &str) -> String {
    format!("chargeonce_{storage_name}")
}

/// The scope used when a request names no customer. It cannot collide with a
/// customer id because customer ids are never empty and the scope is
/// length-prefixed when hashed.
pub const ANONYMOUS_SCOPE: &str = "";

/// An idempotency key bound to the customer who sent it, so that one customer
/// reusing another's key never reaches the other's stored response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopedKey {
    scope: String,
    key: IdempotencyKey,
}

impl ScopedKey {
    /// Binds `key` to `customer` (or to the anonymous scope when `None`).
    pub fn new(customer: Option<&str>, key: IdempotencyKey) -> Self {
        Self {
            scope: customer.unwrap_or(ANONYMOUS_SCOPE).to_owned(),
            key,
        }
    }

    /// The idempotency key itself.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The name under which this key's record is stored (the Durable Object
    /// name and the KV key): a hex SHA-256 of the length-prefixed scope and key.
    /// Hashing keeps names short and free of separators, and the length prefix
    /// keeps `("ab", "c")` and `("a", "bc")` apart.
    pub fn storage_name(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update((self.scope.len() as u64).to_be_bytes());
        hasher.update(self.scope.as_bytes());
        hasher.update(self.key.as_str().as_bytes());
        hex::encode(hasher.finalize())
    }

    /// The `Idempotency-Key` sent to the payment backend: derived from the
    /// scope as well as the key, so that two customers who send the same key
    /// are two keys at the backend too (the backend's deduplication and the
    /// edge's reconciliation lookup must never join them).
    pub fn backend_key(&self) -> String {
        backend_key_of(&self.storage_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<IdempotencyKey, KeyError> {
        IdempotencyKey::parse(Some(s))
    }

    #[test]
    fn bare_stripe_form_is_accepted() {
        assert_eq!(
            parse("8e03978e-40d5-43e8").unwrap().as_str(),
            "8e03978e-40d5-43e8"
        );
    }

    #[test]
    fn quoted_ietf_form_is_unquoted() {
        assert_eq!(
            parse("\"8e03978e-40d5-43e8\"").unwrap().as_str(),
            "8e03978e-40d5-43e8"
        );
        assert_eq!(
            parse(r#""a\"b\\c-0123456789ab""#).unwrap().as_str(),
            r#"a"b\c-0123456789ab"#
        );
    }

    #[test]
    fn both_forms_of_the_same_key_are_equal() {
        assert_eq!(
            parse("abc-0123456789abcdef").unwrap(),
            parse("\"abc-0123456789abcdef\"").unwrap()
        );
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert_eq!(
            parse("  abc-0123456789abcdef\t").unwrap().as_str(),
            "abc-0123456789abcdef"
        );
    }

    #[test]
    fn missing_and_empty_keys_are_refused() {
        assert_eq!(IdempotencyKey::parse(None), Err(KeyError::Missing));
        assert_eq!(parse(""), Err(KeyError::Empty));
        assert_eq!(parse("   "), Err(KeyError::Empty));
        assert_eq!(parse("\"\""), Err(KeyError::Empty));
    }

    #[test]
    fn keys_shorter_than_16_are_refused_as_guessable() {
        assert_eq!(parse("order-1"), Err(KeyError::TooShort { len: 7 }));
        assert_eq!(
            parse(&"k".repeat(MIN_KEY_LEN - 1)),
            Err(KeyError::TooShort { len: 15 })
        );
        assert!(parse(&"k".repeat(MIN_KEY_LEN)).is_ok());
        // Quotes do not count towards the length.
        assert_eq!(
            parse("\"0123456789abcd\""),
            Err(KeyError::TooShort { len: 14 })
        );
    }

    #[test]
    fn length_limit_is_255() {
        assert!(parse(&"k".repeat(255)).is_ok());
        assert_eq!(parse(&"k".repeat(256)), Err(KeyError::TooLong { len: 256 }));
    }

    #[test]
    fn invisible_and_non_ascii_characters_are_refused() {
        assert_eq!(
            parse("ab c"),
            Err(KeyError::InvalidCharacter {
                byte: b' ',
                position: 2
            })
        );
        assert!(matches!(
            parse("ab\u{7f}"),
            Err(KeyError::InvalidCharacter { byte: 0x7f, .. })
        ));
        assert!(matches!(
            parse("clé"),
            Err(KeyError::InvalidCharacter { position: 2, .. })
        ));
        assert!(matches!(
            parse("a\r\nX-Evil: 1"),
            Err(KeyError::InvalidCharacter { .. })
        ));
    }

    #[test]
    fn a_repeated_header_is_named_as_such() {
        assert_eq!(parse("key-one, key-two"), Err(KeyError::Repeated));
    }

    #[test]
    fn broken_quoting_is_refused() {
        assert_eq!(parse("\"abc"), Err(KeyError::BadQuoting));
        assert_eq!(parse("\"ab\"c\""), Err(KeyError::BadQuoting));
        assert_eq!(parse(r#""a\x""#), Err(KeyError::BadQuoting));
    }

    #[test]
    fn scopes_separate_customers_with_the_same_key() {
        let key = parse("same-key-0123456789").unwrap();
        let a = ScopedKey::new(Some("cus_a"), key.clone());
        let b = ScopedKey::new(Some("cus_b"), key.clone());
        let anon = ScopedKey::new(None, key);
        assert_ne!(a.storage_name(), b.storage_name());
        assert_ne!(a.storage_name(), anon.storage_name());
        assert_eq!(a.storage_name().len(), 64);
    }

    #[test]
    fn scope_and_key_boundaries_cannot_be_shifted() {
        let one = ScopedKey::new(Some("ab"), parse("c-0123456789abcdef").unwrap());
        let two = ScopedKey::new(Some("a"), parse("bc-0123456789abcdef").unwrap());
        assert_ne!(one.storage_name(), two.storage_name());
    }
}
