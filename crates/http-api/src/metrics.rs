//! Prometheus metrics: the registry, the per-request families, a limiter decorator that
//! records wait times, and a scrape-time collector for limiter and upstream snapshots.
//!
//! Counters we own (HTTP requests, limiter acquires) are live `Family`s. Numbers that belong
//! to an adapter (limiter state and counters, D-ID responses and retries) are read at scrape
//! time: `/metrics` refreshes a snapshot, then [`SnapshotCollector`] encodes it as constant
//! metrics. That keeps one source of truth (the adapter) and no background task.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use domain::{Admission, Priority};
use ports::{Acquire, ConcurrencyLimiter, LimiterError, LimiterStats, Permit, VideoApiStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tracing::Instrument as _;

/// Labels of one HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/api/d_id_optimized/talk-status/{talk_id}`), or `unmatched`.
    pub route: &'static str,
    /// The method: one of the nine standard ones, or `other` (see [`method_label`]).
    pub method: &'static str,
    /// The response status.
    pub status: u16,
}

/// The label of a request method: the standard methods (RFC 9110 and PATCH) by name,
/// anything else `other`. A client picks the method string, so it must never become a label
/// value by itself: every distinct value would be a new series kept forever.
pub fn method_label(method: &str) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];
    STANDARD
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("other")
}

/// The conventions' value of a request method: a standard one by name, else `_OTHER`.
pub fn otel_method(method: &str) -> &'static str {
    match method_label(method) {
        "other" => "_OTHER",
        known => known,
    }
}

/// A request counted in `http_server_active_requests` until dropped (an answered request, or
/// one whose connection went away).
#[derive(Debug)]
pub struct ActiveRequest(Gauge);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Labels of one route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template.
    pub route: &'static str,
}

/// Labels of one priority.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabels {
    /// `low`, `normal`, `high` or `critical`.
    pub priority: &'static str,
}

/// Labels of one limiter acquire.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcquireLabels {
    /// The priority.
    pub priority: &'static str,
    /// `granted`, `timeout` or `unavailable` (a dropped acquire is counted by the limiter).
    pub outcome: &'static str,
}

/// Labels of one tenant's answered requests.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantRequestLabels {
    /// The tenant (a name from the tenants file, `HTTP_API_TOKEN`'s `t:…`, or `public`).
    pub tenant: String,
    /// The status class: `2xx`, `3xx`, `4xx` or `5xx`.
    pub class: &'static str,
}

/// Labels of one tenant's limiter acquires.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantAcquireLabels {
    /// The tenant.
    pub tenant: String,
    /// `granted`, `timeout` or `unavailable`.
    pub outcome: &'static str,
}

/// Labels of one tenant.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

/// Labels of a result (a tenants-file reload's, a trace export's).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// The class of an HTTP status, a closed set of label values.
fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The buckets the OpenTelemetry HTTP conventions advise for `http.server.request.duration`
/// and `http.client.request.duration`, in seconds.
pub const HTTP_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Labels of `http_server_request_duration_seconds` (the conventions' attribute names, dots
/// as underscores).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// The method: a standard one, or `_OTHER` (the conventions' value).
    pub http_request_method: &'static str,
    /// The route template, or `unmatched`.
    pub http_route: &'static str,
    /// The status the service answered with (the service's own, a closed set).
    pub http_response_status_code: u16,
}

/// Labels of `http_server_active_requests`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActiveLabels {
    /// As in [`ServerLabels`].
    pub http_request_method: &'static str,
}

/// Labels of `http_client_request_duration_seconds`: the exchanges with D-ID.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    /// `GET`, `POST` or `DELETE`.
    pub http_request_method: &'static str,
    /// D-ID's route (`/talks/{id}`).
    pub url_template: &'static str,
    /// The D-ID operation (`create_talk`, `get_talk`, …).
    pub did_operation: &'static str,
    /// D-ID's status when it answered with a registered status, `_OTHER` for any other,
    /// empty (no label) without an answer.
    pub http_response_status_code: &'static str,
    /// `timeout`, `connect` or `protocol` without an answer, else empty (no label).
    pub error_type: &'static str,
}

/// The label of an upstream status: the registered statuses by number, anything else
/// `_OTHER`, so a misbehaving upstream cannot mint series.
pub fn status_label(status: u16) -> &'static str {
    const KNOWN: [&str; 45] = [
        "200", "201", "202", "203", "204", "205", "206", "300", "301", "302", "303", "304", "307",
        "308", "400", "401", "402", "403", "404", "405", "406", "407", "408", "409", "410", "411",
        "412", "413", "414", "415", "416", "417", "421", "422", "425", "426", "428", "429", "431",
        "451", "500", "501", "502", "503", "504",
    ];
    let text = status.to_string();
    KNOWN.into_iter().find(|k| *k == text).unwrap_or("_OTHER")
}

