//! The hyper 1 server: accept loop, per-request span and request id, panic catching,
//! metrics, the secret scrubber on every response body, and graceful shutdown.
//!
//! # Shutdown
//! When the `shutdown` future resolves the listener is closed, idle keep-alive connections
//! are closed, and in-flight requests get `shutdown_grace` to finish. When the grace runs
//! out, `run` fires the [`Cutoff`]: every request still running answers 503 `shutting_down`
//! (`Retry-After`, `Connection: close`; a generate that has created its talk names it, see
//! [`crate::cutoff`]) and logs one `warn` line with its request id and talk id. The answers
//! get [`CUTOFF_WRITE_TIME`] to be written; then every remaining connection task is aborted.
//! Dropping a request's future drops whatever limiter permit or queue place it held, so
//! nothing is leaked either way.
//!
//! # Slow bodies
//! Every request body is a [`TimedBody`]: it must arrive whole within `body_read_timeout`
//! and never pause longer than `body_idle_timeout`. A reader that hits either limit answers
//! 408 `request_timeout` with `Connection: close`, and hyper closes the connection after
//! that answer (the rest of the body was never read, so the connection cannot be reused).
//!
//! # Oversized request heads
//! The service's own limits on a request head live in [`crate::head`]: 8 KiB of request
//! target, 100 header fields, 16 KiB of header fields in all. The router checks them before
//! routing and auth, so the answer is the service's JSON error — 414 `uri_too_long` or 431
//! `request_header_fields_too_large` — with `x-request-id` and `Connection: close`, counted in
//! the metrics under the route's template. hyper's own limits are set above these
//! ([`HYPER_MAX_HEADERS`], [`HYPER_MAX_BUF_BYTES`]) so that such requests reach
//! [`check_head`](crate::head::check_head).
//!
//! What hyper refuses itself, before any of this code runs, keeps hyper's bare answer: an
//! empty body, no `x-request-id`, not in the metrics, and the connection is closed:
//! - a request target over 65,534 bytes: 414 (a fixed limit of hyper and of `http::Uri`);
//! - more than [`HYPER_MAX_HEADERS`] header fields: 431;
//! - a head (request line and headers) larger than [`HYPER_MAX_BUF_BYTES`]: 431;
//! - a malformed head — a bare CR or another invalid byte in a header, a header line without
//!   a colon, a malformed request line, method or version, an invalid `Content-Length` or
//!   `Transfer-Encoding`: 400;
//! - a head not complete within `HEADER_READ_TIMEOUT_SECS`: no answer, the connection is
//!   closed.
//!
//! # Disconnects
//! hyper's HTTP/1 dispatcher watches the socket while a handler runs; when the client goes
//! away it drops the handler's future, which releases its permit or leaves the queue (the
//! limiter port's acquire is cancel-safe).

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::body::{BoxError, TimedBody};
use crate::cutoff::{Cutoff, TalkSlot};
use crate::error::{ApiError, Body};
use crate::router;
use crate::state::AppState;
use crate::tenants::CallerCell;

/// How many header fields hyper parses before it refuses a request itself (its bare 431).
/// Above [`MAX_HEADERS`](crate::head::MAX_HEADERS) so that
/// [`check_head`](crate::head::check_head) answers the common excess in the service's
/// shape. hyper keeps its parse buffers for this many on the heap, per request head.
pub const HYPER_MAX_HEADERS: usize = 1024;

/// hyper's read buffer, which bounds a whole request head (hyper's bare 431 past it). This is
/// hyper's default (8 KiB + 100 × 4 KiB), set here so the documented figure cannot drift.
pub const HYPER_MAX_BUF_BYTES: usize = 8192 + 4096 * 100;

/// The request-id header, read from the client when valid and always echoed.
pub const REQUEST_ID: &str = "x-request-id";

/// A client-supplied id is kept if it is 1..=64 characters of `[A-Za-z0-9._-]` (so it is safe
/// in logs); otherwise a new one is made.
fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()))
}

