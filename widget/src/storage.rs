//! Where an attempt survives the page: `sessionStorage` keeps this tab's
//! attempt (so a reload resumes it with the same key, and a placed order
//! still shows as placed), and `localStorage` shares the current key for an
//! order with other tabs (so a second tab sends the same key, and the edge
//! answers it with the first tab's charge instead of charging again).
//!
//! Storage can be unavailable (private modes, quotas); the widget then still
//! works within the page, so failures here are ignored on purpose.

use chargeonce_protocol::Attempt;
use web_sys::Storage;

const PREFIX: &str = "chargeonce:";

fn session() -> Option<Storage> {
    web_sys::window()?.session_storage().ok().flatten()
}

fn local() -> Option<Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// This tab's attempt for `order_ref`, if one was saved.
pub fn load_attempt(order_ref: &str) -> Option<Attempt> {
    let text = session()?
        .get_item(&format!("{PREFIX}attempt:{order_ref}"))
        .ok()??;
    Attempt::decode(&text)
}

/// Saves this tab's attempt for `order_ref`.
pub fn save_attempt(order_ref: &str, attempt: &Attempt) {
    if let Some(storage) = session() {
        let _ = storage.set_item(&format!("{PREFIX}attempt:{order_ref}"), &attempt.encode());
    }
}

/// The key another tab is using for this exact payload, if any. Stored as
/// `fingerprint` and `key` on two lines.
pub fn shared_key(order_ref: &str, fingerprint: &str) -> Option<String> {
    let text = local()?
        .get_item(&format!("{PREFIX}key:{order_ref}"))
        .ok()??;
    let (stored_fingerprint, key) = text.split_once('\n')?;
    (stored_fingerprint == fingerprint && !key.is_empty()).then(|| key.to_owned())
}

/// Publishes the key this tab uses for this payload.
pub fn share_key(order_ref: &str, fingerprint: &str, key: &str) {
    if let Some(storage) = local() {
        let _ = storage.set_item(
            &format!("{PREFIX}key:{order_ref}"),
            &format!("{fingerprint}\n{key}"),
        );
    }
}
