//! `stack`: the stack `make dev` runs: paysim, and the Worker under
//! `wrangler dev` with the simulator's `/__sim` hooks and the demo shop's
//! token issuer. Two modes:
//!
//! - `stack --dev` is `make dev`: fixed ports, local state in `.wrangler/state`
//!   that survives restarts, the Worker's secrets from `.dev.vars`, wrangler's
//!   output on the terminal (and in `.wrangler/wrangler.log`), a banner once
//!   the Worker answers.
//! - `stack` alone serves the browser end-to-end tests in `tests/e2e/`: free
//!   loopback ports and fresh state; it prints one JSON line,
//!   `{"edge_url": …, "sim_url": …}`, once the Worker answers, and stops
//!   everything when its standard input closes, so the process that started
//!   it cannot leave servers behind even if it dies.
//!
//! Either stops both processes (and workerd) on Ctrl-C, SIGTERM or SIGHUP,
//! and exits non-zero, naming the log and printing its tail, when the Worker
//! does not become ready or a process exits on its own.

use chargeonce_protocol::token::EXAMPLE_SECRET;
use chargeonce_tests::sim::DEFAULT_SECRET;
use chargeonce_tests::stack::{workspace_root, DevSettings, Stack, StackError, StackOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str =
    "usage: stack [--dev [--edge-port N] [--sim-port N] [--inspector-port N] [--state-dir DIR]]
  (no flags)            free ports and fresh state, for the end-to-end tests: prints one JSON
                        line once the Worker answers, stops when standard input closes
  --dev                 what `make dev` runs: fixed ports, secrets from .dev.vars, state kept
  --edge-port N         the Worker's port (env EDGE_PORT, default 8787)
  --sim-port N          the payment simulator's port (env SIM_PORT, default 8790)
  --inspector-port N    wrangler's inspector port (env INSPECTOR_PORT, default 9229)
  --state-dir DIR       local KV and Durable Object state, relative to the repository root
                        (env STATE_DIR, default .wrangler/state)
Either mode passes these Worker settings on from the environment (README, \"Configuration\"):
  RATE_LIMITS=off       the Worker without its rate limits (on by default)
  ALLOWED_ORIGINS=...   the storefront origins that may embed the widget and place orders
The ports and state directory are read from the environment with --dev only.
Ctrl-C stops both processes.";

/// Where `make dev` runs the stack.
#[derive(Debug, PartialEq)]
struct DevArgs {
    edge_port: u16,
    sim_port: u16,
    inspector_port: u16,
    /// Relative to the workspace root when not absolute.
    state_dir: PathBuf,
}

#[derive(Debug, PartialEq)]
enum Mode {
    /// For the end-to-end tests.
    Test,
    /// `make dev`.
    Dev(DevArgs),
}

/// `Ok(None)` means `--help` was asked for.
fn parse_args(
    mut argv: impl Iterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Mode>, String> {
    let mut dev = false;
    // Each setting: its flag, its variable, its default, the flag's value.
    let mut settings = [
        ("--edge-port", "EDGE_PORT", "8787", None),
        ("--sim-port", "SIM_PORT", "8790", None),
        ("--inspector-port", "INSPECTOR_PORT", "9229", None),
        ("--state-dir", "STATE_DIR", ".wrangler/state", None),
    ];
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--dev" if inline.is_none() => dev = true,
            _ => {
                let Some(setting) = settings.iter_mut().find(|s| s.0 == flag) else {
                    return Err(format!("unknown argument '{flag}'"));
                };
                let value = inline
                    .or_else(|| argv.next())
                    .ok_or_else(|| format!("{flag} needs a value"))?;
                setting.3 = Some(value);
            }
        }
    }
    if !dev {
        return match settings.iter().find(|s| s.3.is_some()) {
            Some((flag, ..)) => Err(format!("{flag} goes with --dev")),
            None => Ok(Some(Mode::Test)),
        };
    }
    let [edge, sim, inspector, state] = settings.map(|(flag, var, default, value)| {
        let value = value.or_else(|| env(var).filter(|v| !v.is_empty()));
        (flag, var, value.unwrap_or_else(|| default.to_owned()))
    });
    let port = |(flag, var, value): (&str, &str, String)| {
        value
            .parse::<u16>()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| {
                format!("{flag} (or {var}) must be a port from 1 to 65535, not '{value}'")
            })
    };
    Ok(Some(Mode::Dev(DevArgs {
        edge_port: port(edge)?,
        sim_port: port(sim)?,
        inspector_port: port(inspector)?,
        state_dir: PathBuf::from(state.2),
    })))
}

