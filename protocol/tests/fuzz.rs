//! Fuzzing on stable: the protocol's parsers under random input for a time
//! budget, with proptest's generators and shrinking driven by hand.
//!
//! `cargo fuzz` needs a nightly compiler; this runs wherever `cargo test` does.
//! Each target runs for `FUZZ_SECS` seconds (default 2, so that
//! `cargo test --workspace` stays quick; `make fuzz` gives each a minute). The
//! seed is random and printed; `FUZZ_SEED` replays a run. A failing input is
//! shrunk to a small one and printed, and the test exits non-zero; a panic is
//! a failure like any other.
//!
//! - `key`: the `Idempotency-Key` header, from near-valid keys to arbitrary
//!   text. Accepted keys obey the documented syntax, the quoted form of a key
//!   is the same key, and parsing is idempotent.
//! - `order`: request bodies, from arbitrary bytes and JSON to objects built
//!   from the real field names, and whole requests through
//!   `check_order_request`. A body is accepted exactly when it follows the
//!   documented rules, and the canonical form is a fixed point.
//! - `fingerprint`: one valid order written in many surface forms has one
//!   fingerprint; changing any field changes it.
#![allow(clippy::unwrap_used, missing_docs)]

use chargeonce_protocol::key::{MAX_KEY_LEN, MIN_KEY_LEN};
use chargeonce_protocol::order::{MAX_AMOUNT, MAX_FIELD_LEN};
use chargeonce_protocol::{
    check_order_request, Fingerprint, IdempotencyKey, KeyError, Order, OrderError, RequestHead,
    MAX_BODY_BYTES, ORDERS_PATH,
};
use proptest::char::range;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Map, Value};
use std::cell::{Cell, RefCell};
use std::fmt::{self, Debug, Write as _};
use std::hash::{BuildHasher, RandomState};
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

// The harness.

/// What a property says about one input; `Err` says why it does not hold.
type Verdict = Result<(), String>;

/// Fails the property with a message unless the condition holds.
macro_rules! ensure {
    ($holds:expr, $($why:tt)+) => {
        if !$holds {
            return Err(format!($($why)+));
        }
    };
}

const DEFAULT_SECS: f64 = 2.0;

/// Shrinking stops after this many steps or this long, and reports the
/// smallest failing input found so far.
const MAX_SHRINK_STEPS: u32 = 100_000;
const MAX_SHRINK_TIME: Duration = Duration::from_secs(60);

/// Failing inputs are shown up to this many characters of their `Debug` form.
const MAX_SHOWN: usize = 2_000;

thread_local! {
    /// Whether a property is running: its panics are failures to report,
    /// not messages to print once per shrinking step.
    static IN_PROPERTY: Cell<bool> = const { Cell::new(false) };
    /// The last such panic's message and place.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

struct Run {
    target: &'static str,
    executions: u64,
    elapsed: Duration,
    failure: Option<String>,
}

fn main() -> ExitCode {
    let secs = match std::env::var("FUZZ_SECS") {
        Err(_) => DEFAULT_SECS,
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs >= 0.0 => secs,
            _ => {
                eprintln!("fuzz: FUZZ_SECS must be a number of seconds, not {text:?}");
                return ExitCode::from(2);
            }
        },
    };
    let seed = match std::env::var("FUZZ_SEED") {
        Err(_) => RandomState::new().hash_one((SystemTime::now(), std::process::id())),
        Ok(text) => match u64::from_str_radix(text.trim().trim_start_matches("0x"), 16) {
            Ok(seed) => seed,
            Err(_) => {
                eprintln!("fuzz: FUZZ_SEED must be the 16 hex digits a run printed, not {text:?}");
                return ExitCode::from(2);
            }
        },
    };
    let budget = Duration::from_secs_f64(secs);
    println!("fuzz: seed {seed:016x} (FUZZ_SEED replays it), {secs} s per target (FUZZ_SECS)");

    let print_panic = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if IN_PROPERTY.get() {
            LAST_PANIC.set(Some(info.to_string()));
        } else {
            print_panic(info);
        }
    }));
    let runs = [
        fuzz("key", seed, budget, key_header(), |header: &String| {
            key_property(header)
        }),
        fuzz("order", seed, budget, order_input(), order_property),
        fuzz(
            "fingerprint",
            seed,
            budget,
            fingerprint_input(),
            fingerprint_property,
        ),
    ];
    drop(panic::take_hook());

    for run in &runs {
        if let Some(failure) = &run.failure {
            println!(
                "fuzz: {} FAILED after {} executions: {failure}",
                run.target, run.executions
            );
        }
    }
    println!(
        "{:<12} {:>12} {:>8}  result",
        "target", "executions", "seconds"
    );
    for run in &runs {
        let result = if run.failure.is_some() {
            "FAILED"
        } else {
            "clean"
        };
        println!(
            "{:<12} {:>12} {:>8.1}  {result}",
            run.target,
            run.executions,
            run.elapsed.as_secs_f64()
        );
    }
    let executions: u64 = runs.iter().map(|run| run.executions).sum();
    let elapsed: f64 = runs.iter().map(|run| run.elapsed.as_secs_f64()).sum();
    let failed = runs.iter().filter(|run| run.failure.is_some()).count();
    if failed == 0 {
        println!("fuzz: {executions} executions in {elapsed:.1} s, all clean");
        ExitCode::SUCCESS
    } else {
        println!(
            "fuzz: {executions} executions in {elapsed:.1} s, {failed} of {} targets FAILED; \
             FUZZ_SEED={seed:016x} replays them",
            runs.len()
        );
        ExitCode::FAILURE
    }
}

