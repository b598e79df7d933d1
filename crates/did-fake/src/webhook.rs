//! Webhook delivery, as D-ID does it (the spec's §10.5): when a talk with a `webhook` reaches
//! a terminal state (`done`, `error`, `rejected`), the fake POSTs the talk's JSON — the body
//! `GET /talks/{id}` would answer — to that URL with `Content-Type: application/json`. D-ID
//! signs nothing and documents no retries, so by default there is one unsigned attempt with a
//! 10 s timeout.
//!
//! The knobs ([`WebhookFaults`], the `webhooks` section of [`Faults`](crate::Faults)) make the
//! deliveries as unreliable as a receiver must survive: dropped, sent twice, delayed, held
//! back so that later ones overtake them, retried. Every draw comes from the fake's RNG, so a
//! [`seed`](crate::FakeBuilder::seed) makes a run's choices reproducible. What happened is
//! counted in [`WebhookStats`] (`webhooks` in `GET /_fake/stats`).
//!
//! Bounds: at most [`MAX_PENDING`] deliveries wait or run at once (beyond that a delivery
//! is counted as `overflowed` and not sent), at most [`MAX_CONCURRENT`] are on the wire, no
//! redirect is followed, and a receiver's answer is not read beyond its status.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::faults::Delay;
use crate::state::{Shared, lock};

/// Deliveries waiting or running at once, at most.
pub const MAX_PENDING: usize = 10_000;
/// Deliveries on the wire at once, at most.
pub const MAX_CONCURRENT: usize = 64;
/// The longest backoff between two attempts of one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How webhook deliveries misbehave (the `webhooks` section of the faults; missing fields
/// take their defaults, which send each webhook once, at once, as D-ID does).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookFaults {
    /// Probability that a talk's webhook is never sent.
    pub p_drop: f64,
    /// Probability that it is sent twice (the copy after its own delay draw, so it may
    /// arrive first).
    pub p_duplicate: f64,
    /// Delay before each sending, in milliseconds of real time (not scaled).
    pub delay: Option<Delay>,
    /// Probability that a sending is held back a further [`reorder_ms`](Self::reorder_ms),
    /// so that webhooks of talks that ended later overtake it.
    pub p_reorder: f64,
    /// How long a reordered sending is held back, in milliseconds.
    pub reorder_ms: u64,
    /// Attempts per sending: a transport failure, a timeout or a non-2xx answer is tried
    /// again up to this many times in all (at least 1).
    pub attempts: u32,
    /// The wait before the second attempt, in milliseconds; doubled for each later one (at
    /// most 30 s).
    pub retry_backoff_ms: u64,
    /// How long one attempt may take, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for WebhookFaults {
    fn default() -> Self {
        WebhookFaults {
            p_drop: 0.0,
            p_duplicate: 0.0,
            delay: None,
            p_reorder: 0.0,
            reorder_ms: 500,
            attempts: 1,
            retry_backoff_ms: 1_000,
            timeout_ms: 10_000,
        }
    }
}

impl WebhookFaults {
    /// Checks the probabilities, the attempts and the timeout; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("webhooks.p_drop", self.p_drop),
            ("webhooks.p_duplicate", self.p_duplicate),
            ("webhooks.p_reorder", self.p_reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be within 0..=1, got {p}"));
            }
        }
        if !(1..=20).contains(&self.attempts) {
            return Err(format!(
                "webhooks.attempts must be within 1..=20, got {}",
                self.attempts
            ));
        }
        if self.timeout_ms == 0 {
            return Err("webhooks.timeout_ms must be positive".to_owned());
        }
        if let Some(Delay::Uniform { min_ms, max_ms }) = self.delay
            && min_ms > max_ms
        {
            return Err("webhooks.delay: min_ms > max_ms".to_owned());
        }
        Ok(())
    }
}

/// What happened to webhooks (the `webhooks` section of `GET /_fake/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookStats {
    /// Talks that ended with a `webhook` set.
    pub due: u64,
    /// Of those, never sent (`p_drop`).
    pub dropped: u64,
    /// Sent twice (`p_duplicate`).
    pub duplicated: u64,
    /// Sendings held back (`p_reorder`).
    pub reordered: u64,
    /// Not sent because [`MAX_PENDING`] deliveries were already waiting.
    pub overflowed: u64,
    /// POSTs made (every attempt of every sending).
    pub attempts: u64,
    /// Sendings a receiver answered with a 2xx.
    pub delivered: u64,
    /// Sendings that had no 2xx after all their attempts.
    pub failed: u64,
    /// Sendings waiting or on the wire now.
    pub pending: u64,
}

/// The delivery machinery of a running fake.
#[derive(Debug)]
pub(crate) struct Deliveries {
    http: reqwest::Client,
    on_the_wire: Arc<tokio::sync::Semaphore>,
    pending: std::sync::atomic::AtomicUsize,
}

impl Deliveries {
    pub(crate) fn new() -> std::io::Result<Deliveries> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("did-fake-webhooks/", env!("CARGO_PKG_VERSION")))
            // Receivers are where the webhook URL says, never behind the environment's proxy.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Deliveries {
            http,
            on_the_wire: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT)),
            pending: std::sync::atomic::AtomicUsize::new(0),
        })
    }
}

