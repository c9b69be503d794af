//! The Durable Object that owns one scoped key's [`KeyRecord`], and the
//! Worker-side client that talks to it.
//!
//! One object per key name (`id_from_name`) runs its requests one at a time,
//! and between loading the record and saving it the object awaits nothing but
//! its own storage, so input gates keep every claim, settlement, completion
//! and release atomic. KV cannot do this: it has no compare-and-set.
//!
//! The object keeps the record in its storage (it survives restarts) and
//! persists each change in the order [`KeyRecord::writes`] gives: the alarm
//! first. Its alarm moves the record on ([`KeyRecord::handle_timeout`]) and
//! reconciles an unknown key by itself ([`KeyRecord::begin_check`]): it asks
//! the backend's lookup, with the Worker's own settings and secret, and
//! stores what it finds, so a key settles even when its customer has gone.
//! It never forwards an order: it has only the order's fingerprint.

use crate::backend;
use crate::orders::now;
use chargeonce_protocol::key::backend_key_of;
use chargeonce_protocol::{
    backend::ExpectedCharge, flow::StoreFailure, ClaimToken, CompleteOutcome, Decision, EdgeConfig,
    Fingerprint, Found, KeyRecord, KeyStatus, Peek, Refreshed, Settlement, StoredResponse, UnixMs,
    Write,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;
use worker::{
    console_error, console_log, durable_object, js_sys, wasm_bindgen, DurableObject, Env, Method,
    Request, RequestInit, Response, Result, ScheduledTime, State, Stub,
};

/// The Durable Object namespace binding in wrangler.toml.
pub const BINDING: &str = "KEY_LOCKS";

/// The storage key of the record inside its object (an order's too).
pub(crate) const RECORD: &str = "record";

/// What the Worker asks of a key's object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Decide a request; claim the key if it is free or unknown.
    Claim {
        /// The object's name ([`chargeonce_protocol::ScopedKey::storage_name`]),
        /// kept so that the alarm can find the key at the backend.
        name: String,
        /// The request's fingerprint.
        fingerprint: Fingerprint,
        /// What the object's own lookup must find to be the key's charge.
        expected: ExpectedCharge,
    },
    /// Say what the key holds for a request, without claiming it or
    /// writing anything (an expired order token).
    Peek {
        /// The request's fingerprint.
        fingerprint: Fingerprint,
    },
    /// Settle a reconciling claim with what its lookup found.
    Settle {
        /// The claim being settled.
        token: ClaimToken,
        /// The fingerprint of the request that holds it.
        fingerprint: Fingerprint,
        /// What the lookup found.
        found: Found,
    },
    /// Store the backend's final answer.
    Complete {
        /// The claim being completed.
        token: ClaimToken,
        /// The fingerprint of the request that was forwarded.
        fingerprint: Fingerprint,
        /// The backend's answer.
        response: StoredResponse,
    },
    /// Give the key back after a failure that charged nothing.
    Release {
        /// The claim being released.
        token: ClaimToken,
    },
    /// End the claim without knowing whether it charged.
    Abandon {
        /// The claim being abandoned.
        token: ClaimToken,
        /// Whether its forward may have run at the backend (see
        /// [`KeyRecord::abandon`]).
        ran: bool,
    },
    /// Replace a stored answer whose intent changed with the intent as it is
    /// now ([`KeyRecord::refresh`]).
    Refresh {
        /// The stored answer it read.
        previous: StoredResponse,
        /// The refreshed answer.
        response: StoredResponse,
    },
    /// Say what is known of the key (a status lookup).
    Status,
}

/// What the object keeps: the record, the name it is addressed by, and
/// what its own lookup must find (absent in records saved before it was
/// kept: their lookups then check the key alone).
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    name: String,
    record: KeyRecord,
    #[serde(default)]
    expected: Option<ExpectedCharge>,
}

/// One idempotency key's lock and record.
#[durable_object]
pub struct KeyLock {
    state: State,
    env: Env,
}