/// Runs `property` on inputs drawn from `strategy` until `budget` is spent or
/// an input fails, which is then shrunk.
fn fuzz<S>(
    target: &'static str,
    seed: u64,
    budget: Duration,
    strategy: S,
    property: impl Fn(&S::Value) -> Verdict,
) -> Run
where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, target_rng(seed, target));
    let start = Instant::now();
    let mut executions = 0;
    while start.elapsed() < budget {
        let mut tree = match strategy.new_tree(&mut runner) {
            Ok(tree) => tree,
            Err(reason) => {
                return Run {
                    target,
                    executions,
                    elapsed: start.elapsed(),
                    failure: Some(format!("the strategy gave up: {reason}")),
                }
            }
        };
        executions += 1;
        if let Err(why) = check(&property, &tree.current()) {
            let elapsed = start.elapsed();
            return Run {
                target,
                executions,
                elapsed,
                failure: Some(shrink(&mut tree, &property, why)),
            };
        }
    }
    Run {
        target,
        executions,
        elapsed: start.elapsed(),
        failure: None,
    }
}

/// Each target draws from its own stream, so that how long one target ran
/// does not change what the next one sees under the same seed.
fn target_rng(seed: u64, target: &str) -> TestRng {
    // FNV-1a of the name, then splitmix64 to fill ChaCha's 32-byte seed.
    let mut state = target.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    }) ^ seed;
    let mut bytes = [0; 32];
    for chunk in bytes.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Runs the property, turning a panic into a failure that says where it was.
fn check<T>(property: &impl Fn(&T) -> Verdict, input: &T) -> Verdict {
    IN_PROPERTY.set(true);
    let verdict = panic::catch_unwind(AssertUnwindSafe(|| property(input)));
    IN_PROPERTY.set(false);
    verdict.unwrap_or_else(|_| {
        let place = LAST_PANIC.take();
        Err(place.unwrap_or_else(|| "panicked (no message)".into()))
    })
}

/// Proptest's shrinking: simplify while the input still fails, step back
/// (complicate) when a simpler one passes, until neither can move.
fn shrink<T>(tree: &mut T, property: &impl Fn(&T::Value) -> Verdict, mut why: String) -> String
where
    T: ValueTree,
    T::Value: Debug,
{
    let start = Instant::now();
    let mut smallest = tree.current();
    let (mut steps, mut shrinks) = (0, 0);
    if tree.simplify() {
        while steps < MAX_SHRINK_STEPS && start.elapsed() < MAX_SHRINK_TIME {
            steps += 1;
            let candidate = tree.current();
            match check(property, &candidate) {
                Err(still) => {
                    smallest = candidate;
                    why = still;
                    shrinks += 1;
                    if !tree.simplify() {
                        break;
                    }
                }
                Ok(()) => {
                    if !tree.complicate() {
                        break;
                    }
                }
            }
        }
    }
    format!(
        "{why}\n  minimal input ({shrinks} shrinks in {steps} steps): {}",
        shown(&smallest)
    )
}

/// The `Debug` form, cut short for the terminal.
fn shown(value: &impl Debug) -> String {
    let mut text = format!("{value:?}");
    if text.len() > MAX_SHOWN {
        let mut cut = MAX_SHOWN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let more = text.len() - cut;
        text.truncate(cut);
        let _ = write!(text, "… ({more} more bytes)");
    }
    text
}

fn text_of(chars: Vec<char>) -> String {
    chars.into_iter().collect()
}

/// Bytes shown as a byte string rather than a list of numbers.
#[derive(Clone)]
struct Bytes(Vec<u8>);

impl Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

// Target `key`: the Idempotency-Key header.

/// One character from one `u32` (a `prop_oneof!` per character costs five
/// times as much): 14 in 16 from `common`, one in 16 from `rare`, one in 16
/// any character at all. Shrinks towards `common[0]`.
fn char_from(common: Vec<char>, rare: Vec<char>) -> impl Strategy<Value = char> {
    any::<u32>().prop_map(move |n| {
        let rest = n / 16;
        match n % 16 {
            15 => char::from_u32(rest % 0x11_0000).unwrap_or('\u{fffd}'),
            14 => rare[rest as usize % rare.len()],
            _ => common[rest as usize % common.len()],
        }
    })
}

fn visible_ascii() -> Vec<char> {
    ('!'..='~').collect()
}