/// Buckets for waits and latencies, in seconds: 1 ms … ~10 min.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        300.0, 600.0,
    ]
    .into_iter()
}

/// The service's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    server_duration: Family<ServerLabels, Histogram>,
    server_active: Family<ActiveLabels, Gauge>,
    client_duration: Family<ClientLabels, Histogram>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    limiter_wait: Family<PriorityLabels, Histogram>,
    limiter_acquires: Family<AcquireLabels, Counter>,
    tenant_requests: Family<TenantRequestLabels, Counter>,
    tenant_acquires: Family<TenantAcquireLabels, Counter>,
    snapshot: Arc<SnapshotCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry: the OpenTelemetry HTTP families under their conventional names,
    /// every other family under the `talkgate` prefix.
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let http_histogram = (|| Histogram::new(HTTP_DURATION_BUCKETS)) as fn() -> Histogram;
        let server_duration = Family::new_with_constructor(http_histogram);
        root.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests (OpenTelemetry http.server.request.duration)",
            Unit::Seconds,
            server_duration.clone(),
        );
        let server_active = Family::<ActiveLabels, Gauge>::default();
        root.register(
            "http_server_active_requests",
            "Number of active HTTP server requests (OpenTelemetry http.server.active_requests)",
            server_active.clone(),
        );
        let client_duration = Family::new_with_constructor(http_histogram);
        root.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP client requests to D-ID, one per attempt (OpenTelemetry \
             http.client.request.duration)",
            Unit::Seconds,
            client_duration.clone(),
        );
        let registry = root.sub_registry_with_prefix("talkgate");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            http_requests.clone(),
        );
        let http_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                (|| Histogram::new(seconds_buckets())) as fn() -> Histogram,
            );
        registry.register(
            "http_request_duration_seconds",
            "Deprecated, removed in the next release: use http_server_request_duration_seconds. \
             Time to answer an HTTP request, by route template",
            http_duration.clone(),
        );
        let limiter_wait = Family::new_with_constructor(
            (|| Histogram::new(seconds_buckets())) as fn() -> Histogram,
        );
        registry.register(
            "limiter_wait_seconds",
            "Time a granted limiter acquire spent queued, by priority",
            limiter_wait.clone(),
        );
        let limiter_acquires = Family::<AcquireLabels, Counter>::default();
        registry.register(
            "limiter_acquires",
            "Limiter acquires by priority and outcome",
            limiter_acquires.clone(),
        );
        // Tenant names come from the tenants file (at most 256), `HTTP_API_TOKEN`'s one and
        // `public`: a closed set, never a value a caller picks.
        let tenant_requests = Family::<TenantRequestLabels, Counter>::default();
        registry.register(
            "tenant_requests",
            "Authenticated requests answered, by tenant and status class",
            tenant_requests.clone(),
        );
        let tenant_acquires = Family::<TenantAcquireLabels, Counter>::default();
        registry.register(
            "tenant_limiter_acquires",
            "Limiter acquires by tenant and outcome",
            tenant_acquires.clone(),
        );
        let snapshot = Arc::new(SnapshotCollector::default());
        registry.register_collector(Box::new(snapshot.clone()));
        Metrics {
            registry: root,
            server_duration,
            server_active,
            client_duration,
            http_requests,
            http_duration,
            limiter_wait,
            limiter_acquires,
            tenant_requests,
            tenant_acquires,
            snapshot,
        }
    }

    /// One more request under way (until the guard is dropped).
    pub fn request_started(&self, method: &str) -> ActiveRequest {
        let gauge = self
            .server_active
            .get_or_create(&ActiveLabels {
                http_request_method: otel_method(method),
            })
            .clone();
        gauge.inc();
        ActiveRequest(gauge)
    }

    /// Counts one exchange with D-ID.
    pub fn record_exchange(&self, exchange: &did_client::Exchange) {
        let (status, error_type) = match exchange.outcome {
            did_client::ExchangeOutcome::Answered(status) => (status_label(status), ""),
            did_client::ExchangeOutcome::Failed(kind) => ("", kind),
        };
        self.client_duration
            .get_or_create(&ClientLabels {
                http_request_method: exchange.method,
                url_template: exchange.template,
                did_operation: exchange.operation,
                http_response_status_code: status,
                error_type,
            })
            .observe(exchange.took.as_secs_f64());
    }

    /// Counts one answered request. `route` must be a template (never a raw path);
    /// `method` is mapped onto a closed set by [`method_label`].
    pub fn record_request(&self, route: &'static str, method: &str, status: u16, took: Duration) {
        self.server_duration
            .get_or_create(&ServerLabels {
                http_request_method: otel_method(method),
                http_route: route,
                http_response_status_code: status,
            })
            .observe(took.as_secs_f64());
        self.http_requests
            .get_or_create(&HttpLabels {
                route,
                method: method_label(method),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    /// Counts one answered request of an authenticated `tenant`.
    pub fn record_tenant_request(&self, tenant: &domain::Tenant, status: u16) {
        self.tenant_requests
            .get_or_create(&TenantRequestLabels {
                tenant: crate::tenants::public_name(tenant.as_str()).to_owned(),
                class: status_class(status),
            })
            .inc();
    }

    /// Stores the tenants-file reload counts that the next [`Metrics::encode`] reports.
    pub fn set_tenant_reloads(&self, ok: u64, refused: u64) {
        let mut s = self.snapshot.lock();
        s.tenant_reloads = Some((ok, refused));
    }

    fn record_acquire(&self, admission: &Admission, result: &Result<Permit, LimiterError>) {
        let priority = admission.priority;
        let outcome = match result {
            Ok(permit) => {
                self.limiter_wait
                    .get_or_create(&PriorityLabels {
                        priority: priority.as_str(),
                    })
                    .observe(permit.waited().as_secs_f64());
                "granted"
            }
            Err(LimiterError::Timeout { .. }) => "timeout",
            Err(_) => "unavailable",
        };
        self.limiter_acquires
            .get_or_create(&AcquireLabels {
                priority: priority.as_str(),
                outcome,
            })
            .inc();
        self.tenant_acquires
            .get_or_create(&TenantAcquireLabels {
                tenant: crate::tenants::public_name(admission.tenant.as_str()).to_owned(),
                outcome,
            })
            .inc();
    }

    /// Stores the latest adapter snapshots, encoded by the next [`Metrics::encode`].
    pub fn set_snapshot(&self, limiter: LimiterStats, upstream: VideoApiStats) {
        let mut s = self.snapshot.lock();
        s.limiter = Some(limiter);
        s.upstream = Some(upstream);
    }

    /// Stores the D-ID webhook receipts that the next [`Metrics::encode`] reports.
    pub fn set_talk_webhooks(&self, counts: app::TalkWebhookCounts) {
        let mut s = self.snapshot.lock();
        s.talk_webhooks = Some(counts);
    }

    /// Stores the callback counts that the next [`Metrics::encode`] reports.
    pub fn set_callbacks(&self, counts: app::CallbackCounts) {
        let mut s = self.snapshot.lock();
        s.callbacks = Some(counts);
    }

    /// Stores the upload cache's counts (image, audio) that the next [`Metrics::encode`]
    /// reports.
    pub fn set_uploads(&self, counts: [crate::upload_cache::KindCounts; 2]) {
        let mut s = self.snapshot.lock();
        s.uploads = Some(counts);
    }

    /// Stores the trace exports' counts (batches accepted, batches failed, spans exported)
    /// that the next [`Metrics::encode`] reports.
    pub fn set_trace_exports(&self, counts: (u64, u64, u64)) {
        self.snapshot.lock().trace_exports = Some(counts);
    }

    /// Stores the budgets' figures that the next [`Metrics::encode`] reports.
    pub fn set_credits(&self, credits: CreditsSnapshot) {
        let mut s = self.snapshot.lock();
        s.credits = Some(credits);
    }

    /// Stores the gate's state (adaptive limit, breaker) that the next [`Metrics::encode`]
    /// reports.
    pub fn set_gate(&self, stats: app::UpstreamStats) {
        self.snapshot.lock().gate = Some(stats);
    }

    /// Stores whether the job store is usable (open, and a small write commits), which the
    /// next [`Metrics::encode`] reports as `talkgate_job_store_up`.
    pub fn set_job_store_up(&self, up: bool) {
        self.snapshot.lock().job_store_up = Some(up);
    }

    /// Stores the job counts that the next [`Metrics::encode`] reports, as of `now_ms`.
    pub fn set_jobs(&self, counts: ports::JobCounts, now_ms: u64) {
        let mut s = self.snapshot.lock();
        s.jobs = Some((counts, now_ms));
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The latest limiter and upstream snapshots.
#[derive(Debug, Default)]
struct SnapshotState {
    limiter: Option<LimiterStats>,
    upstream: Option<VideoApiStats>,
    jobs: Option<(ports::JobCounts, u64)>,
    talk_webhooks: Option<app::TalkWebhookCounts>,
    callbacks: Option<app::CallbackCounts>,
    tenant_reloads: Option<(u64, u64)>,
    credits: Option<CreditsSnapshot>,
    uploads: Option<[crate::upload_cache::KindCounts; 2]>,
    /// Trace export batches accepted and failed, spans exported.
    trace_exports: Option<(u64, u64, u64)>,
    /// Whether the job store is open and takes writes.
    job_store_up: Option<bool>,
    /// The gate in front of D-ID (adaptive limit, breaker).
    gate: Option<app::UpstreamStats>,
}

/// Labels of one reason of an adaptive limit change.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitReasonLabels {
    reason: &'static str,
}

/// Labels of one breaker state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerStateLabels {
    state: &'static str,
}

/// The gate's part of `/metrics`: the learned limit and its changes, the breaker's state,
/// trips, sheds and probes, and whether the shared records answer.
fn encode_gate(enc: &mut DescriptorEncoder<'_>, g: &app::UpstreamStats) -> std::fmt::Result {
    if let Some(a) = &g.adaptive {
        gauge(
            enc,
            "adaptive_limit",
            "The adaptive limit learned from D-ID's answers (LIMIT_MODE=adaptive; the fleet's)",
            i64::from(a.limit),
        )?;
        family(
            enc,
            "adaptive_limit_changes",
            "Changes of the adaptive limit this instance made, by reason (throttled, timed_out, probe_failed, raised, operator)",
            MetricType::Counter,
            a.changes_here.iter().map(|(r, n)| {
                (
                    LimitReasonLabels { reason: r.as_str() },
                    ConstCounter::new(*n),
                )
            }),
        )?;
    }
    if let Some(b) = &g.breaker {
        family(
            enc,
            "breaker_state",
            "1 for the circuit breaker's current state (closed, open, half_open), 0 for the others",
            MetricType::Gauge,
            domain::BreakerMode::ALL.map(|m| {
                (
                    BreakerStateLabels { state: m.as_str() },
                    ConstGauge::new(i64::from(m == b.state)),
                )
            }),
        )?;
        counter(
            enc,
            "breaker_trips",
            "Times the breaker opened (the fleet's count, as stored with its state)",
            b.trips,
        )?;
        family(
            enc,
            "breaker_shed",
            "Requests this instance refused with 503 upstream_unavailable while the breaker was open, by priority",
            MetricType::Counter,
            Priority::ALL.map(|p| (priority_labels(p), ConstCounter::new(b.shed[p.index()]))),
        )?;
        counter(
            enc,
            "breaker_probes",
            "Probes this instance sent while the breaker was half-open",
            b.probes,
        )?;
    }
    gauge(
        enc,
        "shared_records_up",
        "1 while the shared records (Redis with a Redis limiter) answer; 0: this instance runs its own limit and breaker",
        i64::from(g.shared),
    )?;
    counter(
        enc,
        "shared_records_errors",
        "Calls to the shared records that failed",
        g.records_errors,
    )
}

/// Labels of one upload-cache lookup's result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UploadLookupLabels {
    kind: &'static str,
    result: &'static str,
}

/// Labels of one upload kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UploadKindLabels {
    kind: &'static str,
}