impl DurableObject for KeyLock {
    fn new(state: State, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let (command, config) = match read_command::<Command>(&mut req, &self.env).await? {
            Ok(read) => read,
            Err(refused) => return Ok(refused),
        };
        let policy = config.key_policy();
        let (name, mut record, mut expected) = match load_json::<Saved>(&self.state).await? {
            Some(saved) => (saved.name, saved.record, saved.expected),
            None => (String::new(), KeyRecord::default(), None),
        };
        let now = now();
        if let Command::Peek { fingerprint } = &command {
            // Read only: not even the record's own timeouts are saved.
            return Response::ok(to_json(&record.peek(fingerprint, now, &policy))?);
        }
        let before = record.clone();
        log_timeouts(&name, &record.handle_timeout(now, &policy));
        let (name, reply) = match command {
            Command::Claim {
                name: claimed,
                fingerprint,
                expected: charge,
            } => {
                let decision = record.claim(&fingerprint, now, random_token(), &policy);
                if matches!(decision, Decision::Forward { .. }) {
                    expected = Some(charge);
                }
                (claimed, to_json(&decision)?)
            }
            Command::Peek { .. } => unreachable!("answered above"),
            Command::Settle {
                token,
                fingerprint,
                found,
            } => {
                let settled = record.handle_lookup(token, &fingerprint, found, now, &policy);
                log_settlement(&name, "a request's lookup", &settled);
                (name, to_json(&settled)?)
            }
            Command::Complete {
                token,
                fingerprint,
                response,
            } => {
                let stored = record.complete(token, &fingerprint, response, now, &policy);
                (name, to_json(&stored)?)
            }
            Command::Release { token } => {
                let released = record.release(token, now, &policy);
                (name, to_json(&released)?)
            }
            Command::Abandon { token, ran } => {
                let abandoned = record.abandon(token, ran, now, &policy);
                (name, to_json(&abandoned)?)
            }
            Command::Refresh { previous, response } => {
                let refreshed = record.refresh(&previous, response, now, &policy);
                (name, to_json(&refreshed)?)
            }
            Command::Status => {
                let status = record.status(now, &policy);
                (name, to_json(&status)?)
            }
        };
        self.persist(
            &name,
            &record,
            expected.as_ref(),
            record != before,
            before.poll_timeout(),
        )
        .await?;
        Response::ok(reply)
    }

    async fn alarm(&self) -> Result<Response> {
        let Some(Saved {
            name,
            mut record,
            expected,
        }) = load_json(&self.state).await?
        else {
            return Response::empty();
        };
        let config = match config(&self.env) {
            Ok(config) => config,
            Err(e) => {
                console_error!("key {name}: no reconciliation, the configuration is invalid: {e}");
                return Response::empty();
            }
        };
        let policy = config.key_policy();
        let before = record.clone();
        let woke_at = now();
        log_timeouts(&name, &record.handle_timeout(woke_at, &policy));
        let check = record.begin_check(woke_at, random_token(), &policy);
        // The alarm that woke us is spent: re-arm whatever the record needs.
        self.persist(&name, &record, expected.as_ref(), record != before, None)
            .await?;
        let Some(token) = check else {
            return Response::empty();
        };
        let Some(fingerprint) = record.fingerprint().cloned() else {
            return Response::empty();
        };
        // Other requests may reach the object while the lookup is out; they
        // see the key claimed by this check and are asked to come back.
        console_log!("key {name}: reconciling an unknown outcome with the backend's lookup");
        let secret = backend_secret(&self.env, &config);
        let backend_key = backend_key_of(&name);
        let url = config.backend.lookup_url(&config.backend_url, &backend_key);
        let expected = expected
            .clone()
            .unwrap_or_else(|| ExpectedCharge::key_only(&backend_key));
        let outcome =
            backend::lookup(&url, secret.as_deref(), config.backend_timeout, &expected).await;
        let (found, failure) = outcome.found(woke_at);
        if let Some(problem) = failure {
            console_error!("key {name}: the lookup failed: {}", problem.detail);
        }
        let Some(Saved { mut record, .. }) = load_json::<Saved>(&self.state).await? else {
            return Response::empty();
        };
        let armed = record.poll_timeout();
        let settled = record.handle_lookup(token, &fingerprint, found, now(), &policy);
        log_settlement(&name, "the object's own check", &settled);
        self.persist(&name, &record, Some(&expected), true, armed)
            .await?;
        Response::empty()
    }
}

/// A command to an object and the edge's settings, or the answer that
/// refuses it: 400 for a command it cannot read, 500 for invalid settings.
pub(crate) async fn read_command<C: DeserializeOwned>(
    req: &mut Request,
    env: &Env,
) -> Result<std::result::Result<(C, EdgeConfig), Response>> {
    // Parsed from text by serde_json: JavaScript's JSON.parse would turn a
    // 64-bit claim token into a float.
    let command = match serde_json::from_str(&req.text().await?) {
        Ok(command) => command,
        Err(e) => return Response::error(format!("unreadable command: {e}"), 400).map(Err),
    };
    match config(env) {
        Ok(config) => Ok(Ok((command, config))),
        Err(e) => Response::error(e, 500).map(Err),
    }
}