/// How long the 503 answers of requests cut off at shutdown get to be written before their
/// connections are aborted.
pub const CUTOFF_WRITE_TIME: Duration = Duration::from_secs(1);
/// How long the shutdown waits, after the cut-off, for cut-off generates to give their jobs'
/// claims back (one store read and one write each).
pub const GIVE_BACK_TIME: Duration = Duration::from_secs(2);

/// Answers one request: span, dispatch, error mapping, panic catching, metrics, request id.
/// When `cutoff` fires before the handler is done, the handler is dropped and the request
/// answers 503 `shutting_down`.
pub async fn handle<B>(state: AppState, mut req: Request<B>, cutoff: Cutoff) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let id = request_id(req.headers());
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(200).collect();
    let template = router::template(req.uri().path());
    let _active = state.metrics().request_started(method.as_str());
    let span = if crate::traces::enabled() {
        // The server span of the HTTP conventions; the route is known before dispatch.
        let otel_method = crate::metrics::otel_method(method.as_str());
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            method = %method,
            path = %path,
            tenant = tracing::field::Empty,
            otel.name = %format_args!("{otel_method} {template}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = otel_method,
            http.route = template,
            url.path = %path,
            url.scheme = "http",
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        crate::traces::continue_from(&span, req.headers());
        span
    } else {
        tracing::info_span!("request", request_id = %id, method = %method, path = %path, tenant = tracing::field::Empty)
    };

    let talk = TalkSlot::default();
    talk.watch_cutoff(cutoff.clone());
    req.extensions_mut().insert(talk.clone());
    let caller = CallerCell::default();
    req.extensions_mut().insert(caller.clone());
    let dispatch = AssertUnwindSafe(async { router::dispatch(&state, req).await }).catch_unwind();
    let outcome = async {
        tokio::select! {
            // An answer that is ready wins over a cut-off that fires at the same moment.
            biased;
            outcome = dispatch => Some(outcome),
            () = cutoff.fired() => None,
        }
    }
    .instrument(span.clone())
    .await;
    let (route, result) = match outcome {
        // The handler was dropped (with its permits); only the talk it recorded is left.
        None => (
            template,
            Err(ApiError::ShuttingDown {
                talk_id: talk.get(),
                job_id: talk.job(),
            }),
        ),
        Some(Ok(x)) => x,
        Some(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            ("panic", Err(ApiError::Internal(what)))
        }
    };

    let _enter = span.enter();
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            // The one place where an error's cause is logged.
            if let ApiError::ShuttingDown { talk_id, job_id } = &e {
                // The only trace of a paid talk whose caller got no video: name it.
                tracing::warn!(
                    talk_id = talk_id.as_ref().map(tracing::field::display),
                    job_id = job_id.as_deref(),
                    code = e.code(),
                    "shutdown grace elapsed; request cut off"
                );
            } else if e.log_level_is_error() {
                tracing::error!(error = %e, code = e.code(), "request failed");
            } else {
                tracing::info!(error = %e, code = e.code(), "request rejected");
            }
            e.into_response()
        }
    };
    // Secrets never leave in a body, whatever text reached it from outside.
    let mut resp = state.settings().scrubber.scrub_response(resp);
    let took = started.elapsed();
    let status = resp.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("error.type", status.to_string());
        span.record("otel.status_code", "error");
    }
    state
        .metrics()
        .record_request(route, method.as_str(), status, took);
    if let Some(tenant) = caller.get() {
        state.metrics().record_tenant_request(&tenant, status);
    }
    tracing::info!(
        status,
        route,
        latency_ms = took.as_millis() as u64,
        "request finished"
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// At most one `accept failed` line per this window (with the count of the ones left out).
const ACCEPT_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Rate limit of a repeating failure's log line: the first failure is logged at once, later
/// ones at most once per `window`, each saying how many were left out since the last line.
#[derive(Debug)]
struct FailureLog {
    window: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl FailureLog {
    fn new(window: Duration) -> FailureLog {
        FailureLog {
            window,
            last: None,
            suppressed: 0,
        }
    }

    /// A failure at `now`: `Some(left out since the last line)` when it should be logged.
    fn on_failure(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.window => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then drains (see the module docs).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper 1 needs an explicit timer, or header_read_timeout is never enforced (and setting
    // it without one panics).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.settings().header_read_timeout)
        .max_headers(HYPER_MAX_HEADERS)
        .max_buf_size(HYPER_MAX_BUF_BYTES)
        .keep_alive(true);
    let grace = state.settings().shutdown_grace;
    let graceful = GracefulShutdown::new();
    let (cutoff_trigger, cutoff) = crate::cutoff::cutoff();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }

    // The job workers run while the server does (every instance works on the shared jobs).
    state.jobs().start();
    // The D-ID account's balance, beside the budgets (ends when the engine stops).
    tokio::spawn(crate::budgets::check_account(
        state.clone(),
        state.settings().credits_check,
    ));
    let mut accept_log = FailureLog::new(ACCEPT_LOG_WINDOW);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning,
                        // and log the first failure at once, then one summary per window.
                        if let Some(suppressed) = accept_log.on_failure(Instant::now()) {
                            tracing::warn!(error = %e, suppressed, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                let (total, gap) = (
                    state.settings().body_read_timeout,
                    state.settings().body_idle_timeout,
                );
                let cutoff = cutoff.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let st = st.clone();
                    let cutoff = cutoff.clone();
                    // The body deadline starts when the head has been read.
                    let req = req.map(|b| TimedBody::new(b, total, gap));
                    async move { Ok::<_, Infallible>(handle(st, req, cutoff).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }

    drop(listener);
    tracing::info!(
        in_flight = connections.len(),
        grace_ms = grace.as_millis() as u64,
        "shutting down"
    );
    // Workers stop claiming now; their current steps get the same grace as the requests.
    // What is unfinished stays in the store for the next owner (after its lease).
    state.jobs().stop();
    let workers_done = state.jobs().join(grace);
    let requests_done = drain(grace, graceful, cutoff_trigger, &mut connections);
    tokio::join!(workers_done, requests_done);
    // Aborting drops each request's future and with it any permit or queue place.
    connections.shutdown().await;
    // A cut-off generate whose talk exists gives its job's claim back, so the next owner
    // (another instance, or this one restarted) polls it on at once (`jobs::Hold`).
    state.jobs().settle(GIVE_BACK_TIME).await;
    tracing::info!("shut down");
    Ok(())
}

/// Waits up to `grace` for the in-flight requests; then cuts the rest off (module docs).
async fn drain(
    grace: Duration,
    graceful: GracefulShutdown,
    cutoff_trigger: crate::cutoff::CutoffTrigger,
    connections: &mut JoinSet<()>,
) {
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = connections.len(),
            "shutdown grace elapsed; cutting off the remaining requests"
        );
        // Each running request answers 503 at once; its connection ends after the answer.
        cutoff_trigger.fire();
        let written = tokio::time::timeout(CUTOFF_WRITE_TIME, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if written.is_err() {
            tracing::warn!(
                remaining = connections.len(),
                "connections still open after the cut-off answers; aborting them"
            );
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_are_logged_once_per_window_with_the_count_left_out() {
        let t0 = Instant::now();
        let mut log = FailureLog::new(Duration::from_secs(10));
        let mut check = |ms: u64, expected: Option<u64>| {
            assert_eq!(
                log.on_failure(t0 + Duration::from_millis(ms)),
                expected,
                "at {ms} ms"
            );
        };
        check(0, Some(0));
        // 20 failures a second (the observed flood) are left out inside the window...
        for i in 1..200 {
            check(i * 50, None);
        }
        // ...and counted in the next line.
        check(10_000, Some(199));
        check(10_050, None);
        check(25_000, Some(1));
    }

    #[test]
    fn request_ids_are_kept_only_when_safe() {
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123.x_y"));
        assert_eq!(request_id(&h), "abc-123.x_y");
        h.insert(REQUEST_ID, HeaderValue::from_static("bad id\" with=stuff"));
        let made = request_id(&h);
        assert_eq!(made.len(), 16);
        assert!(made.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(request_id(&http::HeaderMap::new()), made);
    }
}
