//! The sender against a real receiver on loopback: signatures the `standardwebhooks`
//! verifier accepts (with rotation), the SSRF table (nothing reaches the receiver), pinned
//! names that resolve inside (DNS rebinding), no redirects, timeouts and endpoint slots.

use std::collections::HashMap;
use std::time::Duration;

use callback_sender::{CallbackConfig, DestinationPolicy, HttpCallbackSender, Signer};
use domain::CallbackUrl;
use ports::{CallbackDelivery, CallbackError, CallbackSender};
use secrecy::SecretString;
use standardwebhooks::Webhook;
use test_support::receiver::{Received, Receiver};

const CURRENT: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PREVIOUS: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const WAIT: Duration = Duration::from_secs(5);

fn loopback_allowed() -> CallbackConfig {
    CallbackConfig {
        policy: DestinationPolicy {
            allow_http: true,
            allowed_nets: vec!["127.0.0.0/8".parse().unwrap()],
        },
        ..CallbackConfig::default()
    }
}

fn sender(config: CallbackConfig) -> HttpCallbackSender {
    let signer = Signer::new(&SecretString::from(CURRENT), None).unwrap();
    HttpCallbackSender::new(config, signer).unwrap()
}

fn delivery(url: &str) -> CallbackDelivery {
    CallbackDelivery {
        url: CallbackUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}")),
        webhook_id: "msg_job_0001_talk.done".to_owned(),
        payload: br#"{"type":"talk.done","timestamp":"2026-12-07T12:00:00Z","data":{"job_id":"job_0001"}}"#.to_vec(),
        trace: None,
    }
}

/// Whether the crate's verifier with `secret` accepts what the receiver got.
fn verifies(secret: &str, got: &Received) -> bool {
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, got.header(name).unwrap().parse().unwrap());
    }
    Webhook::new(secret)
        .unwrap()
        .verify(&got.body, &headers)
        .is_ok()
}

#[tokio::test]
async fn a_traced_delivery_carries_its_trace_context_and_an_untraced_one_none() {
    let receiver = Receiver::start(204).await;
    let sender = sender(loopback_allowed());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = CallbackDelivery {
        trace: ports::TraceContext::new(traceparent, Some("talkgate=1")),
        ..delivery(&receiver.url("/traced"))
    };
    assert!(traced.trace.is_some());
    sender.send(&traced).await.expect("delivered");
    sender
        .send(&delivery(&receiver.url("/plain")))
        .await
        .expect("delivered");
    let got = receiver.wait_for(2, WAIT).await;
    let of = |path: &str| got.iter().find(|r| r.path == path).unwrap();
    assert_eq!(of("/traced").header("traceparent"), Some(traceparent));
    assert_eq!(of("/traced").header("tracestate"), Some("talkgate=1"));
    assert_eq!(of("/plain").header("traceparent"), None);
    assert_eq!(of("/plain").header("tracestate"), None);
}

#[tokio::test]
async fn a_delivery_is_signed_so_the_standard_verifier_accepts_it() {
    let receiver = Receiver::start(204).await;
    let sender = sender(loopback_allowed());
    let d = delivery(&receiver.url("/hooks/talkgate"));
    let receipt = sender.send(&d).await.expect("delivered");
    assert_eq!(receipt.status, 204);
    let got = receiver.wait_for(1, WAIT).await;
    let got = &got[0];
    assert_eq!(
        (got.method.as_str(), got.path.as_str()),
        ("POST", "/hooks/talkgate")
    );
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("webhook-id"), Some("msg_job_0001_talk.done"));
    assert_eq!(got.body, d.payload);
    assert!(verifies(CURRENT, got), "{got:?}");
    assert!(!verifies(PREVIOUS, got), "another secret must not verify");
    // A body changed on the way no longer verifies.
    let mut tampered = got.clone();
    tampered.body = br#"{"type":"talk.failed"}"#.to_vec();
    assert!(!verifies(CURRENT, &tampered));

    // A second attempt of the same delivery: the same id, a fresh signature.
    sender.send(&d).await.expect("delivered again");
    let both = receiver.wait_for(2, WAIT).await;
    assert_eq!(both[1].header("webhook-id"), both[0].header("webhook-id"));
    assert!(verifies(CURRENT, &both[1]));
}

#[tokio::test]
async fn during_a_rotation_receivers_of_either_secret_accept_it() {
    let receiver = Receiver::start(200).await;
    let signer = Signer::new(
        &SecretString::from(CURRENT),
        Some(&SecretString::from(PREVIOUS)),
    )
    .unwrap();
    let sender = HttpCallbackSender::new(loopback_allowed(), signer).unwrap();
    sender.send(&delivery(&receiver.url("/h"))).await.unwrap();
    let got = &receiver.wait_for(1, WAIT).await[0];
    assert_eq!(
        got.header("webhook-signature")
            .unwrap()
            .matches("v1,")
            .count(),
        2
    );
    assert!(verifies(CURRENT, got));
    assert!(verifies(PREVIOUS, got));
}

