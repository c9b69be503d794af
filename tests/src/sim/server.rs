//! The HTTP shell: accepts connections, routes requests, sleeps injected delays and moves bytes.
//!
//! It holds no payment rule; those are in `state`. It owns what `state` cannot do: the clock,
//! closing a connection without a response, spelling a redirect's `Location` from the `Host` a
//! request came to, and a body that never ends. hyper is used directly, not a framework, because
//! the only way to lose a response on purpose is for the service to return an error, which makes
//! hyper drop the connection before writing anything.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST,
    LOCATION,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Sleep;

use super::ids;
use super::state::{
    Begin, Delivery, Endpoint, Executed, FaultsPatch, Lookup, LookupCall, PaymentCall, Reply,
    Simulator,
};
use super::wire::{json_bytes, status, ApiError};
use super::SimConfig;

/// Request bodies larger than this get 413, on every path.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How much of an oversized body is read and discarded before answering 413.
const DRAIN_LIMIT_BYTES: usize = 16 << 20;

/// How many spaces each frame of an [`EndlessBody`] carries.
const ENDLESS_CHUNK_BYTES: usize = 16 << 10;
/// The pause before each further frame of an [`EndlessBody`], so that a client reading as fast
/// as it can gets at most 16 KiB a millisecond and does not keep a core busy.
const ENDLESS_PAUSE: Duration = Duration::from_millis(1);
static SPACES: [u8; ENDLESS_CHUNK_BYTES] = [b' '; ENDLESS_CHUNK_BYTES];

/// The path of "another host", where the `redirect_next` fault sends payments.
const ELSEWHERE: &str = "/__sim/elsewhere";

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const REQUEST_ID: &str = "request-id";
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

type SharedSim = Arc<Mutex<Simulator>>;

/// Every response's body: complete, or endless for the `oversized_next` fault.
type SimBody = Either<Full<Bytes>, EndlessBody>;