fn encode_uploads(
    enc: &mut DescriptorEncoder<'_>,
    counts: &[crate::upload_cache::KindCounts; 2],
) -> std::fmt::Result {
    let kinds = [("image", counts[0]), ("audio", counts[1])];
    family(
        enc,
        "upload_cache_lookups",
        "Upload-cache lookups by kind and result (hit: answered without a D-ID call)",
        MetricType::Counter,
        kinds.iter().flat_map(|(kind, c)| {
            [("hit", c.hits), ("miss", c.misses), ("error", c.errors)]
                .map(|(result, v)| (UploadLookupLabels { kind, result }, ConstCounter::new(v)))
        }),
    )?;
    family(
        enc,
        "upload_cache_stored",
        "Uploads written to the cache, by kind",
        MetricType::Counter,
        kinds.map(|(kind, c)| (UploadKindLabels { kind }, ConstCounter::new(c.stored))),
    )
}

/// The budgets' figures for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct CreditsSnapshot {
    /// Per budgeted tenant (its shown name): budget, spent and reserved this period.
    pub tenants: Vec<(String, u64, u64, u64)>,
    /// This instance's reservation decisions.
    pub counts: app::credits::CreditCounts,
    /// The D-ID account's checks.
    pub account: crate::account::AccountSnapshot,
}