/// Characters a header may hold, weighted towards those the parser treats
/// specially or must refuse.
fn header_char() -> impl Strategy<Value = char> {
    let mut common = visible_ascii();
    for _ in 0..6 {
        common.extend([' ', '\t', '"', '\\', ',']);
    }
    let mut rare: Vec<char> = ('\0'..='\u{1f}').collect();
    rare.extend([
        '\u{7f}', '\u{85}', '\u{a0}', 'é', 'ß', '中', '😀', '\u{200b}', '\u{2028}', '\u{feff}',
    ]);
    char_from(common, rare)
}

/// Visible ASCII text, cheaply.
fn visible(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    vec(any::<u8>(), len).prop_map(|bytes| {
        bytes
            .into_iter()
            .map(|b| char::from(b'!' + b % 94))
            .collect()
    })
}

fn key_header() -> impl Strategy<Value = String> {
    let blank = || vec(select(vec![' ', '\t']), 0..3).prop_map(text_of);
    prop_oneof![
        // Mostly well formed, so that keys near both length limits are
        // accepted often.
        3 => visible(0..300),
        3 => vec(header_char(), 0..300).prop_map(text_of),
        // The structured-field string form, escaped or not, closed or not.
        3 => (blank(), vec(header_char(), 0..300), any::<bool>(), any::<bool>(), blank())
            .prop_map(|(before, inner, escaped, closed, after)| {
                let inner = text_of(inner);
                let inner = if escaped { escape_quoted(&inner) } else { inner };
                let close = if closed { "\"" } else { "" };
                format!("{before}\"{inner}{close}{after}")
            }),
        // A repeated header, as runtimes join it.
        1 => (visible(0..40), visible(0..40)).prop_map(|(a, b)| format!("{a}, {b}")),
        2 => vec(any::<u8>(), 0..300).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
    ]
}

/// The inside of a structured-field string holding `text`.
fn escape_quoted(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

fn key_property(header: &str) -> Verdict {
    let parsed = IdempotencyKey::parse(Some(header));
    // The documented syntax, checked independently of the parser: a bare key
    // of 16 to 255 visible ASCII characters, with optional blanks around it.
    let bare = header.trim_matches([' ', '\t']);
    let well_formed = !bare.starts_with('"')
        && (MIN_KEY_LEN..=MAX_KEY_LEN).contains(&bare.len())
        && bare.bytes().all(|b| b.is_ascii_graphic());
    if well_formed {
        ensure!(
            parsed.as_ref().map(IdempotencyKey::as_str) == Ok(bare),
            "a well-formed bare key was refused or altered: {parsed:?}"
        );
    }
    let key = match parsed {
        Ok(key) => key,
        Err(KeyError::Missing) => return Err("a header that is present was called missing".into()),
        Err(_) => return Ok(()),
    };
    let text = key.as_str();
    ensure!(
        (MIN_KEY_LEN..=MAX_KEY_LEN).contains(&text.len()),
        "accepted a key of {} bytes: {text:?}",
        text.len()
    );
    ensure!(
        text.bytes().all(|b| b.is_ascii_graphic()),
        "accepted a key that is not all visible ASCII: {text:?}"
    );
    let quoted = format!("\"{}\"", escape_quoted(text));
    let from_quoted = IdempotencyKey::parse(Some(&quoted));
    ensure!(
        from_quoted.as_ref() == Ok(&key),
        "the quoted form {quoted:?} of the accepted key {text:?} parses as {from_quoted:?}"
    );
    // A key that starts with a quote reads as the quoted form when sent bare.
    if !text.starts_with('"') {
        let again = IdempotencyKey::parse(Some(text));
        ensure!(
            again.as_ref() == Ok(&key),
            "parsing the accepted key {text:?} again gives {again:?}"
        );
    }
    Ok(())
}

// Target `order`: request bodies and whole requests.

/// The members an order has today. The strategies never make up other real
/// names, so an optional member added later does not change their verdicts.
const FIELDS: &[&str] = &[
    "order_ref",
    "amount",
    "currency",
    "payment_method",
    "customer",
];

/// Names that are not members of an order and never will be.
const MISSPELT: &[&str] = &[
    "ammount",
    "Amount",
    "currency ",
    "order-ref",
    "",
    "paymentMethod",
];

/// Raw JSON values that sit on the rules' edges.
const EDGE_VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "-0",
    "1999",
    "99999999",
    "100000000",
    "1.0",
    "19.99",
    "1e3",
    "1E2",
    "-0.5",
    "0.0",
    "18446744073709551615",
    "18446744073709551616",
    "100000000000000000000000000000",
    "1e400",
    "-1e400",
    "null",
    "true",
    "false",
    "[]",
    "{}",
    r#""""#,
    r#""  ""#,
    r#""usd""#,
    r#""USD""#,
    r#""us""#,
    r#""usdd""#,
    r#""u5d""#,
    r#""\u0000""#,
    r#""a\u0007b""#,
    r#""\ud800""#,
    r#""\udc00x""#,
    r#""\u2028""#,
    r#""a\u0000""#,
];

/// A valid order's fields, built as JSON (never as an `Order` literal).
#[derive(Debug, Clone)]
struct ValidOrder {
    order_ref: String,
    amount: u64,
    currency: String,
    payment_method: String,
    customer: Option<String>,
}

