//! OpenTelemetry traces: exported over OTLP when the standard variables ask for it, nothing
//! made (and nothing paid) otherwise.
//!
//! # When
//! Traces are exported when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, unless `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` ([`TraceSetup::from_env`]). The SDK reads the rest of the
//! standard variables itself: `OTEL_SERVICE_NAME` (default `talkgate`),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_{,TRACES_}{HEADERS,TIMEOUT,COMPRESSION}`,
//! `OTEL_TRACES_SAMPLER{,_ARG}` (default `parentbased_always_on`) and `OTEL_BSP_*` (the batch
//! queue: at most 2048 spans by default, the newest dropped beyond it; a batch every 5 s).
//! The protocol is `http/protobuf` (default) or `http/json`; `grpc` is not built in, and
//! asking for it (or for another exporter) is reported at start and exports nothing: the
//! service runs, as with any broken dependency.
//!
//! # What
//! - The server span of each request (`request`, named `"{method} {route}"`, with
//!   `http.request.method`, `http.route`, `url.path`, `url.scheme`,
//!   `http.response.status_code`; a 5xx is an error), the parent taken from the caller's
//!   W3C `traceparent`/`tracestate`.
//! - `limiter.acquire` (priority, tenant, wait, outcome) for every acquire that queues (one
//!   decided at once waited for nothing, and costs no span).
//! - did-client's operation spans of several exchanges (a create with its look-ups, a wait
//!   with its polls) and one `upstream` client span per exchange (see
//!   [`did_client::observe`]; an operation of one exchange is that span alone); each exchange carries the trace to D-ID in its
//!   `traceparent` header.
//! - The job engine's spans (`job.step`, `job.update`, `talk_webhook.receive`,
//!   `callback.deliver`): a job keeps the trace context it was submitted in, and a step
//!   minutes or hours later, on any instance, is linked to it (see [`app::traces`]). A
//!   callback carries its delivery span's `traceparent` to the receiver.
//! - Warnings and errors logged inside these spans become span events (`info` lines stay in
//!   the log only).
//!
//! Spans of other crates (hyper, reqwest, fred…) are not exported; the OTLP client's own
//! requests are never traced, so exporting cannot feed itself.
//!
//! # Seen
//! Export batches that succeed or fail are counted ([`ExportCounts`]), in `/stats`
//! (`traces`) and `/metrics` (`talkgate_trace_export_batches_total{result}`,
//! `talkgate_trace_spans_exported_total`); the first failure of a streak is logged as a
//! warning, the rest at debug, and the first success after it at info.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use ports::TraceContext;
use serde::Serialize;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;

/// Whether spans are exported in this process (set once by [`install`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: code that would build a span or a header only for export
/// asks this first, so nothing is paid without an exporter.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The OTLP protocols built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OtlpProtocol {
    /// `http/protobuf`, the default.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// `http/json`.
    #[serde(rename = "http/json")]
    HttpJson,
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceSetup {
    /// No export; why (`no OTLP endpoint set`, `OTEL_SDK_DISABLED`, …).
    Off(&'static str),
    /// Export over OTLP.
    Export {
        /// The traces endpoint as the SDK will resolve it, for the log and `/stats`
        /// (without user info or query, which may carry credentials).
        endpoint: String,
        /// The protocol.
        protocol: OtlpProtocol,
        /// The service name (`OTEL_SERVICE_NAME`, default `talkgate`).
        service_name: String,
    },
    /// Asked for something this build cannot do: reported, nothing exported.
    Refused(String),
}

/// The service name when `OTEL_SERVICE_NAME` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "talkgate";

impl TraceSetup {
    /// Reads the standard variables through `var` (see the module docs).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> TraceSetup {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return TraceSetup::Off("OTEL_SDK_DISABLED is true");
        }
        match get("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return TraceSetup::Off("OTEL_TRACES_EXPORTER is none"),
            Some(other) => {
                return TraceSetup::Refused(format!(
                    "OTEL_TRACES_EXPORTER={other:?}: only \"otlp\" (or \"none\") is built in"
                ));
            }
        }
        let endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(traces), _) => traces,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return TraceSetup::Off("no OTLP endpoint set"),
        };
        let shown = match url::Url::parse(&endpoint) {
            Ok(mut u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.set_query(None);
                u.to_string()
            }
            _ => {
                return TraceSetup::Refused(
                    "the OTLP endpoint is not an http:// or https:// URL".to_owned(),
                );
            }
        };
        let protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let protocol = match protocol.as_deref() {
            None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("http/json") => OtlpProtocol::HttpJson,
            Some(other) => {
                return TraceSetup::Refused(format!(
                    "OTLP protocol {other:?} is not built in: use http/protobuf (a collector's \
                     port 4318) or http/json"
                ));
            }
        };
        TraceSetup::Export {
            endpoint: shown,
            protocol,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| DEFAULT_SERVICE_NAME.into()),
        }
    }
}