#[tokio::test]
async fn internal_destinations_are_refused_before_anything_is_sent() {
    let receiver = Receiver::start(200).await;
    let port = receiver.addr().port();
    // The default policy: https only, nothing internal.
    let strict = sender(CallbackConfig::default());
    // http allowed, but no network: the receiver's loopback address is still refused.
    let http_only = sender(CallbackConfig {
        policy: DestinationPolicy {
            allow_http: true,
            allowed_nets: Vec::new(),
        },
        ..CallbackConfig::default()
    });
    let table = [
        format!("http://127.0.0.1:{port}/h"),
        format!("http://[::1]:{port}/h"),
        format!("http://localhost:{port}/h"),
        format!("http://0.0.0.0:{port}/h"),
        format!("http://2130706433:{port}/h"),
        format!("http://0x7f000001:{port}/h"),
        "http://10.0.0.1/h".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
        "https://[fd00:ec2::254]/latest/meta-data/".to_owned(),
    ];
    for url in &table {
        for (name, s) in [("strict", &strict), ("http allowed", &http_only)] {
            match s.send(&delivery(url)).await {
                Err(e @ CallbackError::Refused(_)) => assert!(e.is_permanent()),
                other => panic!("{name}: {url}: {other:?}"),
            }
        }
    }
    // https to loopback is refused by address too, not only for its scheme.
    let e = strict
        .send(&delivery(&format!("https://127.0.0.1:{port}/h")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(receiver.received().is_empty(), "{:?}", receiver.received());
}

#[tokio::test]
async fn a_name_is_checked_by_the_address_it_is_connected_to() {
    let receiver = Receiver::start(200).await;
    let url = format!("http://receiver.example:{}/h", receiver.addr().port());
    let pinned = HashMap::from([(
        "receiver.example".to_owned(),
        vec!["127.0.0.1".parse().unwrap()],
    )]);
    // A public-looking name that resolves to loopback (a rebinding) is refused at connect.
    let guarded = sender(CallbackConfig {
        policy: DestinationPolicy {
            allow_http: true,
            allowed_nets: Vec::new(),
        },
        pinned_hosts: pinned.clone(),
        ..CallbackConfig::default()
    });
    match guarded.send(&delivery(&url)).await {
        Err(CallbackError::Refused(why)) => assert!(why.contains("loopback"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(receiver.received().is_empty());
    // The same name with its network allowed is delivered, to the address it resolved to.
    let allowed = sender(CallbackConfig {
        pinned_hosts: pinned,
        ..loopback_allowed()
    });
    allowed.send(&delivery(&url)).await.expect("delivered");
    assert_eq!(
        receiver.wait_for(1, WAIT).await[0].header("host"),
        Some(&*format!("receiver.example:{}", receiver.addr().port()))
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = Receiver::start(200).await;
    let redirecting = Receiver::start(307).await;
    redirecting.set_location(&target.url("/elsewhere"));
    let e = sender(loopback_allowed())
        .send(&delivery(&redirecting.url("/h")))
        .await
        .unwrap_err();
    assert_eq!(e, CallbackError::Status { status: 307 });
    assert!(!e.is_permanent(), "a redirect may be fixed by the receiver");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(redirecting.received().len(), 1);
    assert!(target.received().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_holds_back_only_its_own_endpoint() {
    let slow = Receiver::start(200).await;
    slow.set_delay(Duration::from_secs(3));
    let fast = Receiver::start(200).await;
    let sender = std::sync::Arc::new(sender(CallbackConfig {
        timeout: Duration::from_millis(400),
        per_endpoint: 1,
        ..loopback_allowed()
    }));
    let first = {
        let sender = std::sync::Arc::clone(&sender);
        let d = delivery(&slow.url("/h"));
        tokio::spawn(async move { sender.send(&d).await })
    };
    slow.wait_for(1, WAIT).await;
    // The slow endpoint's one slot is taken: another delivery there is refused at once…
    assert_eq!(
        sender.send(&delivery(&slow.url("/h"))).await,
        Err(CallbackError::Busy)
    );
    // …while another endpoint is served.
    sender
        .send(&delivery(&fast.url("/h")))
        .await
        .expect("the fast one");
    let timed_out = first.await.unwrap().unwrap_err();
    assert!(
        matches!(timed_out, CallbackError::Timeout(_)),
        "{timed_out:?}"
    );
    assert!(!timed_out.is_permanent());
}

#[tokio::test]
async fn refusals_by_the_receiver_say_whether_to_try_again() {
    let receiver = Receiver::start(410).await;
    let sender = sender(loopback_allowed());
    let gone = sender
        .send(&delivery(&receiver.url("/h")))
        .await
        .unwrap_err();
    assert_eq!(gone, CallbackError::Status { status: 410 });
    assert!(gone.is_permanent());
    receiver.set_status(503);
    let busy = sender
        .send(&delivery(&receiver.url("/h")))
        .await
        .unwrap_err();
    assert!(!busy.is_permanent());
}

#[tokio::test]
async fn a_failed_attempt_never_tells_the_urls_query() {
    // A port nothing listens on: the connection is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // (Credentials in a callback URL are refused when it is parsed.)
    let url = format!("http://127.0.0.1:{port}/cb?token=s3cret-tok#frag");
    let e = sender(loopback_allowed())
        .send(&delivery(&url))
        .await
        .unwrap_err();
    let CallbackError::Transport(text) = &e else {
        panic!("a refused connection is a transport error: {e:?}");
    };
    assert!(text.contains(&format!("127.0.0.1:{port}/cb")), "{text}");
    for secret in ["s3cret-tok", "token=", "frag"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_tried_again_not_refused() {
    // `.invalid` never resolves (RFC 2606): as a DNS outage would look.
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        sender(CallbackConfig::default()).send(&delivery("https://talkgate-test.invalid/cb")),
    )
    .await
    .expect("the look-up ends")
    .unwrap_err();
    assert!(matches!(e, CallbackError::Transport(_)), "{e:?}");
    assert!(!e.is_permanent(), "a name may resolve later: {e:?}");
}
