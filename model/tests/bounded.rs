//! The model check's bounded run, part of `make test`: both backends in the
//! base scenario with up to two faults in the first 4 s, explored to 14 s,
//! the lookup outage with one, and the same order from two devices with one:
//! about 90 s on two cores (`-- --nocapture` prints the states each
//! explored). `make model` runs every scenario
//! deeper. It runs optimised (`cargo test --release -p chargeonce-model`, as
//! `make test` does): a debug build would take minutes.
#![allow(missing_docs)]

use chargeonce_model::{check, Backend, Checkout, Scenario};

fn run(backend: Backend, scenario: Scenario, faults: u8, horizon: u64) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let report = check(
        Checkout::new(backend, scenario, faults, 4, horizon),
        threads,
        false,
    );
    println!(
        "{} {backend:?}: {} distinct states, paths up to {} steps, {:.1} s",
        scenario.name(),
        report.states,
        report.max_depth,
        report.elapsed.as_secs_f64()
    );
    let failures: Vec<String> = report
        .failures
        .iter()
        .map(|(property, trace, steps)| format!("\"{property}\" ({steps} steps):\n{trace}"))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "run optimised: cargo test --release -p chargeonce-model"
)]
fn exactly_once_holds_in_front_of_a_naive_backend() {
    run(Backend::Naive, Scenario::Base, 2, 14);
    run(Backend::Naive, Scenario::Outage, 1, 18);
    run(Backend::Naive, Scenario::TwoDevices, 1, 14);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "run optimised: cargo test --release -p chargeonce-model"
)]
fn exactly_once_holds_in_front_of_a_backend_that_keeps_keys() {
    run(Backend::KeepsKeys, Scenario::Base, 2, 14);
    run(Backend::KeepsKeys, Scenario::Outage, 1, 18);
    run(Backend::KeepsKeys, Scenario::TwoDevices, 1, 14);
}