/// The entries of `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_TRACES_HEADERS`
/// (`key=value,…`) that the exporter would drop without a word: no `=`, or a name or value
/// that cannot be an HTTP header. Each problem names the variable and the entry's position
/// and name, never its value (a vendor's key).
pub fn otlp_header_problems(var: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for name in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        let Some(list) = var(name) else { continue };
        for (i, entry) in list
            .split(',')
            .enumerate()
            .filter(|(_, e)| !e.trim().is_empty())
        {
            let n = i + 1;
            let Some((key, value)) = entry.split_once('=') else {
                problems.push(format!("{name}: entry {n} has no '='"));
                continue;
            };
            let key = key.trim();
            let decoded = percent_encoding::percent_decode_str(value.trim()).decode_utf8_lossy();
            if http::HeaderName::from_bytes(key.as_bytes()).is_err() {
                problems.push(format!(
                    "{name}: entry {n} ({key:?}) is not a valid header name"
                ));
            } else if http::HeaderValue::from_str(&decoded).is_err() {
                problems.push(format!(
                    "{name}: entry {n} ({key}) has a value that cannot be a header"
                ));
            }
        }
    }
    problems
}

/// Export batches and spans, since start.
#[derive(Debug, Default)]
pub struct ExportCounts {
    /// Batches the collector accepted.
    pub batches_ok: AtomicU64,
    /// Batches that failed (collector down, refused, timed out).
    pub batches_failed: AtomicU64,
    /// Spans in accepted batches.
    pub spans_exported: AtomicU64,
    /// Set while exports fail (one warning a streak).
    failing: AtomicBool,
}

/// A snapshot of the traces' state for `/stats`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceStats {
    /// Whether spans are exported.
    pub traces_exported: bool,
    /// Why not, when they are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traces_off_because: Option<String>,
    /// The OTLP traces endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// The protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_protocol: Option<OtlpProtocol>,
    /// Export batches accepted.
    pub export_batches_ok: u64,
    /// Export batches failed.
    pub export_batches_failed: u64,
    /// Spans exported.
    pub spans_exported: u64,
}

/// [`exported`] as a per-layer filter, decided once per callsite (it reads nothing but the
/// metadata), so a span or event pays no filter call after its first.
struct Exported;

impl<S> tracing_subscriber::layer::Filter<S> for Exported {
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        exported(meta)
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if exported(meta) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }
}

/// The exporter wrapped to count what it did (see [`ExportCounts`]).
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    counts: Arc<ExportCounts>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let c = &self.counts;
        match &result {
            Ok(()) => {
                c.batches_ok.fetch_add(1, Ordering::Relaxed);
                c.spans_exported.fetch_add(n, Ordering::Relaxed);
                if c.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export works again");
                }
            }
            Err(e) => {
                c.batches_failed.fetch_add(1, Ordering::Relaxed);
                if c.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %e, spans = n, "trace export failed");
                } else {
                    tracing::warn!(error = %e, spans = n, "trace export failed; spans are dropped until it works again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The traces of this process: the setup, the counts, and the provider to flush at exit.
#[derive(Debug, Clone)]
pub struct Traces {
    setup: TraceSetup,
    counts: Arc<ExportCounts>,
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// No traces (tests and embedders that install nothing).
    pub fn off() -> Traces {
        Traces {
            setup: TraceSetup::Off("not installed"),
            counts: Arc::default(),
            provider: None,
        }
    }

    /// What was asked for.
    pub fn setup(&self) -> &TraceSetup {
        &self.setup
    }

    /// The snapshot for `/stats`.
    pub fn stats(&self) -> TraceStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (endpoint, protocol, off) = match &self.setup {
            TraceSetup::Export {
                endpoint, protocol, ..
            } if self.provider.is_some() => (Some(endpoint.clone()), Some(*protocol), None),
            TraceSetup::Export { .. } => {
                (None, None, Some("the exporter could not be built".into()))
            }
            TraceSetup::Off(why) => (None, None, Some((*why).to_owned())),
            TraceSetup::Refused(why) => (None, None, Some(why.clone())),
        };
        TraceStats {
            traces_exported: self.provider.is_some(),
            traces_off_because: off,
            otlp_endpoint: endpoint,
            otlp_protocol: protocol,
            export_batches_ok: get(&self.counts.batches_ok),
            export_batches_failed: get(&self.counts.batches_failed),
            spans_exported: get(&self.counts.spans_exported),
        }
    }

    /// The counts, for `/metrics`, when spans are exported.
    pub fn counts(&self) -> Option<(u64, u64, u64)> {
        self.provider.as_ref().map(|_| {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            (
                get(&self.counts.batches_ok),
                get(&self.counts.batches_failed),
                get(&self.counts.spans_exported),
            )
        })
    }

    /// Exports what is queued and stops the exporter (at exit; bounded by the exporter's
    /// timeout).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "could not flush the last spans");
        }
    }
}

