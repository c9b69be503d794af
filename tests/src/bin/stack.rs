//! `stack`: the stack `make dev` runs (paysim, and the Worker under
//! `wrangler dev` with the simulator's `/__sim` hooks), on free loopback ports
//! with fresh state, for the browser end-to-end tests in `tests/e2e/`.
//!
//! It prints one JSON line, `{"edge_url": …, "sim_url": …}`, once the Worker
//! answers, and stops everything when its standard input closes, so the
//! process that started it cannot leave servers behind even if it dies.

use chargeonce_tests::sim::DEFAULT_SECRET;
use chargeonce_tests::stack::{Stack, StackOptions};
use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("stack: cannot find its own path");
        return ExitCode::FAILURE;
    };
    // paysim is built beside this binary.
    let paysim = exe.with_file_name("paysim");
    let options = StackOptions {
        dev_simulator_routes: true,
        ..StackOptions::default()
    };
    let stack = match Stack::start(&paysim, DEFAULT_SECRET, &options) {
        Ok(stack) => stack,
        Err(e) => {
            eprintln!("stack: {e}");
            return ExitCode::FAILURE;
        }
    };
    let line = serde_json::json!({"edge_url": stack.edge_url, "sim_url": stack.sim_url});
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    // Until the parent closes our stdin (or exits).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(stack);
    ExitCode::SUCCESS
}