/// Talk `id` has just reached a terminal state: sends its webhook, if it has one, as the
/// knobs say. Returns at once; the sending runs on its own tasks until the server stops.
pub(crate) fn talk_ended(shared: &Arc<Shared>, id: &str) {
    let (url, body) = {
        let store = lock(&shared.store);
        let Some(talk) = store.talks.get(id) else {
            return;
        };
        let Some(url) = talk.webhook.clone() else {
            return;
        };
        (url, crate::api::talks::talk_json(shared, talk))
    };
    let knobs = shared.faults().webhooks;
    let drop_it = shared.roll() < knobs.p_drop;
    let twice = !drop_it && shared.roll() < knobs.p_duplicate;
    {
        let mut stats = lock(&shared.stats);
        stats.webhooks.due += 1;
        if drop_it {
            stats.webhooks.dropped += 1;
        }
        if twice {
            stats.webhooks.duplicated += 1;
        }
    }
    if drop_it {
        tracing::debug!(talk_id = id, "webhook dropped on purpose");
        return;
    }
    let body = Arc::new(serde_json::to_vec(&body).unwrap_or_default());
    for _ in 0..if twice { 2 } else { 1 } {
        let mut wait = knobs.delay.map_or(Duration::ZERO, |d| draw(shared, d));
        if shared.roll() < knobs.p_reorder {
            wait += Duration::from_millis(knobs.reorder_ms);
            lock(&shared.stats).webhooks.reordered += 1;
        }
        send_later(shared, &url, &body, wait, &knobs);
    }
}

/// A delay drawn from `delay`.
fn draw(shared: &Shared, delay: Delay) -> Duration {
    match delay {
        Delay::Fixed(ms) => Duration::from_millis(ms),
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        Delay::Uniform { min_ms, max_ms } => {
            Duration::from_millis(shared.uniform(min_ms as f64, max_ms as f64).round() as u64)
        }
    }
}

/// Spawns one sending of `body` to `url` after `wait`.
fn send_later(
    shared: &Arc<Shared>,
    url: &str,
    body: &Arc<Vec<u8>>,
    wait: Duration,
    knobs: &WebhookFaults,
) {
    let deliveries = &shared.deliveries;
    if deliveries.pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING {
        deliveries.pending.fetch_sub(1, Ordering::SeqCst);
        lock(&shared.stats).webhooks.overflowed += 1;
        tracing::warn!(
            url = without_query(url),
            "webhook not sent: {MAX_PENDING} deliveries are pending"
        );
        return;
    }
    lock(&shared.stats).webhooks.pending += 1;
    let (shared, url, body, knobs) = (
        Arc::clone(shared),
        url.to_owned(),
        Arc::clone(body),
        knobs.clone(),
    );
    tokio::spawn(async move {
        let mut shutdown = shared.shutdown.clone();
        let stopped = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        tokio::select! {
            delivered = send(&shared, &url, &body, wait, &knobs) => {
                let mut stats = lock(&shared.stats);
                if delivered {
                    stats.webhooks.delivered += 1;
                } else {
                    stats.webhooks.failed += 1;
                }
            }
            () = stopped => {}
        }
        shared.deliveries.pending.fetch_sub(1, Ordering::SeqCst);
        let mut stats = lock(&shared.stats);
        stats.webhooks.pending = stats.webhooks.pending.saturating_sub(1);
    });
}

/// Sends `body` to `url` after `wait`, with the knobs' attempts and backoff; whether a
/// receiver answered 2xx.
async fn send(
    shared: &Shared,
    url: &str,
    body: &Arc<Vec<u8>>,
    wait: Duration,
    knobs: &WebhookFaults,
) -> bool {
    tokio::time::sleep(wait).await;
    let mut backoff = Duration::from_millis(knobs.retry_backoff_ms);
    for attempt in 1..=knobs.attempts {
        if attempt > 1 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let Ok(_slot) = shared.deliveries.on_the_wire.acquire().await else {
            return false;
        };
        lock(&shared.stats).webhooks.attempts += 1;
        let sent = shared
            .deliveries
            .http
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.as_ref().clone())
            .timeout(Duration::from_millis(knobs.timeout_ms))
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => return true,
            Ok(resp) => {
                tracing::debug!(
                    url = without_query(url),
                    attempt,
                    status = resp.status().as_u16(),
                    "webhook refused"
                );
            }
            Err(e) => tracing::debug!(
                url = without_query(url),
                attempt,
                error = %e,
                "webhook not delivered"
            ),
        }
    }
    false
}

/// `url` without its query, for logs (a receiver's token travels there).
fn without_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_knobs_default_to_one_prompt_attempt_and_check_their_ranges() {
        let d = WebhookFaults::default();
        assert_eq!((d.attempts, d.timeout_ms, d.p_drop), (1, 10_000, 0.0));
        assert!(d.validate().is_ok());
        let parsed: WebhookFaults =
            serde_json::from_str(r#"{"p_drop":0.3,"delay":{"min_ms":1,"max_ms":5}}"#).unwrap();
        assert_eq!(parsed.p_drop, 0.3);
        assert_eq!(parsed.attempts, 1, "missing fields take their defaults");
        for bad in [
            WebhookFaults {
                p_duplicate: 2.0,
                ..WebhookFaults::default()
            },
            WebhookFaults {
                attempts: 0,
                ..WebhookFaults::default()
            },
            WebhookFaults {
                timeout_ms: 0,
                ..WebhookFaults::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<WebhookFaults>(r#"{"p_dorp":1}"#).is_err());
    }
}
