//! The Durable Object that owns one scoped key's [`KeyRecord`], and the
//! Worker-side client that talks to it.
//!
//! One object per key name (`id_from_name`) runs its requests one at a time,
//! and between loading the record and saving it the object awaits nothing but
//! its own storage, so input gates keep every claim, complete and release
//! atomic. KV cannot do this: it has no compare-and-set.
//!
//! The object keeps the record in its storage (it survives restarts) and arms
//! an alarm for the record's next deadline, so expired leases become unknown
//! outcomes and expired results are deleted rather than kept forever.

use chargeonce_protocol::{
    ClaimToken, CompleteOutcome, Decision, Fingerprint, KeyRecord, StoredResponse,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;
use worker::{
    durable_object, js_sys, wasm_bindgen, Date, DurableObject, Env, Method, Request, RequestInit,
    Response, Result, ScheduledTime, State, Stub,
};

/// The Durable Object namespace binding in wrangler.toml.
pub const BINDING: &str = "KEY_LOCKS";

/// The storage key of the record inside its object.
const RECORD: &str = "record";

/// What the Worker asks of a key's object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Decide a request; claim the key if it is free.
    Claim {
        /// The request's fingerprint.
        fingerprint: Fingerprint,
        /// How long the claim holds.
        lease_ms: u64,
        /// How long an outcome, known or not, is kept.
        ttl_ms: u64,
    },
    /// Store the backend's final answer.
    Complete {
        /// The claim being completed.
        token: ClaimToken,
        /// The fingerprint of the request that was forwarded.
        fingerprint: Fingerprint,
        /// The backend's answer.
        response: StoredResponse,
        /// How long to keep it.
        ttl_ms: u64,
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
    },
}

/// One idempotency key's lock and record.
#[durable_object]
pub struct KeyLock {
    state: State,
}

impl DurableObject for KeyLock {
    fn new(state: State, _env: Env) -> Self {
        Self { state }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let command: Command = match req.json().await {
            Ok(command) => command,
            Err(e) => return Response::error(format!("unreadable command: {e}"), 400),
        };
        let mut record = self.load().await?;
        let before = record.clone();
        let deadline_before = record.poll_timeout();
        let now = Date::now().as_millis();
        let reply = match command {
            Command::Claim {
                fingerprint,
                lease_ms,
                ttl_ms,
            } => serde_json::to_string(&record.claim(&fingerprint, now, lease_ms, ttl_ms)),
            Command::Complete {
                token,
                fingerprint,
                response,
                ttl_ms,
            } => {
                serde_json::to_string(&record.complete(token, &fingerprint, response, now, ttl_ms))
            }
            Command::Release { token } => serde_json::to_string(&record.release(token, now)),
            Command::Abandon { token } => serde_json::to_string(&record.abandon(token, now)),
        }
        .map_err(|e| worker::Error::RustError(e.to_string()))?;
        // A refused claim (409, 422) or a replay changes nothing: no write.
        if record != before {
            self.save(&record, deadline_before).await?;
        }
        Response::ok(reply)
    }

    async fn alarm(&self) -> Result<Response> {
        let mut record = self.load().await?;
        record.handle_timeout(Date::now().as_millis());
        // `None` as the previous deadline: the alarm that woke us is spent,
        // so re-arm whenever the record still has a deadline.
        self.save(&record, None).await?;
        Response::empty()
    }
}

impl KeyLock {
    async fn load(&self) -> Result<KeyRecord> {
        // Stored as a JSON string: exact for u64 timestamps, and readable in
        // wrangler's local state when debugging.
        match self.state.storage().get::<String>(RECORD).await? {
            Some(json) => {
                serde_json::from_str(&json).map_err(|e| worker::Error::RustError(e.to_string()))
            }
            None => Ok(KeyRecord::default()),
        }
    }

    async fn save(&self, record: &KeyRecord, deadline_before: Option<u64>) -> Result<()> {
        let storage = self.state.storage();
        if record.is_vacant() {
            storage.delete(RECORD).await?;
            if deadline_before.is_some() {
                storage.delete_alarm().await?;
            }
            return Ok(());
        }
        let json =
            serde_json::to_string(record).map_err(|e| worker::Error::RustError(e.to_string()))?;
        storage.put(RECORD, json).await?;
        if let Some(at) = record
            .poll_timeout()
            .filter(|at| Some(*at) != deadline_before)
        {
            storage
                .set_alarm(ScheduledTime::new(js_sys::Date::new(&(at as f64).into())))
                .await?;
        }
        Ok(())
    }
}

/// The key's object could not be reached or answered nonsense. The request
/// must then not be forwarded: without the lock, a duplicate could be charged.
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

/// A handle on one key's object.
pub struct KeyLockClient {
    stub: Stub,
}

impl KeyLockClient {
    /// The object for the key stored under `name`.
    pub fn for_key(env: &Env, name: &str) -> std::result::Result<Self, StoreError> {
        let unavailable = |e: worker::Error| StoreError::Unavailable(e.to_string());
        let stub = env
            .durable_object(BINDING)
            .map_err(unavailable)?
            .id_from_name(name)
            .map_err(unavailable)?
            .get_stub()
            .map_err(unavailable)?;
        Ok(Self { stub })
    }

    /// Decides a request and claims the key if it is free.
    pub async fn claim(
        &self,
        fingerprint: &Fingerprint,
        lease_ms: u64,
        ttl_ms: u64,
    ) -> std::result::Result<Decision, StoreError> {
        self.call(&Command::Claim {
            fingerprint: fingerprint.clone(),
            lease_ms,
            ttl_ms,
        })
        .await
    }

    /// Stores a final answer.
    pub async fn complete(
        &self,
        token: ClaimToken,
        fingerprint: &Fingerprint,
        response: StoredResponse,
        ttl_ms: u64,
    ) -> std::result::Result<CompleteOutcome, StoreError> {
        self.call(&Command::Complete {
            token,
            fingerprint: fingerprint.clone(),
            response,
            ttl_ms,
        })
        .await
    }

    /// Releases a claim that charged nothing; returns whether it was still held.
    pub async fn release(&self, token: ClaimToken) -> std::result::Result<bool, StoreError> {
        self.call(&Command::Release { token }).await
    }

    /// Ends a claim whose outcome is unknown, so the next claim reconciles;
    /// returns whether it was still held.
    pub async fn abandon(&self, token: ClaimToken) -> std::result::Result<bool, StoreError> {
        self.call(&Command::Abandon { token }).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        command: &Command,
    ) -> std::result::Result<T, StoreError> {
        let unavailable = |e: worker::Error| StoreError::Unavailable(e.to_string());
        let body =
            serde_json::to_string(command).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_body(Some(wasm_bindgen::JsValue::from_str(&body)));
        // The host is never resolved: a stub routes every URL to its object.
        let req = Request::new_with_init("https://key-lock/", &init).map_err(unavailable)?;
        let mut res = self
            .stub
            .fetch_with_request(req)
            .await
            .map_err(unavailable)?;
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
}