/// Why a connection is closed without a response. hyper only sees that the service failed.
#[derive(Debug, thiserror::Error)]
enum NoResponse {
    /// The `drop_after_commit_next` fault: the payment is committed and its response is lost.
    #[error("response dropped after commit by the drop_after_commit_next fault")]
    DroppedAfterCommit,
    /// The client's body stream broke; there is no one left to answer.
    #[error("reading the request body failed")]
    Body(#[source] Box<dyn StdError + Send + Sync>),
    /// The task executing the payment or lookup was cancelled, which only happens at runtime
    /// shutdown.
    #[error("the request task did not finish")]
    Execution(#[source] tokio::task::JoinError),
}

/// Serves the simulator on `listener` until the task is dropped or a fatal accept error occurs.
///
/// Each call owns a fresh [`Simulator`]. Connections are served with HTTP/1.1 and end with this
/// future: dropping it closes them all.
pub async fn serve(listener: TcpListener, config: SimConfig) -> io::Result<()> {
    let sim: SharedSim = Arc::new(Mutex::new(Simulator::new(config)));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            // These concern one connection that died before we got it, not the listener.
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => return Err(e),
        };
        let sim = Arc::clone(&sim);
        connections.spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&sim), request));
            // Errors here are clients going away or our own deliberate drops; neither needs a
            // report, and the client sees them as connection errors.
            let _ = http1::Builder::new()
                .title_case_headers(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// A simulator served on `127.0.0.1` with an ephemeral port, for in-process tests.
///
/// Dropping it stops the server and closes its connections.
#[derive(Debug)]
pub struct RunningSim {
    addr: SocketAddr,
    task: JoinHandle<io::Result<()>>,
}

impl RunningSim {
    /// Binds `127.0.0.1:0` and serves a fresh simulator on it in a background task.
    pub async fn start(config: SimConfig) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, config));
        Ok(Self { addr, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(sim: &SharedSim) -> MutexGuard<'_, Simulator> {
    // A panic while holding the lock leaves the state consistent enough for a test double; keep
    // serving rather than failing every later request.
    sim.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn handle(
    sim: SharedSim,
    request: Request<Incoming>,
) -> Result<Response<SimBody>, NoResponse> {
    let mut response = route(&sim, request).await?;
    let request_id = HeaderValue::from_str(&ids::request_id())
        .expect("request ids are ASCII alphanumerics and underscores");
    response.headers_mut().insert(REQUEST_ID, request_id);
    Ok(response)
}

/// Payments, whose answer a fault may make endless, and everything else, answered whole.
async fn route(
    sim: &SharedSim,
    request: Request<Incoming>,
) -> Result<Response<SimBody>, NoResponse> {
    if let (&Method::POST, Some(endpoint)) =
        (request.method(), Endpoint::from_path(request.uri().path()))
    {
        return payment(sim, endpoint, request).await;
    }
    let response = route_complete(sim, request).await?;
    Ok(response.map(Either::Left))
}

async fn route_complete(
    sim: &SharedSim,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, NoResponse> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if let (&Method::GET, Some(lookup)) = (&method, Lookup::from_path(&path)) {
        return lookup_request(sim, lookup, &request).await;
    }
    if let (&Method::GET, Some(id)) = (&method, intent_id(&path)) {
        let authorization = header_str(request.headers(), AUTHORIZATION);
        return Ok(reply_response(lock(sim).retrieve(authorization, id)));
    }
    if let (&Method::POST, Some(id)) = (&method, authenticate_id(&path)) {
        let (parts, body) = request.into_parts();
        let body = match read_body(&parts.headers, body).await? {
            Ok(body) => body,
            Err(too_large) => return Ok(too_large),
        };
        let reply = lock(sim).authenticate(id, &body, unix_now_ms());
        return Ok(reply_response(reply));
    }
    Ok(match (&method, path.as_str()) {
        (&Method::GET, "/__sim/ledger") => {
            json_response(StatusCode::OK, json_bytes(&lock(sim).ledger()))
        }
        (&Method::GET, "/__sim/lookups") => {
            json_response(StatusCode::OK, json_bytes(&lock(sim).lookup_log()))
        }
        (&Method::GET, "/__sim/faults") => {
            json_response(StatusCode::OK, json_bytes(&lock(sim).faults()))
        }
        (&Method::POST, "/__sim/faults") => {
            let (parts, body) = request.into_parts();
            let body = match read_body(&parts.headers, body).await? {
                Ok(body) => body,
                Err(too_large) => return Ok(too_large),
            };
            match serde_json::from_slice::<FaultsPatch>(&body) {
                Ok(patch) => {
                    let faults = lock(sim).apply_faults(patch);
                    json_response(StatusCode::OK, json_bytes(&faults))
                }
                Err(e) => error_response(
                    status::BAD_REQUEST,
                    &ApiError::invalid_request(format!(
                        "Invalid faults: {e}. Send a JSON object with any of honor_idempotency, \
                         lookups_down, search_enabled, lookups_ignore_filter (bools), fail_next, \
                         fail_saved_next, drop_after_commit_next, latency_ms, slow_next, slow_ms, \
                         search_lag_ms, lookup_slow_next, lookup_slow_ms, key_retention_ms, \
                         in_use_next, rate_limit_next, redirect_next, oversized_next \
                         (non-negative integers)."
                    )),
                ),
            }
        }
        (&Method::POST, ELSEWHERE) => {
            // Counted whatever the body: a client that followed a redirect sent the payment again.
            let (parts, body) = request.into_parts();
            let body = read_body(&parts.headers, body).await?;
            let reply = lock(sim).elsewhere(unix_now_ms());
            match body {
                Ok(_) => reply_response(reply),
                Err(too_large) => too_large,
            }
        }
        (&Method::POST, "/__sim/reset") => {
            lock(sim).reset();
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        (_, path) => match allowed_methods(path) {
            Some(allow) => {
                let mut response = error_response(
                    status::METHOD_NOT_ALLOWED,
                    &ApiError::invalid_request(format!(
                        "Method {method} is not allowed on {path}; use {allow}."
                    )),
                );
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
                response
            }
            None => error_response(
                status::NOT_FOUND,
                &ApiError::invalid_request(format!("Unrecognized request URL ({method}: {path}).")),
            ),
        },
    })
}

fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/v1/payment_intents" | "/__sim/reset" | ELSEWHERE => Some("POST"),
        "/v1/payment_intents/search" | "/__sim/ledger" | "/__sim/lookups" => Some("GET"),
        "/v1/orders" | "/__sim/faults" => Some("GET, POST"),
        // Stripe also updates an intent with POST here; paysim does not.
        path if intent_id(path).is_some() => Some("GET"),
        path if authenticate_id(path).is_some() => Some("POST"),
        _ => None,
    }
}

/// The id in `/v1/payment_intents/{id}`, if `path` is one (`search` is the Search API's path).
fn intent_id(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/v1/payment_intents/")?;
    (!id.is_empty() && !id.contains('/') && id != "search").then_some(id)
}

/// The id in `/__sim/payment_intents/{id}/authenticate`, if `path` is one.
fn authenticate_id(path: &str) -> Option<&str> {
    let id = path
        .strip_prefix("/__sim/payment_intents/")?
        .strip_suffix("/authenticate")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

async fn payment(
    sim: &SharedSim,
    endpoint: Endpoint,
    request: Request<Incoming>,
) -> Result<Response<SimBody>, NoResponse> {
    let (parts, body) = request.into_parts();
    let body = match read_body(&parts.headers, body).await? {
        Ok(body) => body,
        Err(too_large) => return Ok(too_large.map(Either::Left)),
    };
    // The idempotency key is taken as is, even when it is not visible ASCII, unlike other headers.
    let header = |name| header_str(&parts.headers, name);
    let idempotency_key = parts
        .headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let call = PaymentCall {
        endpoint,
        authorization: header(AUTHORIZATION),
        idempotency_key: idempotency_key.as_deref(),
        content_type: header(CONTENT_TYPE),
        body: &body,
    };
    let begin = lock(sim).begin(call, unix_now_ms());
    let ticket = match begin {
        Begin::Respond(reply) => return Ok(reply_response(reply).map(Either::Left)),
        Begin::Execute(ticket) => ticket,
    };

    // A separate task, so that a client hanging up during the latency cannot cancel a request the
    // backend already accepted: it still commits (and releases its key), like a real server.
    let sim = Arc::clone(sim);
    let Executed { reply, delivery } = tokio::spawn(async move {
        let latency = ticket.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        lock(&sim).execute(ticket, unix_now_ms())
    })
    .await
    .map_err(NoResponse::Execution)?;

    let mut response = reply_response(reply);
    match delivery {
        Delivery::Send => {}
        Delivery::DropConnection => return Err(NoResponse::DroppedAfterCommit),
        Delivery::RedirectElsewhere => {
            let location = elsewhere_location(&parts.headers);
            response.headers_mut().insert(LOCATION, location);
        }
        // The status and headers stay; the body the state decided on is never sent.
        Delivery::EndlessBody => {
            return Ok(response.map(|_complete| Either::Right(EndlessBody::new())));
        }
    }
    Ok(response.map(Either::Left))
}

/// Where the `redirect_next` fault sends a payment: paysim's own [`ELSEWHERE`] at the `Host` the
/// request came to, as `http://HOST/__sim/elsewhere`. Without a usable `Host` (HTTP/1.0), the
/// path alone, which a client resolves against the URL it asked to the same place.
fn elsewhere_location(headers: &HeaderMap) -> HeaderValue {
    header_str(headers, HOST)
        .and_then(|host| HeaderValue::from_str(&format!("http://{host}{ELSEWHERE}")).ok())
        .unwrap_or_else(|| HeaderValue::from_static(ELSEWHERE))
}

/// The body of an `oversized_next` answer: spaces, [`ENDLESS_CHUNK_BYTES`] a frame, without end
/// and without a `Content-Length` (it goes out chunked).
///
/// No task feeds it, so none can outlive the client: hyper polls it for a frame only when the
/// connection can take one, waits on the socket while a client that stopped reading leaves it
/// full, and drops it with the connection once a write fails because the client went away.
#[derive(Debug)]
struct EndlessBody {
    /// The wait before the next frame; the first frame goes at once.
    pause: Pin<Box<Sleep>>,
}

impl EndlessBody {
    fn new() -> Self {
        Self {
            pause: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl Body for EndlessBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        ready!(self.pause.as_mut().poll(cx));
        let next = tokio::time::Instant::now() + ENDLESS_PAUSE;
        self.pause.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&SPACES)))))
    }
}