/// What is exported: the spans of talkgate's own crates at `info` and above, and the
/// warnings and errors logged inside them (as span events). The `info` log lines (a request
/// finished, a job's state changed) are left to the log: the spans already say the same
/// (`http.response.status_code`, `job.update`), and an event per line would double the
/// export's cost per request.
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    let krate = meta.target().split("::").next().unwrap_or_default();
    let ours = matches!(krate, "http_api" | "app" | "did_client" | "callback_sender");
    // did-client's operations of one exchange (a read, an upload, a delete) would be a span
    // around their `upstream` span saying nothing more; those of several (a create with its
    // look-ups, a wait with its polls) group them and are kept.
    let single_exchange = krate == "did_client"
        && meta.is_span()
        && matches!(
            meta.name(),
            "get_talk"
                | "list_talks"
                | "delete_talk"
                | "upload_image"
                | "upload_audio"
                | "delete_image"
                | "delete_audio"
                | "credits"
        );
    if single_exchange {
        return false;
    }
    let level = if meta.is_span() {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    ours && *meta.level() <= level
}

/// The tracing layer that exports spans, and the [`Traces`] behind it, for `setup`; `None`
/// as the layer when nothing is exported. Call [`activate`] once the layer is installed.
pub fn layer<S>(setup: TraceSetup) -> (Option<Box<dyn Layer<S> + Send + Sync + 'static>>, Traces)
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    let counts = Arc::<ExportCounts>::default();
    let untraced = |setup, counts| {
        let traces = Traces {
            setup,
            counts,
            provider: None,
        };
        (None, traces)
    };
    let TraceSetup::Export {
        protocol,
        service_name,
        ..
    } = &setup
    else {
        return untraced(setup, counts);
    };
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(match protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        })
        .build();
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            // Reported at start by `log_setup`; the service runs without traces.
            let setup = TraceSetup::Refused(format!("the OTLP exporter could not be built: {e}"));
            return untraced(setup, counts);
        }
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(Counted {
            inner: exporter,
            counts: counts.clone(),
        })
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("talkgate");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_filter(Exported);
    (
        Some(Box::new(layer)),
        Traces {
            setup,
            counts,
            provider: Some(provider),
        },
    )
}

/// Turns on what the layer needs at run time (the W3C propagator, [`enabled`]); call once
/// the subscriber with the layer is installed.
pub fn activate(traces: &Traces) {
    if traces.provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        ENABLED.store(true, Ordering::Relaxed);
    }
}

/// Logs what the variables asked for (after the subscriber is installed).
pub fn log_setup(traces: &Traces) {
    match traces.setup() {
        TraceSetup::Export {
            endpoint,
            protocol,
            service_name,
        } if traces.provider.is_some() => tracing::info!(
            endpoint = %endpoint,
            protocol = ?protocol,
            service_name = %service_name,
            "exporting traces over OTLP"
        ),
        TraceSetup::Refused(why) => {
            tracing::error!(reason = %why, "traces are not exported");
        }
        _ => {}
    }
}