impl ValidOrder {
    fn members(&self) -> Map<String, Value> {
        let mut members = Map::new();
        members.insert("order_ref".into(), json!(self.order_ref));
        members.insert("amount".into(), json!(self.amount));
        members.insert("currency".into(), json!(self.currency));
        members.insert("payment_method".into(), json!(self.payment_method));
        if let Some(customer) = &self.customer {
            members.insert("customer".into(), json!(customer));
        }
        members
    }

    fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.members()).unwrap()
    }
}

/// Characters of valid text: no control characters, but quotes,
/// backslashes, slashes, non-ASCII and characters JSON may escape.
fn text_char() -> impl Strategy<Value = char> {
    let mut common = visible_ascii();
    common.push(' ');
    let rare = vec![
        '"',
        '\\',
        '/',
        'é',
        '中',
        '😀',
        '\u{a0}',
        '\u{200b}',
        '\u{2028}',
        '\u{feff}',
        '\u{ffff}',
        '\u{10ffff}',
    ];
    char_from(common, rare).prop_map(|c| if c.is_control() { '?' } else { c })
}

/// Non-blank text of at most MAX_FIELD_LEN bytes without control characters.
fn valid_text() -> impl Strategy<Value = String> {
    prop_oneof![vec(text_char(), 1..40), vec(text_char(), 200..300)].prop_map(|chars| {
        let mut text = String::new();
        for c in chars {
            if text.len() + c.len_utf8() > MAX_FIELD_LEN {
                break;
            }
            text.push(c);
        }
        if text.trim().is_empty() {
            let first = text.chars().next().map_or(0, char::len_utf8);
            text.replace_range(..first, "x");
        }
        text
    })
}

fn valid_order() -> impl Strategy<Value = ValidOrder> {
    (
        valid_text(),
        prop_oneof![Just(1), Just(MAX_AMOUNT), 1..=MAX_AMOUNT],
        vec(range('a', 'z'), 3).prop_map(text_of),
        valid_text(),
        proptest::option::of(valid_text()),
    )
        .prop_map(
            |(order_ref, amount, currency, payment_method, customer)| ValidOrder {
                order_ref,
                amount,
                currency,
                payment_method,
                customer,
            },
        )
}

#[derive(Debug, Clone)]
enum OrderInput {
    /// Any bytes at all.
    Bytes(Bytes),
    /// A valid body with a few bytes flipped, dropped, inserted or cut off.
    Mutated(Bytes),
    /// Any JSON value.
    Json(String),
    /// An object written member by member from the real names (and
    /// misspelt ones), with valid, invalid and repeated members.
    Members(Vec<(String, String)>),
    /// Brackets nested `depth` deep, bare or as an order's member.
    Nested {
        depth: usize,
        objects: bool,
        in_order: bool,
        closed: bool,
    },
    /// A whole request, head and body.
    Request(RequestInput),
}

#[derive(Debug, Clone)]
struct RequestInput {
    method: String,
    content_type: Option<String>,
    content_length: Option<String>,
    key: Option<String>,
    body: Bytes,
}

