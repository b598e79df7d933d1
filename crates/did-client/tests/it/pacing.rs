//! The pacer against did-fake's token bucket: after the first 429 the client spaces its sends
//! by the rate it learned and stops sending into the throttle; a `Retry-After` holds every
//! send; with pacing off the same callers keep being throttled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use did_client::{DidClient, DidClientConfig, PacingConfig};
use did_fake::{FakeDid, Faults, RunningFake};
use domain::Priority;
use ports::{VideoApi, VideoApiError};
use secrecy::SecretString;

use crate::support::{fast_retry, limiter};

async fn fake(faults: Faults) -> RunningFake {
    FakeDid::builder()
        .time_scale(0.001)
        .seed(11)
        .faults(faults)
        .spawn()
        .await
        .unwrap()
}

fn did(fake: &RunningFake, pacing: PacingConfig) -> Arc<DidClient> {
    let config = DidClientConfig {
        retry: fast_retry(),
        pacing,
        ..DidClientConfig::new(
            fake.base_url(),
            Some(SecretString::from(did_fake::DEFAULT_API_KEY)),
        )
    };
    Arc::new(crate::support::client(config, limiter(8)))
}

/// `tasks` callers making `calls` reads each, as fast as they are let; how many were
/// throttled.
async fn hammer(did: &Arc<DidClient>, tasks: usize, calls: usize) -> usize {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let did = did.clone();
        handles.push(tokio::spawn(async move {
            let mut throttled = 0;
            for _ in 0..calls {
                match did.credits(&Priority::Normal.into()).await {
                    Ok(_) => {}
                    Err(VideoApiError::RateLimited { .. }) => throttled += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            throttled
        }));
    }
    let mut throttled = 0;
    for h in handles {
        throttled += h.await.unwrap();
    }
    throttled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_429_sends_are_paced_and_stop_going_into_the_throttle() {
    let limited = Faults {
        rate_limit_rps: Some(20.0),
        rate_limit_burst: Some(2.0),
        ..Faults::default()
    };
    // Unpaced, six callers far outrun 20 requests a second: most of their calls are 429s.
    let fake_off = fake(limited.clone()).await;
    let off = did(&fake_off, PacingConfig::off());
    let throttled_off = hammer(&off, 6, 8).await;
    assert!(throttled_off >= 24, "{throttled_off} of 48 throttled");
    assert!(!off.stats().pacing.enabled);
    fake_off.shutdown().await;

    // Paced (from 15 requests a second at the least, so the test is short): the first burst
    // and the few sends that bring the rate down from the burst's are throttled, then the
    // sends stay near the bucket's rate.
    let fake_on = fake(limited).await;
    let on = did(
        &fake_on,
        PacingConfig {
            min_rps: 15.0,
            ..PacingConfig::default()
        },
    );
    let throttled_on = hammer(&on, 6, 8).await;
    assert!(throttled_on <= 12, "{throttled_on} of 48 throttled");
    assert_eq!(fake_on.stats().rate_limited, throttled_on as u64);
    let pacing = on.stats().pacing;
    assert!(pacing.enabled && pacing.paced, "{pacing:?}");
    // Near the bucket's 20 a second: it probes above and comes down again.
    let rate = pacing.rate_rps.unwrap();
    assert!((15.0..=25.0).contains(&rate), "{pacing:?}");
    assert!(pacing.delayed > 0, "{pacing:?}");
    assert_eq!(pacing.throttled, throttled_on as u64);
    fake_on.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_holds_every_send_until_it_has_passed() {
    let fake = fake(Faults {
        rate_limit_rps: Some(2.0),
        rate_limit_burst: Some(1.0),
        retry_after_secs: Some(1),
        ..Faults::default()
    })
    .await;
    let did = did(&fake, PacingConfig::default());
    did.credits(&Priority::Normal.into()).await.unwrap();
    let err = did.credits(&Priority::Normal.into()).await.unwrap_err();
    assert_eq!(
        err,
        VideoApiError::RateLimited {
            retry_after: Some(Duration::from_secs(1))
        }
    );
    let throttled_at = Instant::now();
    // Sent only once the second has passed, when the bucket has a token again.
    did.credits(&Priority::Normal.into()).await.unwrap();
    assert!(
        throttled_at.elapsed() >= Duration::from_millis(900),
        "{:?}",
        throttled_at.elapsed()
    );
    let pacing = did.stats().pacing;
    assert_eq!(pacing.retry_after_holds, 1, "{pacing:?}");
    assert_eq!(pacing.delayed, 1, "{pacing:?}");
    assert_eq!(fake.stats().rate_limited, 1);
    fake.shutdown().await;
}