/// Sets `span`'s parent to the trace context in `headers` (a caller's `traceparent`), if
/// there is a valid one and spans are exported.
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    if !enabled() {
        return;
    }
    let extractor = opentelemetry_http::HeaderExtractor(headers);
    let cx = TraceContextPropagator::new().extract(&extractor);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Adds `span`'s trace context (`traceparent`, `tracestate`) to `headers`, if spans are
/// exported.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = span.context();
    TraceContextPropagator::new()
        .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
}

/// `span`'s context as stored with a job.
fn stored_context(span: &tracing::Span) -> Option<TraceContext> {
    if !enabled() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    TraceContext::new(
        carrier.get("traceparent")?,
        carrier.get("tracestate").map(String::as_str),
    )
}

/// The engine's bridge ([`app::JobTraces`]) over OpenTelemetry.
#[derive(Debug, Default)]
pub struct OtelJobTraces;

impl app::JobTraces for OtelJobTraces {
    fn current(&self) -> Option<TraceContext> {
        stored_context(&tracing::Span::current())
    }

    fn link(&self, span: &tracing::Span, trace: &TraceContext) {
        if !enabled() {
            return;
        }
        let mut carrier: HashMap<String, String> = HashMap::new();
        carrier.insert("traceparent".into(), trace.traceparent.clone());
        if let Some(state) = &trace.tracestate {
            carrier.insert("tracestate".into(), state.clone());
        }
        let cx = TraceContextPropagator::new().extract(&carrier);
        let linked = cx.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(pairs: &[(&str, &str)]) -> TraceSetup {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TraceSetup::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn traces_are_exported_only_when_an_endpoint_is_set_and_nothing_turns_them_off() {
        assert_eq!(setup(&[]), TraceSetup::Off("no OTLP endpoint set"));
        assert_eq!(
            setup(&[
                ("OTEL_SERVICE_NAME", "x"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", " ")
            ]),
            TraceSetup::Off("no OTLP endpoint set")
        );
        assert_eq!(
            setup(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")]),
            TraceSetup::Export {
                endpoint: "http://127.0.0.1:4318/v1/traces".into(),
                protocol: OtlpProtocol::HttpProtobuf,
                service_name: "talkgate".into(),
            }
        );
        assert_eq!(
            setup(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://user:secret@collector.example/otlp/traces?key=secret"
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_SERVICE_NAME", "gateway-eu"),
            ]),
            TraceSetup::Export {
                endpoint: "https://collector.example/otlp/traces".into(),
                protocol: OtlpProtocol::HttpJson,
                service_name: "gateway-eu".into(),
            }
        );
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(
            setup(&[on, ("OTEL_SDK_DISABLED", "TRUE")]),
            TraceSetup::Off("OTEL_SDK_DISABLED is true")
        );
        assert_eq!(
            setup(&[on, ("OTEL_TRACES_EXPORTER", "none")]),
            TraceSetup::Off("OTEL_TRACES_EXPORTER is none")
        );
        for refused in [
            setup(&[on, ("OTEL_TRACES_EXPORTER", "zipkin")]),
            setup(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            setup(&[on, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")]),
            setup(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]),
        ] {
            assert!(matches!(refused, TraceSetup::Refused(_)), "{refused:?}");
        }
    }

    #[test]
    fn header_entries_the_exporter_would_drop_are_named_without_their_values() {
        let map: HashMap<&str, &str> = HashMap::from([
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=s3cret-value,x api key=other-s3cret,novalue,",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "authorization=Bearer%20tok",
            ),
        ]);
        let problems = otlp_header_problems(|k| map.get(k).map(|v| (*v).to_owned()));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("entry 2") && problems[0].contains("\"x api key\""));
        assert!(problems[1].contains("entry 3") && problems[1].contains("no '='"));
        assert!(problems.iter().all(|p| !p.contains("s3cret")));
        assert!(otlp_header_problems(|_| None).is_empty());
    }

    #[test]
    fn without_an_exporter_nothing_is_stored_injected_or_linked() {
        let traces = Traces::off();
        assert!(traces.counts().is_none());
        assert!(!traces.stats().traces_exported);
        let mut headers = http::HeaderMap::new();
        inject(&tracing::Span::current(), &mut headers);
        assert!(headers.is_empty());
        assert_eq!(app::JobTraces::current(&OtelJobTraces), None);
    }
}
