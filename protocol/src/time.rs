//! Time as the protocol sees it: an instant is [`UnixMs`], a span is
//! [`std::time::Duration`]. Nothing in this crate reads a clock; the shells
//! pass `now` in. Two distinct types keep an instant and a span from being
//! swapped silently in a call that takes both.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// An instant, as milliseconds since the Unix epoch (what `Date.now()` gives
/// in a Worker or a browser).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMs(pub u64);

impl UnixMs {
    /// The instant `span` after this one; saturates rather than wrapping.
    #[must_use]
    pub fn plus(self, span: Duration) -> Self {
        Self(self.0.saturating_add(millis(span)))
    }

    /// How long after `earlier` this instant is; zero if it is not after it.
    #[must_use]
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The instant `secs` whole seconds after the epoch.
    #[must_use]
    pub fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Whole seconds since the epoch (order tokens count in seconds).
    #[must_use]
    pub fn as_secs(self) -> u64 {
        self.0 / 1000
    }
}

impl fmt::Display for UnixMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", self.0)
    }
}

/// A span in whole milliseconds, saturating at `u64::MAX` (585 million years).
#[must_use]
pub fn millis(span: Duration) -> u64 {
    u64::try_from(span.as_millis()).unwrap_or(u64::MAX)
}

/// A span as a `Retry-After` value: whole seconds, rounded up so a client
/// never comes back early, and at least 1.
#[must_use]
pub fn retry_after_secs(span: Duration) -> u32 {
    let secs = millis(span).div_ceil(1000).max(1);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_and_spans_combine_without_wrapping() {
        let t = UnixMs(1_000);
        assert_eq!(t.plus(Duration::from_secs(2)), UnixMs(3_000));
        assert_eq!(
            UnixMs(u64::MAX).plus(Duration::from_secs(1)),
            UnixMs(u64::MAX)
        );
        assert_eq!(UnixMs(3_000).since(t), Duration::from_secs(2));
        assert_eq!(t.since(UnixMs(3_000)), Duration::ZERO);
        assert_eq!(UnixMs(2_999).as_secs(), 2);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }
}