/// Labels of one kind of reservation decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReservationLabels {
    result: &'static str,
}

/// Labels of an account check's result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    result: &'static str,
}

fn encode_credits(enc: &mut DescriptorEncoder<'_>, c: &CreditsSnapshot) -> std::fmt::Result {
    let per_tenant = |pick: fn(&(String, u64, u64, u64)) -> u64| {
        c.tenants
            .iter()
            .map(move |t| {
                (
                    TenantLabels {
                        tenant: t.0.clone(),
                    },
                    ConstGauge::new(i64::try_from(pick(t)).unwrap_or(i64::MAX)),
                )
            })
            .collect::<Vec<_>>()
    };
    for (name, help, pick) in [
        (
            "tenant_credits_budget",
            "Credits per period of each tenant with a budget",
            (|t: &(String, u64, u64, u64)| t.1) as fn(&(String, u64, u64, u64)) -> u64,
        ),
        (
            "tenant_credits_spent",
            "Credits spent this period by each tenant with a budget",
            |t| t.2,
        ),
        (
            "tenant_credits_reserved",
            "Credits held by talks in progress, by tenant with a budget",
            |t| t.3,
        ),
    ] {
        family(enc, name, help, MetricType::Gauge, per_tenant(pick))?;
    }
    let n = &c.counts;
    family(
        enc,
        "credit_reservations",
        "Budget reservations by what became of them (this instance)",
        MetricType::Counter,
        [
            ("taken", n.reserved),
            ("refused", n.refused),
            ("settled", n.settled),
            ("released", n.released),
            ("swept", n.swept),
            ("error", n.errors),
        ]
        .map(|(result, v)| (ReservationLabels { result }, ConstCounter::new(v))),
    )?;
    family(
        enc,
        "account_credit_checks",
        "Reads of the D-ID account's credits (GET /credits) by result",
        MetricType::Counter,
        [("ok", c.account.ok), ("failed", c.account.failed)]
            .map(|(result, v)| (CheckLabels { result }, ConstCounter::new(v))),
    )?;
    if let Some(b) = c.account.last {
        gauge(
            enc,
            "account_credits_remaining",
            "Credits left on the D-ID account, as last read",
            b.remaining,
        )?;
        gauge(
            enc,
            "account_credits_total",
            "Credits granted to the D-ID account, as last read",
            b.total,
        )?;
    }
    Ok(())
}

