//! OpenTelemetry end to end: the binary as an operator runs it, with the standard `OTEL_*`
//! variables pointing at an OTLP receiver this test starts in-process (the protocol's own
//! protobuf types decode what arrives). Spans arrive with the HTTP conventions' attributes
//! and the right parents, a caller's `traceparent` is continued, the trace reaches did-fake
//! in each exchange's `traceparent`, and a worker's step of a queued job is linked to the
//! request that submitted it. Without the variables nothing is exported.

use std::collections::BTreeMap;
use std::time::Duration;

use did_fake::{Delay, Faults, Latency};

use serde_json::{Value, json};
use test_support::eventually::eventually;
use test_support::http::{client, json as read_json};
use test_support::otlp::{OtlpReceiver, ReceivedSpan};

use crate::support;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const JOB_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const JOB_SPAN: &str = "b7ad6b7169203331";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

fn talk() -> Value {
    json!({
        "audio_url": "https://example.test/voice.wav",
        "source_url": "https://example.test/face.jpg",
    })
}

/// `span`'s ancestors up to the root of its trace, nearest first.
fn ancestors<'a>(spans: &'a [ReceivedSpan], span: &'a ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut chain = Vec::new();
    let mut at = span;
    while let Some(parent) = spans
        .iter()
        .find(|s| s.trace_id == at.trace_id && s.span_id == at.parent_span_id)
    {
        chain.push(parent);
        at = parent;
    }
    chain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_linked_from_caller_to_d_id_and_from_worker_to_submit() {
    let otlp = OtlpReceiver::start().await;
    // did-fake calls the service's talk webhook; the job's callback goes to a receiver here.
    // Status reads take 300 ms, so a read can hold the one slot while the traced request
    // queues for it.
    let fake = did_fake::FakeDid::builder()
        .time_scale(0.001)
        .allow_http_webhooks(true)
        .faults(Faults {
            latency: Latency {
                all: None,
                routes: BTreeMap::from([("GET /talks/{id}".to_owned(), Delay::Fixed(300))]),
            },
            ..Faults::default()
        })
        .spawn()
        .await
        .unwrap();
    let callbacks = test_support::receiver::Receiver::start(204).await;
    let base = fake.base_url();
    let endpoint = otlp.endpoint();
    let port = test_support::free_port();
    let (bind, public) = (
        format!("127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}"),
    );
    let binary = support::Binary::start(&[
        ("D_ID_BASE_URL", base.as_str()),
        ("D_ID_API_KEY", did_fake::DEFAULT_API_KEY),
        ("POLL_INTERVAL_SECS", "0.01"),
        ("MAX_CONCURRENT_REQUESTS", "1"),
        ("BIND_ADDR", bind.as_str()),
        ("PUBLIC_BASE_URL", public.as_str()),
        ("CALLBACK_SECRET", support::CALLBACK_SECRET),
        ("CALLBACK_ALLOW_HTTP", "true"),
        ("CALLBACK_ALLOWED_NETS", "127.0.0.0/8"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "talkgate-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let api = |path: &str| format!("http://{}/api/d_id_optimized{path}", binary.addr);
    let http = client();

    // A status read (untraced) holds the slot; then a synchronous generate, continuing the
    // caller's trace, queues for it.
    let hold = tokio::spawn({
        let (http, url) = (http.clone(), api("/talk-status/tlk_holding"));
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    eventually(Duration::from_secs(10), "the slot is held", || {
        let (http, url) = (http.clone(), api("/stats"));
        async move {
            let (_, stats) = read_json(http.get(url).send().await.unwrap()).await;
            stats["rate_limiter"]["active_requests"] == 1
        }
    })
    .await;
    let resp = http
        .post(api("/generate-video"))
        .header("traceparent", traceparent(CALLER_TRACE, CALLER_SPAN))
        .header("tracestate", "caller=1")
        .json(&talk())
        .send()
        .await
        .unwrap();
    let (status, body) = read_json(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hold.await.unwrap().unwrap(), 404);

    // A queued job, in a trace of its own, followed to its end by the workers, with a
    // callback.
    let mut job_body = talk();
    job_body["callback_url"] = json!(callbacks.url("/hooks/talkgate"));
    let resp = http
        .post(api("/jobs"))
        .header("traceparent", traceparent(JOB_TRACE, JOB_SPAN))
        .json(&job_body)
        .send()
        .await
        .unwrap();
    let (status, job) = read_json(resp).await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(20), "the job is done", || {
        let (http, url) = (http.clone(), api(&format!("/jobs/{job_id}")));
        async move {
            let (_, job) = read_json(http.get(url).send().await.unwrap()).await;
            job["status"] == "done"
        }
    })
    .await;
    // A request without a traceparent starts a trace of its own.
    let resp = http.get(api("/stats")).send().await.unwrap();
    let (_, stats) = read_json(resp).await;
    assert_eq!(stats["traces"]["traces_exported"], true, "{stats}");

    let delivered = callbacks.wait_for(1, Duration::from_secs(20)).await;
    eventually(
        Duration::from_secs(20),
        "the job's later spans are exported",
        || {
            let spans = otlp.spans();
            async move {
                let linked = |name: &str| {
                    spans
                        .iter()
                        .filter(|s| s.name.starts_with(name))
                        .any(|s| s.links.iter().any(|(t, _)| t == JOB_TRACE))
                };
                linked("job.step") && linked("talk_webhook.receive") && linked("callback.deliver")
            }
        },
    )
    .await;
    let spans = otlp.spans();
    assert_eq!(
        otlp.content_type().as_deref(),
        Some("application/x-protobuf")
    );
    assert!(spans.iter().all(|s| s.service == "talkgate-test"));
    // Nothing anywhere carries the key.
    for s in &spans {
        for (k, v) in &s.attributes {
            assert!(
                !v.contains(did_fake::DEFAULT_API_KEY) && !k.contains("authorization"),
                "{} {k}={v}",
                s.name
            );
        }
    }

    // The generate's server span continues the caller's trace.
    let server = spans
        .iter()
        .find(|s| s.kind == "server" && s.trace_id == CALLER_TRACE)
        .unwrap_or_else(|| panic!("no server span in the caller's trace: {spans:#?}"));
    assert_eq!(server.parent_span_id, CALLER_SPAN);
    assert_eq!(server.name, "POST /api/d_id_optimized/generate-video");
    assert_eq!(server.attr("http.request.method"), Some("POST"));
    assert_eq!(
        server.attr("http.route"),
        Some("/api/d_id_optimized/generate-video")
    );
    assert_eq!(
        server.int("http.response.status_code"),
        Some(200),
        "an integer"
    );
    assert!(!server.error);

    // Under it: the limiter's wait and each exchange with D-ID, as client spans.
    let in_caller: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == CALLER_TRACE)
        .collect();
    let under_server = |s: &ReceivedSpan| {
        ancestors(&spans, s)
            .iter()
            .any(|a| a.span_id == server.span_id)
    };
    let create = in_caller
        .iter()
        .find(|s| s.kind == "client" && s.attr("did.operation") == Some("create_talk"))
        .unwrap_or_else(|| panic!("no create_talk exchange: {in_caller:#?}"));
    assert!(under_server(create), "{create:#?}");
    assert_eq!(create.name, "POST /talks");
    assert_eq!(create.attr("http.request.method"), Some("POST"));
    assert_eq!(create.attr("url.template"), Some("/talks"));
    assert_eq!(
        create.int("http.response.status_code"),
        Some(201),
        "an integer"
    );
    assert!(create.int("server.port").is_some_and(|p| p > 0));
    assert_eq!(create.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(create.attr("talkgate.priority"), Some("normal"));
    let create_waited = create
        .int("talkgate.limiter.waited_ms")
        .expect("the exchange's wait for its slot, an integer");
    assert!(
        create_waited > 0,
        "the create queued behind the held read: {create:#?}"
    );
    let polls = in_caller
        .iter()
        .filter(|s| s.kind == "client" && s.attr("did.operation") == Some("get_talk"))
        .count();
    assert!(polls >= 1, "{in_caller:#?}");
    let acquire = in_caller
        .iter()
        .find(|s| s.name == "limiter.acquire")
        .unwrap_or_else(|| panic!("no limiter span: {in_caller:#?}"));
    assert!(under_server(acquire));
    assert_eq!(acquire.attr("talkgate.priority"), Some("normal"));
    assert_eq!(acquire.attr("talkgate.limiter.outcome"), Some("granted"));
    let waited = acquire
        .int("talkgate.limiter.waited_ms")
        .expect("the wait is recorded, an integer");
    assert!(waited > 0, "{acquire:#?}");

    // did-fake saw the trace in the create's traceparent, naming the exchange's span.
    let seen = fake.stats().traceparents;
    assert!(
        seen.contains(&format!(
            "POST /talks {}",
            traceparent(CALLER_TRACE, &create.span_id)
        )),
        "{seen:?} / {}",
        create.span_id
    );

    // The job: its submit in the caller's trace; its worker steps in traces of their own,
    // each linked to a span of the submit's trace.
    let submit = spans
        .iter()
        .find(|s| s.kind == "server" && s.trace_id == JOB_TRACE)
        .expect("the submit's server span");
    assert_eq!(submit.parent_span_id, JOB_SPAN);
    assert_eq!(submit.int("http.response.status_code"), Some(202));
    let steps: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name.starts_with("job.step") && s.attr("job.id") == Some(job_id.as_str()))
        .collect();
    assert!(!steps.is_empty(), "{spans:#?}");
    for step in &steps {
        assert_ne!(
            step.trace_id, JOB_TRACE,
            "a step is not part of the request"
        );
        assert_eq!(
            step.links,
            vec![(JOB_TRACE.to_owned(), submit.span_id.clone())],
            "{step:#?}"
        );
    }
    // The worker's create exchange is under its step, and D-ID saw the step's trace.
    let worker_create = spans
        .iter()
        .find(|s| {
            s.attr("did.operation") == Some("create_talk")
                && steps.iter().any(|st| st.trace_id == s.trace_id)
        })
        .expect("the worker's create is traced");
    assert!(
        ancestors(&spans, worker_create)
            .iter()
            .any(|a| a.name.starts_with("job.step")),
        "{worker_create:#?}"
    );
    // The state changes are spans of their own under the steps, with both states.
    assert!(
        spans.iter().any(|s| s.name == "job.update"
            && s.attr("job.id") == Some(job_id.as_str())
            && s.attr("job.status.to") == Some("done")),
        "{spans:#?}"
    );
    // D-ID's webhook and the callback are linked to the submit too, and the callback carried
    // its delivery span's context to the receiver.
    for name in ["talk_webhook.receive", "callback.deliver"] {
        let span = spans
            .iter()
            .find(|s| s.name == name && s.attr("job.id") == Some(job_id.as_str()))
            .unwrap_or_else(|| panic!("no {name} span: {spans:#?}"));
        assert_eq!(
            span.links,
            vec![(JOB_TRACE.to_owned(), submit.span_id.clone())],
            "{span:#?}"
        );
    }
    let deliver = spans.iter().find(|s| s.name == "callback.deliver").unwrap();
    assert_eq!(deliver.int("callback.status_code"), Some(204));
    assert_eq!(
        delivered[0].header("traceparent"),
        Some(traceparent(&deliver.trace_id, &deliver.span_id).as_str()),
        "{:?}",
        delivered[0].headers
    );
    let log = binary.kill().await;
    assert!(log.contains("exporting traces over OTLP"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_variables_nothing_is_exported_and_a_refused_protocol_is_reported() {
    let otlp = OtlpReceiver::start().await;
    let fake = support::fake().await;
    let base = fake.base_url();
    let endpoint = otlp.endpoint();
    // Set but disabled, and set with a protocol this build does not have: both run, neither
    // exports, the second says why.
    for (extra, said) in [
        (("OTEL_SDK_DISABLED", "true"), None),
        (
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            Some("traces are not exported"),
        ),
    ] {
        let binary = support::Binary::start(&[
            ("D_ID_BASE_URL", base.as_str()),
            ("D_ID_API_KEY", did_fake::DEFAULT_API_KEY),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            extra,
        ])
        .await;
        let api = |path: &str| format!("http://{}/api/d_id_optimized{path}", binary.addr);
        let resp = client()
            .post(api("/generate-video"))
            .header("traceparent", traceparent(CALLER_TRACE, CALLER_SPAN))
            .json(&talk())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (_, stats) = read_json(client().get(api("/stats")).send().await.unwrap()).await;
        assert_eq!(stats["traces"]["traces_exported"], false, "{stats}");
        assert!(stats["traces"]["traces_off_because"].is_string(), "{stats}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = binary.kill().await;
        if let Some(said) = said {
            assert!(log.contains(said) && log.contains("grpc"), "{log}");
        }
    }
    assert_eq!(otlp.requests(), 0, "nothing was sent to the collector");
    // No traceparent reached D-ID either: none was made.
    assert!(fake.stats().traceparents.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_is_the_other_protocol_built_in() {
    let otlp = test_support::receiver::Receiver::start(200).await;
    let fake = support::fake().await;
    let base = fake.base_url();
    let endpoint = otlp.url("");
    let binary = support::Binary::start(&[
        ("D_ID_BASE_URL", base.as_str()),
        ("D_ID_API_KEY", did_fake::DEFAULT_API_KEY),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ])
    .await;
    let url = format!("http://{}/api/d_id_optimized/generate-video", binary.addr);
    let resp = client()
        .post(url)
        .header("traceparent", traceparent(CALLER_TRACE, CALLER_SPAN))
        .json(&talk())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The first export may be another trace (the account's credits check at start): look
    // for the caller's.
    let body = eventually(
        Duration::from_secs(20),
        "the caller's trace is exported",
        || {
            let got = otlp.received();
            async move {
                got.iter()
                    .find(|r| r.json().to_string().contains(CALLER_TRACE))
                    .cloned()
                    .ok_or("not yet")
            }
        },
    )
    .await;
    assert_eq!(body.path, "/v1/traces");
    assert_eq!(body.header("content-type"), Some("application/json"));
    let json = body.json();
    let spans = &json["resourceSpans"][0]["scopeSpans"][0]["spans"];
    assert!(spans.as_array().is_some_and(|s| !s.is_empty()), "{json}");
    binary.kill().await;
}