fn order_input() -> impl Strategy<Value = OrderInput> {
    prop_oneof![
        2 => vec(any::<u8>(), 0..512).prop_map(|bytes| OrderInput::Bytes(Bytes(bytes))),
        3 => mutated_body().prop_map(OrderInput::Mutated),
        2 => json_value().prop_map(|value| OrderInput::Json(value.to_string())),
        4 => members().prop_map(OrderInput::Members),
        1 => (0..4_000usize, any::<bool>(), any::<bool>(), proptest::bool::weighted(0.8))
            .prop_map(|(depth, objects, in_order, closed)| OrderInput::Nested {
                depth,
                objects,
                in_order,
                closed,
            }),
        3 => request_input().prop_map(OrderInput::Request),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Delete(Index),
    Insert(Index, u8),
    Cut(Index),
}

fn mutated_body() -> impl Strategy<Value = Bytes> {
    let byte = prop_oneof![
        any::<u8>(),
        select(b"{}[]\",:\\ 0123456789-+.eEnulltrfa\x00\x1f\x7f\xc3\xa9\xff".to_vec()),
    ];
    let mutation = prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        any::<Index>().prop_map(Mutation::Delete),
        (any::<Index>(), byte).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<Index>().prop_map(Mutation::Cut),
    ];
    (valid_order(), vec(mutation, 1..4)).prop_map(|(order, mutations)| {
        let mut body = order.body();
        for mutation in mutations {
            let len = body.len();
            match mutation {
                Mutation::Insert(at, byte) => body.insert(at.index(len + 1), byte),
                _ if len == 0 => {}
                Mutation::Flip(at, bit) => body[at.index(len)] ^= 1 << bit,
                Mutation::Delete(at) => {
                    body.remove(at.index(len));
                }
                Mutation::Cut(at) => body.truncate(at.index(len)),
            }
        }
        Bytes(body)
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let text = || vec(header_char(), 0..20).prop_map(text_of);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        select(vec![0, 1, MAX_AMOUNT, MAX_AMOUNT + 1, u64::MAX]).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        let name = prop_oneof![
            select(FIELDS).prop_map(str::to_owned),
            vec(header_char(), 0..12).prop_map(text_of),
        ];
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            vec((name, inner), 0..8)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// One member's value, as raw JSON text (so that it can be a number no
/// `Value` holds, such as `1e400`).
fn raw_value() -> impl Strategy<Value = String> {
    let code = prop_oneof![
        8 => range('a', 'z'),
        1 => range('A', 'Z'),
        1 => select(vec!['5', 'é', ' ']),
    ];
    prop_oneof![
        3 => valid_text().prop_map(|text| Value::String(text).to_string()),
        3 => select(EDGE_VALUES).prop_map(str::to_owned),
        2 => (0..=MAX_AMOUNT + 2).prop_map(|n| n.to_string()),
        2 => vec(code, 2..5).prop_map(|code| Value::String(text_of(code)).to_string()),
        1 => vec(text_char(), 240..270).prop_map(|text| Value::String(text_of(text)).to_string()),
        1 => json_value().prop_map(|value| value.to_string()),
    ]
}

/// A valid order's members, a few dropped, and a few others put anywhere
/// (so that some repeat a member, before or after it).
fn members() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        8 => select(FIELDS),
        1 => select(MISSPELT),
    ]
    .prop_map(str::to_owned);
    (
        valid_order(),
        vec(proptest::bool::weighted(0.9), FIELDS.len()),
        vec((any::<Index>(), (name, raw_value())), 0..4),
    )
        .prop_map(|(order, keep, extra)| {
            let mut members: Vec<(String, String)> = order
                .members()
                .into_iter()
                .zip(keep)
                .filter(|(_, keep)| *keep)
                .map(|((name, value), _)| (name, value.to_string()))
                .collect();
            for (at, member) in extra {
                members.insert(at.index(members.len() + 1), member);
            }
            members
        })
}

fn members_body(members: &[(String, String)]) -> Vec<u8> {
    let members: Vec<String> = members
        .iter()
        .map(|(name, value)| format!("{}:{value}", Value::String(name.clone())))
        .collect();
    format!("{{{}}}", members.join(",")).into_bytes()
}

fn nested_body(depth: usize, objects: bool, in_order: bool, closed: bool) -> Vec<u8> {
    let (open, close) = if objects {
        (r#"{"a":"#, "}")
    } else {
        ("[", "]")
    };
    let mut body = String::new();
    if in_order {
        body.push_str(r#"{"amount":1,"currency":"usd","payment_method":"pm","order_ref":"#);
    }
    body.push_str(&open.repeat(depth));
    body.push('1');
    if closed {
        body.push_str(&close.repeat(depth));
    }
    if in_order {
        body.push('}');
    }
    body.into_bytes()
}

fn request_input() -> impl Strategy<Value = RequestInput> {
    let text = |len: std::ops::Range<usize>| vec(header_char(), len).prop_map(text_of);
    // Weighted so that about a third of the requests get past the head.
    let method = prop_oneof![
        8 => Just("POST".to_owned()),
        2 => select(vec!["GET", "PUT", "PATCH", "DELETE", "post", "", " POST"]).prop_map(str::to_owned),
        1 => text(0..8),
    ];
    let content_type = prop_oneof![
        1 => Just(None),
        6 => Just(Some("application/json".to_owned())),
        4 => select(vec![
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/json;charset=\"utf-8\"",
            "application/json; charset=latin1",
            "application/json;",
            "application/json; charset",
            "application/json; =utf-8",
            "application/json, text/plain",
            "application/jsonp",
            "text/plain",
            ";;;",
            "",
        ])
        .prop_map(|value| Some(value.to_owned())),
        1 => text(0..40).prop_map(Some),
    ];
    let content_length = prop_oneof![
        4 => Just(None),
        3 => (0..=2 * MAX_BODY_BYTES as u64).prop_map(|n| Some(n.to_string())),
        2 => select(vec![
            "16384",
            "16385",
            " 16385 ",
            "-1",
            "+1",
            "18446744073709551615",
            "18446744073709551616",
            "1e9",
            "0x10",
            "",
        ])
        .prop_map(|value| Some(value.to_owned())),
        1 => text(0..12).prop_map(Some),
    ];
    let key = prop_oneof![
        1 => Just(None),
        4 => visible(MIN_KEY_LEN..MAX_KEY_LEN + 1).prop_map(Some),
        2 => key_header().prop_map(Some),
    ];
    let body = prop_oneof![
        4 => valid_order().prop_map(|order| Bytes(order.body())),
        2 => members().prop_map(|members| Bytes(members_body(&members))),
        1 => mutated_body(),
        1 => vec(any::<u8>(), 0..64).prop_map(Bytes),
        // Around the size limit, padded with whitespace.
        1 => (valid_order(), MAX_BODY_BYTES - 2..MAX_BODY_BYTES + 3).prop_map(|(order, len)| {
            let mut body = order.body();
            if body.len() < len {
                body.resize(len, b' ');
            }
            Bytes(body)
        }),
    ];
    (method, content_type, content_length, key, body).prop_map(
        |(method, content_type, content_length, key, body)| RequestInput {
            method,
            content_type,
            content_length,
            key,
            body,
        },
    )
}

fn order_property(input: &OrderInput) -> Verdict {
    match input {
        OrderInput::Bytes(Bytes(body)) | OrderInput::Mutated(Bytes(body)) => body_property(body),
        OrderInput::Json(text) => body_property(text.as_bytes()),
        OrderInput::Members(members) => body_property(&members_body(members)),
        &OrderInput::Nested {
            depth,
            objects,
            in_order,
            closed,
        } => {
            let body = nested_body(depth, objects, in_order, closed);
            body_property(&body)?;
            // Far past any sane depth, the parser's limit must have stopped it.
            if depth >= 1_000 {
                let parsed = Order::from_json(&body);
                ensure!(
                    matches!(parsed, Err(OrderError::NotJson(_))),
                    "nesting {depth} deep gives {parsed:?}, not a JSON error"
                );
            }
            Ok(())
        }
        OrderInput::Request(request) => request_property(request),
    }
}

/// The documented rules for free text: not blank, at most MAX_FIELD_LEN
/// bytes, no control characters.
fn text_ok(text: &str) -> bool {
    !text.trim().is_empty() && text.len() <= MAX_FIELD_LEN && !text.chars().any(char::is_control)
}

fn currency_ok(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_lowercase())
}

/// The documented rules, applied to the JSON object independently of the
/// crate's validation.
fn follows_rules(members: &Map<String, Value>) -> bool {
    let text = |name: &str, required: bool| match members.get(name) {
        None | Some(Value::Null) => !required,
        Some(Value::String(text)) => text_ok(text),
        Some(_) => false,
    };
    members.keys().all(|name| FIELDS.contains(&name.as_str()))
        && members
            .get("amount")
            .and_then(Value::as_u64)
            .is_some_and(|amount| (1..=MAX_AMOUNT).contains(&amount))
        && members
            .get("currency")
            .and_then(Value::as_str)
            .is_some_and(currency_ok)
        && text("order_ref", true)
        && text("payment_method", true)
        && text("customer", false)
}

/// Whether a JSON object names a member more than once (serde_json's `Value`
/// keeps only the last, so the rules cannot see it).
fn repeats_a_member(body: &[u8]) -> bool {
    struct Repeats(bool);
    impl<'de> serde::Deserialize<'de> for Repeats {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Repeats;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Repeats, A::Error> {
                    let mut names = std::collections::BTreeSet::new();
                    let mut repeats = false;
                    while let Some((name, serde::de::IgnoredAny)) = map.next_entry::<String, _>()? {
                        repeats |= !names.insert(name);
                    }
                    Ok(Repeats(repeats))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_slice::<Repeats>(body).is_ok_and(|r| r.0)
}

/// `Order::from_json` accepts a body exactly when it follows the rules (each
/// member once), the order holds what the body said, and its canonical form
/// is a fixed point.
fn body_property(body: &[u8]) -> Verdict {
    let parsed = Order::from_json(body);
    let (order, members) = match (parsed, serde_json::from_slice::<Value>(body)) {
        (Err(OrderError::NotJson(_)), Err(_)) => return Ok(()),
        (Err(OrderError::NotAnObject(_)), Ok(value)) if !value.is_object() => return Ok(()),
        (Err(OrderError::InvalidFields(problems)), Ok(Value::Object(members))) => {
            ensure!(
                !problems.is_empty(),
                "refused with an empty list of problems"
            );
            ensure!(
                !follows_rules(&members) || repeats_a_member(body),
                "an order that follows every rule was refused: {problems:?}"
            );
            return Ok(());
        }
        (Ok(order), Ok(Value::Object(members))) => (order, members),
        (parsed, value) => {
            return Err(format!(
                "Order::from_json gives {} for a body serde_json reads as {}",
                shown(&parsed),
                shown(&value)
            ))
        }
    };
    ensure!(
        follows_rules(&members),
        "accepted an order that breaks the rules: {order:?}"
    );
    ensure!(
        !repeats_a_member(body),
        "accepted a body that repeats a member: {order:?}"
    );
    ensure!(
        (1..=MAX_AMOUNT).contains(&order.amount),
        "accepted the amount {}",
        order.amount
    );
    ensure!(
        currency_ok(&order.currency),
        "accepted the currency {:?}",
        order.currency
    );
    for (name, text) in [
        ("order_ref", Some(&order.order_ref)),
        ("payment_method", Some(&order.payment_method)),
        ("customer", order.customer.as_ref()),
    ] {
        if let Some(text) = text {
            ensure!(text_ok(text), "accepted the {name} {text:?}");
        }
        let sent = members.get(name).and_then(Value::as_str);
        ensure!(
            sent == text.map(String::as_str),
            "the body's {name} {sent:?} became {text:?}"
        );
    }
    let sent = members.get("amount").and_then(Value::as_u64);
    ensure!(
        sent == Some(order.amount),
        "the body's amount {sent:?} became {}",
        order.amount
    );
    let sent = members.get("currency").and_then(Value::as_str);
    ensure!(
        sent == Some(order.currency.as_str()),
        "the body's currency {sent:?} became {:?}",
        order.currency
    );
    let canonical = order.canonical_json();
    let again = Order::from_json(canonical.as_bytes());
    ensure!(
        again.as_ref() == Ok(&order),
        "the canonical form {canonical:?} of {order:?} parses as {again:?}"
    );
    let recanonical = again.map(|again| again.canonical_json());
    ensure!(
        recanonical.as_ref() == Ok(&canonical),
        "canonicalising {canonical:?} again gives {recanonical:?}"
    );
    Ok(())
}

/// `check_order_request` never panics, refuses only with a 4xx problem,
/// accepts only what every check accepts, and accepts a plainly good request.
fn request_property(request: &RequestInput) -> Verdict {
    let head = RequestHead {
        method: &request.method,
        content_type: request.content_type.as_deref(),
        content_length: request.content_length.as_deref(),
        idempotency_key: request.key.as_deref(),
    };
    let body = &request.body.0;
    let key = IdempotencyKey::parse(request.key.as_deref());
    let order = Order::from_json(body);
    match check_order_request(&head, body) {
        Err(problem) => {
            ensure!(
                (400..500).contains(&problem.status()),
                "refused with status {}: {problem:?}",
                problem.status()
            );
            let plainly_good = request.method == "POST"
                && request.content_type.as_deref() == Some("application/json")
                && request.content_length.is_none()
                && body.len() <= MAX_BODY_BYTES
                && key.is_ok()
                && order.is_ok();
            ensure!(!plainly_good, "a good request was refused: {problem:?}");
        }
        Ok(accepted) => {
            ensure!(
                request.method == "POST",
                "accepted the method {:?}",
                request.method
            );
            ensure!(
                body.len() <= MAX_BODY_BYTES,
                "accepted a body of {} bytes",
                body.len()
            );
            let declared = request
                .content_length
                .as_deref()
                .and_then(|value| value.trim().parse::<u64>().ok());
            ensure!(
                declared.is_none_or(|declared| declared <= MAX_BODY_BYTES as u64),
                "accepted a declared length of {declared:?}"
            );
            ensure!(
                key.as_ref() == Ok(accepted.key.key()),
                "accepted the key {:?} where the header parses as {key:?}",
                accepted.key.key()
            );
            let order = order.map_err(|e| format!("accepted a body the order refuses: {e}"))?;
            ensure!(
                accepted.order == order,
                "accepted {:?} from a body that reads as {order:?}",
                accepted.order
            );
            ensure!(
                accepted.fingerprint == Fingerprint::of("POST", ORDERS_PATH, &order),
                "the request's fingerprint is not the order's"
            );
        }
    }
    Ok(())
}

// Target `fingerprint`: one order, many surface forms.

/// Insignificant whitespace, some of it none.
const WHITESPACE: [&str; 7] = ["", "", "", " ", "\n", "\t", "\r\n  \t"];

/// How to write an order's JSON: each list is used in turn, over and over.
#[derive(Debug, Clone)]
struct Surface {
    /// Sort keys that shuffle the members.
    shuffle: Vec<u64>,
    /// What goes at each place JSON allows whitespace (indices into
    /// `WHITESPACE`).
    spaces: Vec<u8>,
    /// How each character of a string (names too) is written: 0 as is, 1 and
    /// 2 as `\u` escapes in lower and upper case hex, 3 with a short escape
    /// where one exists (`\/`).
    escapes: Vec<u8>,
    /// `"customer":null` when the order has no customer.
    null_customer: bool,
}

#[derive(Debug, Clone)]
struct FingerprintInput {
    order: ValidOrder,
    surfaces: Vec<Surface>,
}

fn fingerprint_input() -> impl Strategy<Value = FingerprintInput> {
    let surface = (
        vec(any::<u64>(), 1..8),
        vec(0..WHITESPACE.len() as u8, 1..16),
        vec(
            prop_oneof![6 => Just(0u8), 1 => Just(1), 1 => Just(2), 1 => Just(3)],
            1..16,
        ),
        any::<bool>(),
    )
        .prop_map(|(shuffle, spaces, escapes, null_customer)| Surface {
            shuffle,
            spaces,
            escapes,
            null_customer,
        });
    (valid_order(), vec(surface, 1..6))
        .prop_map(|(order, surfaces)| FingerprintInput { order, surfaces })
}

/// Writes JSON the way a `Surface` says.
struct Writer<'a> {
    out: String,
    surface: &'a Surface,
    space: usize,
    escape: usize,
}

impl Writer<'_> {
    fn space(&mut self) {
        let spaces = &self.surface.spaces;
        let which = spaces[self.space % spaces.len()];
        self.space += 1;
        self.out
            .push_str(WHITESPACE[usize::from(which) % WHITESPACE.len()]);
    }

    fn token(&mut self, token: char) {
        self.space();
        self.out.push(token);
        self.space();
    }

    fn string(&mut self, text: &str) {
        self.out.push('"');
        for c in text.chars() {
            let escapes = &self.surface.escapes;
            let how = escapes[self.escape % escapes.len()];
            self.escape += 1;
            match (how, c) {
                (1 | 2, c) => self.unicode_escape(c, how == 2),
                (_, '"') => self.out.push_str("\\\""),
                (_, '\\') => self.out.push_str("\\\\"),
                (_, c) if c.is_control() => self.unicode_escape(c, false),
                (3, '/') => self.out.push_str("\\/"),
                (_, c) => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn unicode_escape(&mut self, c: char, upper: bool) {
        for unit in c.encode_utf16(&mut [0; 2]) {
            let _ = if upper {
                write!(self.out, "\\u{unit:04X}")
            } else {
                write!(self.out, "\\u{unit:04x}")
            };
        }
    }

    fn value(&mut self, value: &Value) {
        match value {
            Value::String(text) => self.string(text),
            other => self.out.push_str(&other.to_string()),
        }
    }
}

fn write_surface(members: &Map<String, Value>, surface: &Surface) -> String {
    let mut members: Vec<(String, Value)> = members.clone().into_iter().collect();
    if surface.null_customer && !members.iter().any(|(name, _)| name == "customer") {
        members.push(("customer".into(), Value::Null));
    }
    let mut keyed: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(i, member)| ((surface.shuffle[i % surface.shuffle.len()], i), member))
        .collect();
    keyed.sort_by_key(|(key, _)| *key);
    let mut w = Writer {
        out: String::new(),
        surface,
        space: 0,
        escape: 0,
    };
    w.token('{');
    for (i, (_, (name, value))) in keyed.iter().enumerate() {
        if i > 0 {
            w.token(',');
        }
        w.string(name);
        w.token(':');
        w.value(value);
    }
    w.token('}');
    w.out
}

/// One field changed, keeping the order valid: what changed, and the members.
fn changes(members: &Map<String, Value>) -> Vec<(String, Map<String, Value>)> {
    let with = |name: &str, value: Option<Value>| {
        let mut changed = members.clone();
        match value {
            Some(value) => changed.insert(name.into(), value),
            None => changed.remove(name),
        };
        changed
    };
    let text = |name: &str| members.get(name).and_then(Value::as_str).unwrap();
    // Another first character: still valid, and certainly different.
    let altered = |text: &str| {
        let mut chars = text.chars();
        let first = if chars.next() == Some('a') { 'b' } else { 'a' };
        std::iter::once(first).chain(chars).collect::<String>()
    };
    let amount = members.get("amount").and_then(Value::as_u64).unwrap();
    let other_amount = if amount < MAX_AMOUNT {
        amount + 1
    } else {
        amount - 1
    };
    let currency = text("currency").as_bytes();
    let other_currency: String = std::iter::once(char::from(b'a' + (currency[0] - b'a' + 1) % 26))
        .chain(text("currency").chars().skip(1))
        .collect();
    let mut changes = vec![
        (
            format!("the amount {other_amount}"),
            with("amount", Some(json!(other_amount))),
        ),
        (
            format!("the currency {other_currency}"),
            with("currency", Some(json!(other_currency))),
        ),
        (
            "another order_ref".into(),
            with("order_ref", Some(json!(altered(text("order_ref"))))),
        ),
        (
            "another payment_method".into(),
            with(
                "payment_method",
                Some(json!(altered(text("payment_method")))),
            ),
        ),
    ];
    match members.get("customer").and_then(Value::as_str) {
        Some(customer) => {
            changes.push((
                "another customer".into(),
                with("customer", Some(json!(altered(customer)))),
            ));
            changes.push(("no customer".into(), with("customer", None)));
        }
        None => changes.push(("a customer".into(), with("customer", Some(json!("cus_1"))))),
    }
    if text("order_ref") != text("payment_method") {
        let mut swapped = with("order_ref", Some(json!(text("payment_method"))));
        swapped.insert("payment_method".into(), json!(text("order_ref")));
        changes.push(("order_ref and payment_method swapped".into(), swapped));
    }
    changes
}

fn fingerprint_property(input: &FingerprintInput) -> Verdict {
    let members = input.order.members();
    let plain = Value::Object(members.clone()).to_string();
    let order = Order::from_json(plain.as_bytes())
        .map_err(|e| format!("a valid order was refused: {e}\n  body: {plain:?}"))?;
    let fingerprint = Fingerprint::of("POST", ORDERS_PATH, &order);
    for surface in &input.surfaces {
        let body = write_surface(&members, surface);
        let same = Order::from_json(body.as_bytes())
            .map_err(|e| format!("a surface form was refused: {e}\n  body: {body:?}"))?;
        ensure!(
            Fingerprint::of("POST", ORDERS_PATH, &same) == fingerprint,
            "{body:?} has another fingerprint than {plain:?}"
        );
    }
    for (change, changed) in changes(&members) {
        let body = Value::Object(changed).to_string();
        let other = Order::from_json(body.as_bytes())
            .map_err(|e| format!("the order with {change} was refused: {e}\n  body: {body:?}"))?;
        ensure!(
            Fingerprint::of("POST", ORDERS_PATH, &other) != fingerprint,
            "{change} leaves the fingerprint as it was: {plain:?} and {body:?}"
        );
    }
    Ok(())
}