/// Labels of one callback attempt's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    outcome: &'static str,
}

/// Labels of one settled callback.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    result: &'static str,
}

/// Labels of one kind of D-ID webhook receipt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiptLabels {
    receipt: &'static str,
}

/// Labels of one job state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobStatusLabels {
    status: &'static str,
}

/// Encodes the snapshots stored by [`Metrics::set_snapshot`] as constant metrics.
#[derive(Debug, Default)]
pub struct SnapshotCollector {
    state: Mutex<SnapshotState>,
}

impl SnapshotCollector {
    /// The stored snapshots (a panic elsewhere leaves them consistent: poison is ignored).
    fn lock(&self) -> std::sync::MutexGuard<'_, SnapshotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// A labelled family of constant metrics of `kind`: one member per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    members: impl IntoIterator<Item = (L, M)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in members {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The labels of `priority`.
fn priority_labels(priority: Priority) -> PriorityLabels {
    PriorityLabels {
        priority: priority.as_str(),
    }
}

/// Labels of one upstream status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.lock();
        if let Some(c) = &s.credits {
            encode_credits(&mut enc, c)?;
        }
        if let Some(u) = &s.uploads {
            encode_uploads(&mut enc, u)?;
        }
        if let Some(g) = &s.gate {
            encode_gate(&mut enc, g)?;
        }
        if let Some((ok, failed, spans)) = s.trace_exports {
            family(
                &mut enc,
                "trace_export_batches",
                "Span batches sent to the OTLP collector, by result (ok, failed)",
                MetricType::Counter,
                [("ok", ok), ("failed", failed)]
                    .map(|(result, n)| (ReloadLabels { result }, ConstCounter::new(n))),
            )?;
            counter(
                &mut enc,
                "trace_spans_exported",
                "Spans the OTLP collector accepted",
                spans,
            )?;
        }
        if let Some(l) = &s.limiter {
            let i = |v: u32| i64::from(v);
            for (name, help, v) in [
                (
                    "limiter_max_concurrent",
                    "The limiter's limit",
                    i(l.max_concurrent),
                ),
                ("limiter_active", "Permits held now", i(l.active)),
                (
                    "limiter_demand_slots",
                    "Slots wanted now: held plus queued (with Redis, the fleet's); an autoscaler's signal beside talkgate_limiter_oldest_queued_seconds",
                    i64::from(l.active) + i64::from(l.queued.total()),
                ),
                ("limiter_available", "Slots free now", i(l.available)),
                (
                    "limiter_degraded",
                    "1 while a distributed limiter runs on its local fallback",
                    i64::from(l.degraded),
                ),
            ] {
                gauge(&mut enc, name, help, v)?;
            }
            family(
                &mut enc,
                "limiter_queued",
                "Waiters queued now, by priority",
                MetricType::Gauge,
                Priority::ALL.map(|p| {
                    (
                        priority_labels(p),
                        ConstGauge::new(i64::from(l.queued.get(p))),
                    )
                }),
            )?;
            family(
                &mut enc,
                "tenant_limiter_queued",
                "Waiters queued now, by tenant (tenants with waiters)",
                MetricType::Gauge,
                l.tenants.iter().map(|(tenant, t)| {
                    (
                        TenantLabels {
                            tenant: crate::tenants::public_name(tenant).to_owned(),
                        },
                        ConstGauge::new(i64::from(t.queued)),
                    )
                }),
            )?;
            family(
                &mut enc,
                "tenant_limiter_active",
                "Slots held now by each tenant with a cap",
                MetricType::Gauge,
                l.tenants.iter().map(|(tenant, t)| {
                    (
                        TenantLabels {
                            tenant: crate::tenants::public_name(tenant).to_owned(),
                        },
                        ConstGauge::new(i64::from(t.active)),
                    )
                }),
            )?;
            if let Some(f) = &l.backend.failover {
                for (name, help, v) in [
                    (
                        "limiter_instances",
                        "Live instances sharing the Redis limit, as last seen (0: never reached)",
                        i(f.instances.unwrap_or(0)),
                    ),
                    (
                        "limiter_fallback_share",
                        "Slots this instance grants alone while Redis is down (FAILOVER_POLICY)",
                        i(f.share),
                    ),
                    (
                        "limiter_fallback_active",
                        "Fallback permits still alive (adopted by Redis after the switch back)",
                        i(f.fallback_active),
                    ),
                ] {
                    gauge(&mut enc, name, help, v)?;
                }
                counter(
                    &mut enc,
                    "limiter_instances_reclaimed",
                    "Instances Redis declared dead (their slots reclaimed at once)",
                    f.instances_reclaimed,
                )?;
            }
            let oldest = ConstGauge::new(l.oldest_queued_ms as f64 / 1000.0);
            let m = enc.encode_descriptor(
                "limiter_oldest_queued_seconds",
                "How long the oldest current waiter has waited",
                None,
                oldest.metric_type(),
            )?;
            oldest.encode(m)?;
            gauge(
                &mut enc,
                "limiter_oldest_queued_milliseconds",
                "Deprecated, removed in the next release: use \
                 talkgate_limiter_oldest_queued_seconds. How long the oldest current waiter has \
                 waited",
                i64::try_from(l.oldest_queued_ms).unwrap_or(i64::MAX),
            )?;
            let c = &l.counters;
            for (name, help, v) in [
                (
                    "limiter_timeouts",
                    "Acquires that timed out (limiter's count)",
                    c.timeouts,
                ),
                (
                    "limiter_cancelled",
                    "Acquires dropped while queued",
                    c.cancelled,
                ),
                ("limiter_released", "Permits released", c.released),
                (
                    "limiter_leases_lost",
                    "Leases found expired while held",
                    c.leases_lost,
                ),
                (
                    "limiter_leases_reclaimed",
                    "Expired leases or dead waiters reclaimed",
                    c.leases_reclaimed,
                ),
            ] {
                counter(&mut enc, name, help, v)?;
            }
        }
        if let Some(hooks) = &s.talk_webhooks {
            family(
                &mut enc,
                "talk_webhook_receipts",
                "D-ID webhooks received, by what they did (confirmed: the poll they caused found the talk ended)",
                MetricType::Counter,
                [
                    ("accepted", hooks.accepted),
                    ("duplicate", hooks.duplicate),
                    ("rejected", hooks.rejected),
                    ("confirmed", hooks.confirmed),
                ]
                .map(|(receipt, n)| (ReceiptLabels { receipt }, ConstCounter::new(n))),
            )?;
        }
        if let Some((ok, refused)) = s.tenant_reloads {
            family(
                &mut enc,
                "tenants_reloads",
                "Reloads of the tenants file on SIGHUP, by result (refused: the tenants before it stay)",
                MetricType::Counter,
                [("ok", ok), ("refused", refused)]
                    .map(|(result, n)| (ReloadLabels { result }, ConstCounter::new(n))),
            )?;
        }
        if let Some(cb) = &s.callbacks {
            family(
                &mut enc,
                "callback_attempts",
                "Callback attempts sent to callers, by outcome (ok: a 2xx answer)",
                MetricType::Counter,
                [
                    ("ok", cb.attempts_ok),
                    ("status", cb.attempts_status),
                    ("timed_out", cb.attempts_timeout),
                    ("transport", cb.attempts_transport),
                    ("refused", cb.attempts_refused),
                ]
                .map(|(outcome, n)| (AttemptLabels { outcome }, ConstCounter::new(n))),
            )?;
            family(
                &mut enc,
                "callback_deliveries",
                "Callbacks settled, by result (failed: refused for good or past the horizon)",
                MetricType::Counter,
                [("delivered", cb.delivered), ("failed", cb.failed)]
                    .map(|(result, n)| (DeliveryLabels { result }, ConstCounter::new(n))),
            )?;
        }
        if let Some(up) = s.job_store_up {
            gauge(
                &mut enc,
                "job_store_up",
                "1 while the job store is open and takes a write (as /ready checks), else 0",
                i64::from(up),
            )?;
        }
        if let Some((counts, now)) = &s.jobs {
            gauge(
                &mut enc,
                "callback_deliveries_pending",
                "Callbacks not yet delivered nor given up (all instances)",
                i64::try_from(counts.callbacks_pending).unwrap_or(i64::MAX),
            )?;
            family(
                &mut enc,
                "jobs",
                "Jobs in the store now, by state",
                MetricType::Gauge,
                counts.by_status.iter().map(|(status, n)| {
                    let labels = JobStatusLabels {
                        status: status.as_str(),
                    };
                    (
                        labels,
                        ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX)),
                    )
                }),
            )?;
            family(
                &mut enc,
                "job_queue_age_seconds",
                "Age of the oldest queued job, by priority (0: none queued)",
                MetricType::Gauge,
                Priority::ALL.map(|p| {
                    let age = counts.oldest_queued_ms[p.index()]
                        .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
                    (priority_labels(p), ConstGauge::new(age))
                }),
            )?;
        }
        if let Some(u) = &s.upstream {
            for (name, help, v) in [
                (
                    "upstream_requests",
                    "HTTP exchanges with D-ID started",
                    u.requests,
                ),
                (
                    "upstream_retries",
                    "D-ID attempts repeated after a failure",
                    u.retries,
                ),
                (
                    "upstream_transport_errors",
                    "D-ID exchanges without an HTTP answer",
                    u.transport_errors,
                ),
            ] {
                counter(&mut enc, name, help, v)?;
            }
            family(
                &mut enc,
                "upstream_responses",
                "D-ID answers by HTTP status",
                MetricType::Counter,
                u.responses
                    .iter()
                    .map(|(status, n)| (StatusLabels { status: *status }, ConstCounter::new(*n))),
            )?;
        }
        if let Some(u) = &s.upstream {
            encode_did_rate(&mut enc, u)?;
        }
        Ok(())
    }
}

