//! The Durable Object that owns one order's [`OrderRecord`] (one per
//! customer and `order_ref`, [`chargeonce_protocol::order_record::storage_name`]),
//! and the Worker-side client that talks to it.
//!
//! Like a key's object, it runs its requests one at a time and awaits
//! nothing but its own storage between loading the record and saving it, so
//! a begin or a settlement is atomic: two keys racing for one order never
//! both attempt. It does no I/O of its own: asking the attempting key's
//! object is the flow's step ([`chargeonce_protocol::flow::AskAttempt`]).
//! Its alarm only deletes a paid order whose time is up; the record expires
//! on load all the same, so a missed alarm costs storage, never
//! correctness.

use crate::key_lock::{call, load_json, read_command, stub, to_json, StoreError, RECORD};
use crate::orders::now;
use chargeonce_protocol::{AttemptFinding, OrderAttempt, OrderDecision, OrderRecord};
use serde::{Deserialize, Serialize};
use worker::{
    durable_object, js_sys, wasm_bindgen, DurableObject, Env, Request, Response, Result,
    ScheduledTime, State, Stub,
};

/// The Durable Object namespace binding in wrangler.toml.
pub const BINDING: &str = "ORDER_LOCKS";

/// What the Worker asks of an order's object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// A key about to forward asks for the order.
    Begin {
        /// The attempt asking.
        attempt: OrderAttempt,
    },
    /// What the key of the attempt holding the order said of it.
    Settle {
        /// The attempt asked about.
        asked: OrderAttempt,
        /// What its key said.
        found: AttemptFinding,
        /// The attempt asking.
        attempt: OrderAttempt,
    },
}

/// One order's record.
#[durable_object]
pub struct OrderLock {
    state: State,
    env: Env,
}

impl DurableObject for OrderLock {
    fn new(state: State, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let (command, config) = match read_command::<Command>(&mut req, &self.env).await? {
            Ok(read) => read,
            Err(refused) => return Ok(refused),
        };
        let policy = config.order_policy();
        let mut record: OrderRecord = load_json(&self.state).await?.unwrap_or_default();
        let before = record.clone();
        let now = now();
        let decision = match command {
            Command::Begin { attempt } => record.begin(&attempt, now, &policy),
            Command::Settle {
                asked,
                found,
                attempt,
            } => record.settle(&asked, found, &attempt, now, &policy),
        };
        if record != before {
            self.persist(&record).await?;
        }
        Response::ok(to_json(&decision)?)
    }

    async fn alarm(&self) -> Result<Response> {
        if let Some(mut record) = load_json::<OrderRecord>(&self.state).await? {
            let before = record.clone();
            record.handle_timeout(now());
            if record != before {
                self.persist(&record).await?;
            }
        }
        Response::empty()
    }
}

impl OrderLock {
    /// Saves the record, then arms its cleanup: a crash between the two
    /// leaves a record that expires on load.
    async fn persist(&self, record: &OrderRecord) -> Result<()> {
        let storage = self.state.storage();
        if record.is_vacant() {
            return storage.delete(RECORD).await.map(|_| ());
        }
        storage.put(RECORD, to_json(record)?).await?;
        if let Some(at) = record.expires_at() {
            storage
                .set_alarm(ScheduledTime::new(js_sys::Date::new(&(at.0 as f64).into())))
                .await?;
        }
        Ok(())
    }
}

/// A handle on one order's object.
pub struct OrderLockClient {
    stub: Stub,
}

impl OrderLockClient {
    /// The object of the order stored under `name`.
    pub fn for_order(env: &Env, name: &str) -> std::result::Result<Self, StoreError> {
        Ok(Self {
            stub: stub(env, BINDING, name)?,
        })
    }

    /// Asks for the order for `attempt`.
    pub async fn begin(
        &self,
        attempt: OrderAttempt,
    ) -> std::result::Result<OrderDecision, StoreError> {
        call(&self.stub, &Command::Begin { attempt }).await
    }

    /// Tells the order what `asked`'s key said, for `attempt`.
    pub async fn settle(
        &self,
        asked: &OrderAttempt,
        found: &AttemptFinding,
        attempt: OrderAttempt,
    ) -> std::result::Result<OrderDecision, StoreError> {
        call(
            &self.stub,
            &Command::Settle {
                asked: asked.clone(),
                found: found.clone(),
                attempt,
            },
        )
        .await
    }
}