fn main() -> ExitCode {
    let mode = match parse_args(std::env::args().skip(1), |name| std::env::var(name).ok()) {
        Ok(Some(mode)) => mode,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("stack: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("stack: cannot find its own path");
        return ExitCode::FAILURE;
    };
    // paysim is built beside this binary.
    let paysim = exe.with_file_name("paysim");
    // Raised by Ctrl-C, SIGTERM and SIGHUP, and in test mode when standard
    // input closes.
    let stop = Arc::new(AtomicBool::new(false));
    let raise = Arc::clone(&stop);
    if let Err(e) = ctrlc::set_handler(move || raise.store(true, Ordering::SeqCst)) {
        eprintln!("stack: cannot handle signals: {e}");
        return ExitCode::FAILURE;
    }
    match mode {
        Mode::Test => run_for_tests(&paysim, &stop),
        Mode::Dev(args) => run_dev(&paysim, args, stop),
    }
}

/// The Worker settings passed on from the stack's environment, in either
/// mode: with the rate limits on (wrangler.toml's counts), a quick series
/// of orders for one customer, or a storm from one address, meets 429s; a
/// storefront page on another origin needs its origin listed.
const PASSED_SETTINGS: [&str; 2] = ["RATE_LIMITS", "ALLOWED_ORIGINS"];

fn passed_settings(env: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    PASSED_SETTINGS
        .iter()
        .filter_map(|name| env(name).map(|value| ((*name).to_owned(), value)))
        .collect()
}

fn run_for_tests(paysim: &Path, stop: &Arc<AtomicBool>) -> ExitCode {
    let options = StackOptions {
        dev_simulator_routes: true,
        vars: passed_settings(|name| std::env::var(name).ok()),
        ..StackOptions::default()
    };
    let stack = match Stack::start(paysim, DEFAULT_SECRET, &options) {
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
    let closed = Arc::clone(stop);
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        closed.store(true, Ordering::SeqCst);
    });
    serve(stack, stop, "stack")
}

fn run_dev(paysim: &Path, args: DevArgs, stop: Arc<AtomicBool>) -> ExitCode {
    let root = workspace_root();
    let secret = match dev_vars(&root) {
        Ok((secret, notes)) => {
            for note in notes {
                println!("dev: {note}");
            }
            secret
        }
        Err(message) => {
            eprintln!("dev: {message}");
            return ExitCode::FAILURE;
        }
    };
    let dev = DevSettings {
        sim_port: args.sim_port,
        edge_port: args.edge_port,
        inspector_port: args.inspector_port,
        state_dir: root.join(&args.state_dir),
        log_dir: root.join(".wrangler"),
        echo_wrangler: true,
        stop: Some(Arc::clone(&stop)),
    };
    let shown = |path: PathBuf| {
        path.strip_prefix(&root)
            .map_or_else(|_| path.display().to_string(), |p| p.display().to_string())
    };
    let (wrangler_log, paysim_log) = (
        shown(dev.log_dir.join("wrangler.log")),
        shown(dev.log_dir.join("paysim.log")),
    );
    println!(
        "dev: starting the payment simulator on 127.0.0.1:{} and the Worker (wrangler dev) on \
         127.0.0.1:{}; wrangler's output follows (also in {wrangler_log}), paysim's goes to {paysim_log}",
        dev.sim_port, dev.edge_port
    );
    let options = StackOptions {
        dev_simulator_routes: true,
        vars: passed_settings(|name| std::env::var(name).ok()),
        ..StackOptions::default()
    };
    let stack = match Stack::start_dev(paysim, &secret, &options, &dev) {
        Ok(stack) => stack,
        Err(StackError::Stopped) => {
            println!("dev: stopped");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("dev: {e}");
            if let StackError::PortInUse { .. } = e {
                eprintln!(
                    "dev: is another `make dev` running? Other ports: EDGE_PORT, SIM_PORT and \
                     INSPECTOR_PORT (or --edge-port, --sim-port, --inspector-port)"
                );
            }
            return ExitCode::FAILURE;
        }
    };
    print!(
        "
  ChargeOnce is running:
    edge (POST /v1/orders)  {edge}
    payment simulator       {sim}   (ledger: {sim}/__sim/ledger)
    logs                    {wrangler_log}, {paysim_log}
  Ctrl-C stops both.

",
        edge = stack.edge_url,
        sim = stack.sim_url,
    );
    let _ = std::io::stdout().flush();
    serve(stack, &stop, "dev")
}