/// What the D-ID client does about D-ID's rate limit: the `GET /talks` pages its look-ups
/// read, and its pacer (the rate it learned from 429s, who waits for a turn).
fn encode_did_rate(enc: &mut DescriptorEncoder<'_>, u: &VideoApiStats) -> std::fmt::Result {
    let ms = |v: u64| v as f64 / 1000.0;
    let p = &u.pacing;
    counter(
        enc,
        "did_lookup_pages",
        "Pages of D-ID's GET /talks read to find the talk a create may have made",
        u.lookup_pages,
    )?;
    gauge(
        enc,
        "did_pacing_paced",
        "1 while D-ID calls are paced by a rate learned from 429s, else 0",
        i64::from(p.paced),
    )?;
    let rate = ConstGauge::new(p.rate_rps.unwrap_or(0.0));
    let m = enc.encode_descriptor(
        "did_pacing_requests_per_second",
        "The rate paced D-ID calls go at (0 while unpaced)",
        None,
        rate.metric_type(),
    )?;
    rate.encode(m)?;
    let held = ConstGauge::new(ms(p.held_ms));
    let m = enc.encode_descriptor(
        "did_pacing_held_seconds",
        "How long D-ID calls are still held for a 429's Retry-After",
        None,
        held.metric_type(),
    )?;
    held.encode(m)?;
    gauge(
        enc,
        "did_pacing_waiting",
        "D-ID calls waiting for their turn at the pacer now",
        i64::try_from(p.waiting).unwrap_or(i64::MAX),
    )?;
    for (name, help, v) in [
        (
            "did_pacing_delayed",
            "D-ID calls that waited for their turn at the pacer",
            p.delayed,
        ),
        (
            "did_pacing_decreases",
            "Times a 429 lowered the paced rate",
            p.decreases,
        ),
        (
            "did_pacing_retry_after_holds",
            "Times D-ID calls were held for a 429's Retry-After",
            p.retry_after_holds,
        ),
    ] {
        counter(enc, name, help, v)?;
    }
    let waited = ConstCounter::new(ms(p.delayed_ms));
    let m = enc.encode_descriptor(
        "did_pacing_delay_seconds",
        "Time D-ID calls waited for their turn at the pacer, in all",
        None,
        waited.metric_type(),
    )?;
    waited.encode(m)
}

