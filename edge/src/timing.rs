//! `Server-Timing` for the orders route: how long each step of one request
//! waited, so an operator can read in the browser's network panel (and
//! `make bench` can average) what dominates a request. Steps are marked
//! after each wait on I/O; the Workers clock only moves across I/O, so finer
//! marks would read zero.

use worker::Date;

/// The marks of one request.
pub struct Steps {
    last: u64,
    done: Vec<(&'static str, u64)>,
}

impl Steps {
    /// Starts the clock.
    pub fn start() -> Self {
        Self {
            last: Date::now().as_millis(),
            done: Vec::with_capacity(6),
        }
    }

    /// Ends step `name` now; the next step starts here.
    pub fn mark(&mut self, name: &'static str) {
        let now = Date::now().as_millis();
        self.done.push((name, now.saturating_sub(self.last)));
        self.last = now;
    }

    /// The header value, `read;dur=0, kv;dur=1, claim;dur=3, …`; `None`
    /// when the request was refused before its first mark.
    pub fn header(&self) -> Option<String> {
        (!self.done.is_empty()).then(|| {
            self.done
                .iter()
                .map(|(name, ms)| format!("{name};dur={ms}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }
}