/// An object's record, if it has one. Stored as a JSON string: exact for
/// u64 timestamps, and readable in wrangler's local state when debugging.
pub(crate) async fn load_json<T: DeserializeOwned>(state: &State) -> Result<Option<T>> {
    match state.storage().get::<String>(RECORD).await? {
        Some(json) => serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| worker::Error::RustError(e.to_string())),
        None => Ok(None),
    }
}

impl KeyLock {
    /// Performs the record's writes, in their order.
    async fn persist(
        &self,
        name: &str,
        record: &KeyRecord,
        expected: Option<&ExpectedCharge>,
        changed: bool,
        armed: Option<UnixMs>,
    ) -> Result<()> {
        let storage = self.state.storage();
        for write in record.writes(changed, armed) {
            match write {
                Write::SetAlarm(at) => {
                    storage
                        .set_alarm(ScheduledTime::new(js_sys::Date::new(&(at.0 as f64).into())))
                        .await?
                }
                Write::PutRecord => {
                    let saved = Saved {
                        name: name.to_owned(),
                        record: record.clone(),
                        expected: expected.cloned(),
                    };
                    storage.put(RECORD, to_json(&saved)?).await?
                }
                Write::DeleteRecord => storage.delete(RECORD).await.map(|_| ())?,
                Write::DeleteAlarm => storage.delete_alarm().await?,
            }
        }
        Ok(())
    }
}

/// A claim token no earlier claim of this key has had: the record may have
/// been deleted and started again, so no counter could promise that.
fn random_token() -> ClaimToken {
    // Two draws for 64 bits; collisions between claims of one key are what
    // matters, and they are one in 2^64.
    let high = (js_sys::Math::random() * f64::from(u32::MAX)) as u64;
    let low = (js_sys::Math::random() * f64::from(u32::MAX)) as u64;
    ClaimToken((high << 32) | low)
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| worker::Error::RustError(e.to_string()))
}

fn config(env: &Env) -> std::result::Result<EdgeConfig, String> {
    EdgeConfig::from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
        .map_err(|e| e.to_string())
}

/// The backend credential, as the Worker reads it.
pub(crate) fn backend_secret(env: &Env, config: &EdgeConfig) -> Option<String> {
    env.secret(config.backend.secret_name())
        .ok()
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
}

fn log_timeouts(name: &str, changes: &[chargeonce_protocol::record::Timeout]) {
    use chargeonce_protocol::record::Timeout;
    for change in changes {
        match change {
            Timeout::LeaseRanOut => {
                console_log!("key {name}: a claim's lease ran out; its outcome is unknown")
            }
            Timeout::AnswerExpired => {}
            Timeout::GaveUp => console_error!(
                "key {name}: still unresolved after the TTL; kept as a tombstone, and any later request reconciles it first"
            ),
        }
    }
}

fn log_settlement(name: &str, by: &str, settled: &Settlement) {
    let what = match settled {
        Settlement::Answered { .. } => {
            "found the intent (charged, or awaiting the customer's authentication); it is the key's answer now"
        }
        Settlement::NotCharged { .. } => {
            "found no charge after the settle window; the key's answer is 'not charged'"
        }
        Settlement::AlreadyAnswered { .. } => "the key was answered meanwhile",
        Settlement::Forward => {
            "found nothing yet; the backend still deduplicates the key, so the request forwards"
        }
        Settlement::Pending { .. } => {
            "found nothing within the settle window; the key stays unknown"
        }
        Settlement::LookupFailed => "could not ask the backend; the key stays unknown",
        Settlement::NotHeld => "came after its claim ran out",
    };
    console_log!("key {name}: {by} {what}");
}

/// A key's or an order's object could not be reached or answered nonsense.
/// The request must then not be forwarded: without the lock, a duplicate
/// could be charged.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The binding is missing or the object did not answer.
    #[error("the key lock is unavailable: {0}")]
    Unavailable(String),
    /// The object answered with something the Worker cannot read.
    #[error("the key lock answered {status}: {body}")]
    BadReply {
        /// The HTTP status of the object's answer.
        status: u16,
        /// Its body.
        body: String,
    },
}