/// A limiter decorator that records each acquire's outcome and wait time in [`Metrics`].
pub struct MeteredLimiter {
    inner: Arc<dyn ConcurrencyLimiter>,
    metrics: Arc<Metrics>,
}

impl MeteredLimiter {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ConcurrencyLimiter>, metrics: Arc<Metrics>) -> MeteredLimiter {
        MeteredLimiter { inner, metrics }
    }
}

#[async_trait]
impl ConcurrencyLimiter for MeteredLimiter {
    fn acquire<'a>(&'a self, admission: &'a Admission, wait: Duration) -> Acquire<'a> {
        // Dropping this future drops the inner one, which is cancel-safe by contract; an
        // acquire the inner limiter decided at once is recorded at once and stays unboxed.
        let acquire = self.inner.acquire(admission, wait);
        // A decided acquire (a free slot, or a refusal) waited for nothing: no span. One
        // that queues is a span while traces are exported (boxed; paid only then).
        if acquire.is_ready() || !crate::traces::enabled() {
            return acquire.inspect(move |result| self.metrics.record_acquire(admission, result));
        }
        let span = tracing::info_span!(
            "limiter.acquire",
            talkgate.priority = admission.priority.as_str(),
            talkgate.tenant = crate::tenants::public_name(admission.tenant.as_str()),
            talkgate.limiter.waited_ms = tracing::field::Empty,
            talkgate.limiter.outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        Acquire::pending(
            async move {
                let result = acquire.await;
                self.metrics.record_acquire(admission, &result);
                let span = tracing::Span::current();
                match &result {
                    Ok(permit) => {
                        span.record(
                            "talkgate.limiter.waited_ms",
                            i64::try_from(permit.waited().as_millis()).unwrap_or(i64::MAX),
                        );
                        span.record("talkgate.limiter.outcome", "granted");
                    }
                    Err(e) => {
                        let outcome = match e {
                            LimiterError::Timeout { .. } => "timeout",
                            _ => "unavailable",
                        };
                        span.record("talkgate.limiter.outcome", outcome);
                        span.record("otel.status_code", "error");
                    }
                }
                result
            }
            .instrument(span),
        )
    }

    async fn stats(&self) -> LimiterStats {
        self.inner.stats().await
    }

    async fn set_limit(&self, max_concurrent: u32) -> Result<(), LimiterError> {
        self.inner.set_limit(max_concurrent).await
    }
}

/// did-client's observer: the upstream duration histogram, and the `traceparent` of each
/// exchange.
#[derive(Debug)]
pub struct UpstreamObserver {
    metrics: Arc<Metrics>,
    gate: Option<Arc<app::Upstream>>,
}

impl UpstreamObserver {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> UpstreamObserver {
        UpstreamObserver {
            metrics,
            gate: None,
        }
    }

