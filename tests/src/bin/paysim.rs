//! `paysim [--listen ADDR] [--secret SECRET]`: serves the payment simulator until SIGINT/SIGTERM.
//!
//! Defaults come from `PAYSIM_LISTEN` and `PAYSIM_SECRET`, then `127.0.0.1:8790` and
//! `sk_test_chargeonce_local`. Once bound it prints one line, `paysim listening on http://IP:PORT`,
//! so a harness that asked for port 0 learns the real port.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use chargeonce_tests::sim::{serve, SimConfig, DEFAULT_SECRET};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

const DEFAULT_LISTEN: &str = "127.0.0.1:8790";
const USAGE: &str = "usage: paysim [--listen ADDR] [--secret SECRET]
  --listen ADDR    address to bind, port 0 for any (env PAYSIM_LISTEN, default 127.0.0.1:8790)
  --secret SECRET  bearer API key to accept (env PAYSIM_SECRET, default sk_test_chargeonce_local)";

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    secret: String,
}

/// `Ok(None)` means `--help` was asked for.
fn parse_args(
    mut argv: impl Iterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Args>, String> {
    let mut listen = env("PAYSIM_LISTEN").unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let mut secret = env("PAYSIM_SECRET").unwrap_or_else(|| DEFAULT_SECRET.to_owned());
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let target = match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => &mut listen,
            "--secret" => &mut secret,
            other => return Err(format!("unknown argument '{other}'")),
        };
        *target = match inline.or_else(|| argv.next()) {
            Some(value) => value,
            None => return Err(format!("{flag} needs a value")),
        };
    }
    let listen = listen
        .parse()
        .map_err(|e| format!("invalid listen address '{listen}': {e} (expected IP:PORT)"))?;
    if secret.is_empty() {
        return Err("the secret must not be empty".to_owned());
    }
    Ok(Some(Args { listen, secret }))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1), |name| std::env::var(name).ok()) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("paysim: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paysim: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> io::Result<()> {
    // Installed before announcing the port, so a harness that signals right after reading the
    // line still gets a clean exit.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr()?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "paysim listening on http://{addr}")?;
    stdout.flush()?;
    drop(stdout);

    let config = SimConfig {
        secret: args.secret,
    };
    tokio::select! {
        served = serve(listener, config) => served,
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Option<Args>, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_args(args.iter().map(|a| (*a).to_owned()), move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults_then_env_then_flags() {
        let args = parse(&[], &[]).unwrap().unwrap();
        assert_eq!(args.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(args.secret, DEFAULT_SECRET);

        let env = [
            ("PAYSIM_LISTEN", "127.0.0.1:0"),
            ("PAYSIM_SECRET", "sk_env"),
        ];
        let args = parse(&[], &env).unwrap().unwrap();
        assert_eq!((args.listen.port(), args.secret.as_str()), (0, "sk_env"));

        let args = parse(&["--listen", "0.0.0.0:9", "--secret=sk_flag"], &env)
            .unwrap()
            .unwrap();
        assert_eq!(args.listen.to_string(), "0.0.0.0:9");
        assert_eq!(args.secret, "sk_flag");
    }

    #[test]
    fn bad_arguments_are_reported() {
        assert!(parse(&["--listen"], &[]).is_err());
        assert!(parse(&["--listen", "localhost"], &[]).is_err());
        assert!(parse(&["--port", "1"], &[]).is_err());
        assert!(parse(&["--secret", ""], &[]).is_err());
        assert!(parse(&["--help"], &[]).unwrap().is_none());
    }
}
