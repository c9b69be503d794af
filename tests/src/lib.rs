//! ChargeOnce's test support: the payment simulator (`paysim`) that stands in for Stripe, and the
//! helpers the black-box tests share.

pub mod client;
pub mod shop;
pub mod signers;
pub mod sim;
pub mod stack;