    /// Also tells `gate` (the adaptive limit and breaker) of every exchange.
    pub fn with_gate(mut self, gate: Arc<app::Upstream>) -> UpstreamObserver {
        self.gate = Some(gate);
        self
    }
}

/// An exchange as the gate counts it.
fn sample_of(exchange: &did_client::Exchange) -> app::upstream::Sample {
    use app::upstream::Outcome;
    let outcome = match exchange.outcome {
        did_client::ExchangeOutcome::Answered(status) => Outcome::of_status(status),
        did_client::ExchangeOutcome::Failed("timeout") => Outcome::TimedOut,
        // An unreadable answer is still an answer: D-ID is up.
        did_client::ExchangeOutcome::Failed("protocol") => Outcome::Answered,
        did_client::ExchangeOutcome::Failed(_) => Outcome::Failed,
    };
    app::upstream::Sample {
        outcome,
        took: exchange.took,
        waited: exchange.waited,
        retry_after: exchange.retry_after,
    }
}

impl did_client::ExchangeObserver for UpstreamObserver {
    fn headers(&self, headers: &mut http::HeaderMap) {
        crate::traces::inject(&tracing::Span::current(), headers);
    }

    fn exchanged(&self, exchange: &did_client::Exchange) {
        self.metrics.record_exchange(exchange);
        if let Some(gate) = &self.gate {
            gate.observe(&sample_of(exchange));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: &str, label: &str) {
        assert_eq!(method_label(method), label, "{method:?}");
    }

    #[test]
    fn methods_outside_the_standard_set_are_labelled_other() {
        check("GET", "GET");
        check("HEAD", "HEAD");
        check("CONNECT", "CONNECT");
        check("PATCH", "PATCH");
        check("get", "other");
        check("PROPFIND", "other");
        check(&"X".repeat(60_000), "other");
        check("", "other");
    }

    #[test]
    fn every_request_series_has_a_closed_set_label() {
        let m = Metrics::new();
        for i in 0..100 {
            m.record_request("unmatched", &format!("M{i}"), 405, Duration::ZERO);
        }
        let text = m.encode().unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("talkgate_http_requests_total{"))
            .count();
        assert_eq!(series, 1, "{text}");
        assert!(text.contains("method=\"other\""), "{text}");
    }
}
