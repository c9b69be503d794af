//! `make model`: the deep run of the model check. It checks the model in
//! every scenario (or the one `SCENARIO` names), each with a naive backend
//! and with one that keeps keys, with the fault budget, fault horizon and
//! horizon of the scenario (or `FAULTS`, `FAULT_HORIZON`, `HORIZON`; and
//! `BACKEND=naive` or `keeps-keys` checks that backend alone). It
//! prints the states explored and exits non-zero with a counterexample for
//! any property that fails. `STOP_AT_FIRST_FAILURE=1` stops at the first one
//! (as `make mutants` does, which expects one).

use chargeonce_model::{check, Backend, Checkout, Scenario};
use std::process::ExitCode;

fn var(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok().filter(|v| !v.trim().is_empty())?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
    )
}

/// The deep run's budget in each scenario: three faults where the world is
/// the base one; two where a longer lease or an outage already stretches it;
/// one where a second device does.
fn defaults(scenario: Scenario) -> (u64, u64, u64) {
    match scenario {
        Scenario::Base => (3, 4, 14),
        Scenario::LongLease => (2, 4, 16),
        Scenario::Outage => (2, 4, 18),
        // Two devices multiply the states: one fault, with two more seconds
        // for it to land in (two faults took 15 minutes and 87.5 million
        // states for the naive backend alone).
        Scenario::TwoDevices => (1, 6, 16),
    }
}

fn main() -> ExitCode {
    let scenarios = match std::env::var("SCENARIO") {
        Ok(name) if !name.is_empty() => vec![Scenario::from_name(&name).unwrap_or_else(|| {
            panic!("SCENARIO={name:?} is not base, long-lease, outage or two-devices")
        })],
        _ => Scenario::ALL.to_vec(),
    };
    let backends = match std::env::var("BACKEND").as_deref() {
        Ok("naive") => vec![Backend::Naive],
        Ok("keeps-keys") => vec![Backend::KeepsKeys],
        Ok("") | Err(_) => vec![Backend::Naive, Backend::KeepsKeys],
        Ok(other) => panic!("BACKEND={other:?} is not naive or keeps-keys"),
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stop = std::env::var("STOP_AT_FIRST_FAILURE").is_ok_and(|v| v == "1");
    let mut ok = true;
    let mut total = 0;
    for scenario in scenarios {
        let (faults, fault_horizon, horizon) = defaults(scenario);
        let faults = var("FAULTS").unwrap_or(faults);
        let fault_horizon = var("FAULT_HORIZON").unwrap_or(fault_horizon);
        let horizon = var("HORIZON").unwrap_or(horizon);
        for &backend in &backends {
            let faults = u8::try_from(faults).expect("FAULTS fits in a byte");
            let model = Checkout::new(backend, scenario, faults, fault_horizon, horizon);
            println!(
                "model: {} scenario, {backend:?} backend, up to {faults} faults before {fault_horizon} s, explored to {horizon} s",
                scenario.name()
            );
            let report = check(model, threads, stop);
            total += report.states;
            println!(
                "model: {} distinct states, paths up to {} steps, in {:.1} s",
                report.states,
                report.max_depth,
                report.elapsed.as_secs_f64()
            );
            for (property, trace, steps) in &report.failures {
                ok = false;
                println!("model: FAILED \"{property}\" ({steps} steps):\n{trace}");
            }
            if stop && !ok {
                return ExitCode::FAILURE;
            }
        }
    }
    println!("model: {total} distinct states in all");
    if ok {
        println!("model: every property holds");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