impl From<StoreError> for StoreFailure {
    fn from(e: StoreError) -> Self {
        console_error!("{e}");
        StoreFailure(e.to_string())
    }
}

/// A handle on one key's object.
pub struct KeyLockClient {
    stub: Stub,
}

impl KeyLockClient {
    /// The object for the key stored under `name`.
    pub fn for_key(env: &Env, name: &str) -> std::result::Result<Self, StoreError> {
        Ok(Self {
            stub: stub(env, BINDING, name)?,
        })
    }

    /// Decides a request and claims the key if it is free or unknown.
    pub async fn claim(
        &self,
        name: &str,
        fingerprint: &Fingerprint,
        expected: ExpectedCharge,
    ) -> std::result::Result<Decision, StoreError> {
        self.call(&Command::Claim {
            name: name.to_owned(),
            fingerprint: fingerprint.clone(),
            expected,
        })
        .await
    }

    /// What the key holds for a request, without claiming it.
    pub async fn peek(&self, fingerprint: &Fingerprint) -> std::result::Result<Peek, StoreError> {
        self.call(&Command::Peek {
            fingerprint: fingerprint.clone(),
        })
        .await
    }

    /// Settles a reconciling claim with what its lookup found.
    pub async fn settle(
        &self,
        token: ClaimToken,
        fingerprint: &Fingerprint,
        found: &Found,
    ) -> std::result::Result<Settlement, StoreError> {
        self.call(&Command::Settle {
            token,
            fingerprint: fingerprint.clone(),
            found: found.clone(),
        })
        .await
    }

    /// Stores a final answer.
    pub async fn complete(
        &self,
        token: ClaimToken,
        fingerprint: &Fingerprint,
        response: &StoredResponse,
    ) -> std::result::Result<CompleteOutcome, StoreError> {
        self.call(&Command::Complete {
            token,
            fingerprint: fingerprint.clone(),
            response: response.clone(),
        })
        .await
    }

    /// Releases a claim that charged nothing; returns whether it was still held.
    pub async fn release(&self, token: ClaimToken) -> std::result::Result<bool, StoreError> {
        self.call(&Command::Release { token }).await
    }

    /// Ends a claim whose outcome is unknown, so the key is reconciled;
    /// returns whether it was still held.
    pub async fn abandon(
        &self,
        token: ClaimToken,
        ran: bool,
    ) -> std::result::Result<bool, StoreError> {
        self.call(&Command::Abandon { token, ran }).await
    }

    /// Replaces the stored answer `previous` with its refresh.
    pub async fn refresh(
        &self,
        previous: &StoredResponse,
        response: &StoredResponse,
    ) -> std::result::Result<Refreshed, StoreError> {
        self.call(&Command::Refresh {
            previous: previous.clone(),
            response: response.clone(),
        })
        .await
    }

    /// What is known of the key.
    pub async fn status(&self) -> std::result::Result<KeyStatus, StoreError> {
        self.call(&Command::Status).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        command: &Command,
    ) -> std::result::Result<T, StoreError> {
        call(&self.stub, command).await
    }
}

/// The stub of the object named `name` in the namespace `binding`.
pub(crate) fn stub(env: &Env, binding: &str, name: &str) -> std::result::Result<Stub, StoreError> {
    let unavailable = |e: worker::Error| StoreError::Unavailable(e.to_string());
    env.durable_object(binding)
        .map_err(unavailable)?
        .id_from_name(name)
        .map_err(unavailable)?
        .get_stub()
        .map_err(unavailable)
}

/// Sends `command` to an object as JSON and reads its JSON answer.
pub(crate) async fn call<C: Serialize, T: DeserializeOwned>(
    stub: &Stub,
    command: &C,
) -> std::result::Result<T, StoreError> {
    let unavailable = |e: worker::Error| StoreError::Unavailable(e.to_string());
    let body =
        serde_json::to_string(command).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(wasm_bindgen::JsValue::from_str(&body)));
    // The host is never resolved: a stub routes every URL to its object.
    let req = Request::new_with_init("https://object/", &init).map_err(unavailable)?;
    let mut res = stub.fetch_with_request(req).await.map_err(unavailable)?;
    let text = res.text().await.map_err(unavailable)?;
    if res.status_code() != 200 {
        return Err(StoreError::BadReply {
            status: res.status_code(),
            body: text,
        });
    }
    serde_json::from_str(&text).map_err(|_| StoreError::BadReply {
        status: 200,
        body: text,
    })
}