async fn lookup_request(
    sim: &SharedSim,
    lookup: Lookup,
    request: &Request<Incoming>,
) -> Result<Response<Full<Bytes>>, NoResponse> {
    let call = LookupCall {
        lookup,
        authorization: header_str(request.headers(), AUTHORIZATION),
        query: request.uri().query(),
    };
    let ticket = lock(sim).begin_lookup(call);
    if ticket.delay().is_zero() {
        return Ok(reply_response(lock(sim).lookup(ticket, unix_now_ms())));
    }
    // The wait is outside the lock, so payments and other lookups go on meanwhile; and in its own
    // task, so that a client that hangs up (an edge timing out) still gets its lookup answered
    // and logged, which is how a test sees that the edge did ask.
    let sim = Arc::clone(sim);
    let reply = tokio::spawn(async move {
        tokio::time::sleep(ticket.delay()).await;
        lock(&sim).lookup(ticket, unix_now_ms())
    })
    .await
    .map_err(NoResponse::Execution)?;
    Ok(reply_response(reply))
}

/// A header's value, if it is visible ASCII; other values cannot be ours to match, so they count as
/// absent.
fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Reads the whole body, or answers 413 when it exceeds [`MAX_BODY_BYTES`].
///
/// An oversized body is still read to the end (up to [`DRAIN_LIMIT_BYTES`]) before answering:
/// closing a socket with unread input makes the kernel send a reset, which can destroy the 413
/// before the client reads it.
async fn read_body(
    headers: &HeaderMap,
    mut body: Incoming,
) -> Result<Result<Bytes, Response<Full<Bytes>>>, NoResponse> {
    let too_large = || {
        error_response(
            status::PAYLOAD_TOO_LARGE,
            &ApiError::invalid_request(format!(
                "Request body is larger than {MAX_BODY_BYTES} bytes."
            )),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT_BYTES as u64) {
        return Ok(Err(too_large()));
    }
    let mut collected = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|e| NoResponse::Body(e.into()))?.into_data() else {
            continue; // trailers carry nothing we read
        };
        total = total.saturating_add(data.len());
        if total > DRAIN_LIMIT_BYTES {
            return Ok(Err(too_large()));
        }
        if total <= MAX_BODY_BYTES {
            collected.extend_from_slice(&data);
        }
    }
    if total > MAX_BODY_BYTES {
        return Ok(Err(too_large()));
    }
    Ok(Ok(Bytes::from(collected)))
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

fn reply_response(reply: Reply) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(reply.status).expect("the simulator only uses valid codes");
    let mut response = json_response(status, reply.body);
    if reply.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

fn error_response(status: u16, error: &ApiError) -> Response<Full<Bytes>> {
    reply_response(Reply::error(status, error))
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