/// Until `stop` is raised (then stops everything and succeeds), or a process
/// exits on its own (then says which, with its log, and fails).
fn serve(mut stack: Stack, stop: &AtomicBool, name: &str) -> ExitCode {
    loop {
        if stop.load(Ordering::SeqCst) {
            if name == "dev" {
                println!("\ndev: stopping the Worker and the simulator");
            }
            drop(stack);
            return ExitCode::SUCCESS;
        }
        if let Err(e) = stack.check() {
            // A Ctrl-C reaches a paysim in our process group too; the
            // handler may not have raised `stop` yet.
            std::thread::sleep(Duration::from_millis(200));
            if stop.load(Ordering::SeqCst) {
                return ExitCode::SUCCESS;
            }
            eprintln!("{name}: {e}");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes sure `.dev.vars` at `root` exists (from `.dev.vars.example`) and has
/// an `ORDER_TOKEN_SECRET` of its own: a random one in place of the
/// example's public one (which the edge refuses), or of none (a `.dev.vars`
/// made before order tokens existed lacks it). Reads its
/// `STRIPE_SECRET_KEY`, the key paysim accepts. Returns that key and what
/// was changed.
fn dev_vars(root: &Path) -> Result<(String, Vec<String>), String> {
    let path = root.join(".dev.vars");
    let example = root.join(".dev.vars.example");
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut notes = Vec::new();
    if !path.exists() {
        std::fs::copy(&example, &path)
            .map_err(|e| format!("cannot copy {} to .dev.vars: {e}", example.display()))?;
        notes
            .push("created .dev.vars from .dev.vars.example (the simulator's test key)".to_owned());
    }
    let mut text = read(&path)?;
    match dev_var(&text, "ORDER_TOKEN_SECRET") {
        Some(secret) if secret != EXAMPLE_SECRET => {}
        Some(_) => {
            let line = format!("ORDER_TOKEN_SECRET={}", random_secret()?);
            text = text
                .lines()
                .map(|l| {
                    if l.starts_with("ORDER_TOKEN_SECRET=") {
                        line.as_str()
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n";
            notes.push(
                "gave .dev.vars a random ORDER_TOKEN_SECRET in place of the example's public one, which the edge refuses".to_owned(),
            );
        }
        None => {
            let newline = if text.is_empty() || text.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            text = format!("{text}{newline}ORDER_TOKEN_SECRET={}\n", random_secret()?);
            notes.push("added a random ORDER_TOKEN_SECRET to .dev.vars".to_owned());
        }
    }
    if !notes.is_empty() {
        std::fs::write(&path, &text)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let secret = dev_var(&text, "STRIPE_SECRET_KEY").ok_or(
        ".dev.vars has no STRIPE_SECRET_KEY (the key paysim accepts; see .dev.vars.example)",
    )?;
    Ok((secret, notes))
}

/// 32 random bytes from the system, in hex: an order-token secret.
fn random_secret() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom for a secret: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The value of `NAME=value` in a `.dev.vars` text, without quotes.
fn dev_var(text: &str, name: &str) -> Option<String> {
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))?
        .trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|&q| value.strip_prefix(q)?.strip_suffix(q))
        .unwrap_or(value);
    Some(unquoted.to_owned()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Option<Mode>, String> {
        let var = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        parse_args(args.iter().map(ToString::to_string), var)
    }

    fn dev(edge: u16, sim: u16, inspector: u16, state: &str) -> Option<Mode> {
        Some(Mode::Dev(DevArgs {
            edge_port: edge,
            sim_port: sim,
            inspector_port: inspector,
            state_dir: state.into(),
        }))
    }

    #[test]
    fn test_mode_ignores_the_environment() {
        let env = [("EDGE_PORT", "1"), ("STATE_DIR", "/x")];
        assert_eq!(parse(&[], &env).unwrap(), Some(Mode::Test));
        assert!(parse(&["--edge-port", "1"], &[]).is_err());
    }

    #[test]
    fn dev_defaults_then_env_then_flags() {
        assert_eq!(
            parse(&["--dev"], &[]).unwrap(),
            dev(8787, 8790, 9229, ".wrangler/state")
        );
        let env = [
            ("EDGE_PORT", "8000"),
            ("SIM_PORT", "8001"),
            ("INSPECTOR_PORT", ""),
            ("STATE_DIR", "/tmp/s"),
        ];
        assert_eq!(
            parse(&["--dev"], &env).unwrap(),
            dev(8000, 8001, 9229, "/tmp/s")
        );
        assert_eq!(
            parse(&["--dev", "--edge-port=9000", "--state-dir", "st"], &env).unwrap(),
            dev(9000, 8001, 9229, "st")
        );
    }

    #[test]
    fn only_the_named_worker_settings_are_passed_on() {
        let env = |name: &str| match name {
            "ALLOWED_ORIGINS" => Some("http://127.0.0.1:8000".to_owned()),
            "ORDER_TOKEN_SECRET" => Some("not passed".to_owned()),
            _ => None,
        };
        assert_eq!(
            passed_settings(env),
            [(
                "ALLOWED_ORIGINS".to_owned(),
                "http://127.0.0.1:8000".to_owned()
            )]
        );
    }

    #[test]
    fn bad_arguments_are_reported() {
        assert!(parse(&["--dev", "--edge-port"], &[]).is_err());
        assert!(parse(&["--dev", "--edge-port", "0"], &[]).is_err());
        assert!(parse(&["--dev", "--sim-port", "http"], &[]).is_err());
        assert!(parse(&["--dev"], &[("SIM_PORT", "70000")]).is_err());
        assert!(parse(&["--port", "1"], &[]).is_err());
        assert!(parse(&["--dev=yes"], &[]).is_err());
        assert!(parse(&["--help"], &[]).unwrap().is_none());
    }

    #[test]
    fn dev_vars_are_created_with_a_secret_of_their_own() {
        let root = tempfile::tempdir().unwrap();
        let example = format!(
            "# comment\nSTRIPE_SECRET_KEY=sk_example\nORDER_TOKEN_SECRET={EXAMPLE_SECRET}\n"
        );
        std::fs::write(root.path().join(".dev.vars.example"), &example).unwrap();

        let (secret, notes) = dev_vars(root.path()).unwrap();
        assert_eq!((secret.as_str(), notes.len()), ("sk_example", 2));
        let vars = root.path().join(".dev.vars");
        let made = std::fs::read_to_string(&vars).unwrap();
        let token_secret = dev_var(&made, "ORDER_TOKEN_SECRET").unwrap();
        assert_ne!(token_secret, EXAMPLE_SECRET);
        assert_eq!(token_secret.len(), 64);
        assert!(made.starts_with("# comment\nSTRIPE_SECRET_KEY=sk_example\n"));
        // Kept from then on.
        assert!(dev_vars(root.path()).unwrap().1.is_empty());
        assert_eq!(std::fs::read_to_string(&vars).unwrap(), made);

        // An old .dev.vars: its own key, no order-token secret, no final newline.
        std::fs::write(&vars, "STRIPE_SECRET_KEY=\"sk_mine\"").unwrap();
        let (secret, notes) = dev_vars(root.path()).unwrap();
        assert_eq!((secret.as_str(), notes.len()), ("sk_mine", 1));
        let completed = std::fs::read_to_string(&vars).unwrap();
        assert!(completed.starts_with("STRIPE_SECRET_KEY=\"sk_mine\"\nORDER_TOKEN_SECRET="));

        std::fs::write(&vars, "ORDER_TOKEN_SECRET=x\n").unwrap();
        assert!(dev_vars(root.path()).is_err());
    }

    #[test]
    fn the_example_holds_the_secret_the_edge_refuses() {
        let example = std::fs::read_to_string(workspace_root().join(".dev.vars.example")).unwrap();
        assert_eq!(
            dev_var(&example, "ORDER_TOKEN_SECRET").as_deref(),
            Some(EXAMPLE_SECRET)
        );
    }
}
