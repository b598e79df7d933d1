//! [`OtlpReceiver`]: an OTLP/HTTP traces receiver for tests and benchmarks — the
//! [`Receiver`](crate::receiver::Receiver) on a free loopback port, answering 200, with what
//! it took decoded as the protocol's own `ExportTraceServiceRequest` (protobuf, as
//! `http/protobuf` sends it) into [`ReceivedSpan`]s.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use prost::Message as _;

use crate::receiver::Receiver;

/// One span as the receiver decoded it; ids in lower-case hex, as in a `traceparent`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// Attributes, each value as text (numbers and booleans written out).
    pub attributes: HashMap<String, String>,
    /// The attributes sent as integers (OTLP `intValue`), by key.
    pub ints: HashMap<String, i64>,
    /// Links: (trace id, span id).
    pub links: Vec<(String, String)>,
    /// The names of its events (log lines inside the span).
    pub events: Vec<String>,
    /// Whether its status is an error.
    pub error: bool,
}

impl ReceivedSpan {
    /// The attribute `key` if it was sent as an integer.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.ints.get(key).copied()
    }

    /// The attribute `key` as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn kind(k: i32) -> &'static str {
    match k {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

/// Decodes one `ExportTraceServiceRequest` body into its spans.
pub fn decode(body: &[u8]) -> Result<Vec<ReceivedSpan>, prost::DecodeError> {
    let request = ExportTraceServiceRequest::decode(body)?;
    let mut spans = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .map(|a| text(a.value.as_ref()))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: s.name,
                    kind: kind(s.kind),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    attributes: s
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a.value.as_ref())))
                        .collect(),
                    ints: s
                        .attributes
                        .iter()
                        .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
                            any_value::Value::IntValue(i) => Some((a.key.clone(), *i)),
                            _ => None,
                        })
                        .collect(),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    events: s.events.iter().map(|e| e.name.clone()).collect(),
                    // STATUS_CODE_ERROR = 2
                    error: s.status.as_ref().is_some_and(|st| st.code == 2),
                });
            }
        }
    }
    Ok(spans)
}

/// An OTLP/HTTP receiver; stops when dropped.
pub struct OtlpReceiver {
    receiver: Receiver,
}

impl OtlpReceiver {
    /// Starts one on a free loopback port.
    pub async fn start() -> OtlpReceiver {
        OtlpReceiver {
            receiver: Receiver::start(200).await,
        }
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter adds `/v1/traces`).
    pub fn endpoint(&self) -> String {
        self.receiver.url("")
    }

    /// Export requests taken so far (every path).
    pub fn requests(&self) -> usize {
        self.receiver.received().len()
    }

    /// Every span received at `/v1/traces` so far, in arrival order. A body that does not
    /// decode panics: the receiver is a test's, and a bad export is a failure.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.receiver
            .received()
            .iter()
            .filter(|r| r.path == "/v1/traces")
            .flat_map(|r| {
                decode(&r.body).unwrap_or_else(|e| panic!("an export that does not decode: {e}"))
            })
            .collect()
    }

    /// The `content-type` of the first export, if any.
    pub fn content_type(&self) -> Option<String> {
        self.receiver
            .received()
            .first()
            .and_then(|r| r.header("content-type").map(str::to_owned))
    }
}
