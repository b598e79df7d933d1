//! Waiting for a talk: status polls that start short and grow to the caller's interval, no
//! permit held between them, transient failures polled through.

use std::time::Duration;

use domain::{Priority, Talk, TalkId, TalkStatus};
use ports::{VideoApiError, WaitOptions};
use reqwest::Method;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::client::DidClient;
use crate::stats::bump;
use crate::transport::Call;
use crate::video_api::{talk_path, untagged};

/// The first pause before a status poll: short, because a talk may be done at once.
const FIRST_POLL: Duration = Duration::from_millis(500);

/// The pause before status poll number `poll` (0 for the first): [`FIRST_POLL`] doubling
/// with every poll up to `interval` (never more), then `±jitter` of it from the uniform
/// sample `u` in `[0, 1)`. So a talk that is done at once is seen after ~0.5 s instead of a
/// full interval, and a long render is polled at the interval after a few polls.
fn poll_delay(interval: Duration, poll: u32, jitter: f64, u: f64) -> Duration {
    let nominal = FIRST_POLL
        .saturating_mul(1u32 << poll.min(16))
        .min(interval);
    let jitter = jitter.clamp(0.0, 1.0);
    nominal.mul_f64(1.0 + jitter * (2.0 * u.clamp(0.0, 1.0) - 1.0))
}

impl DidClient {
    /// `GET /talks/{id}` as D-ID sent it (tag still in `user_data`).
    pub(crate) async fn fetch_talk(
        &self,
        id: &TalkId,
        priority: Priority,
    ) -> Result<Talk, VideoApiError> {
        let answer = self
            .execute(&Call::new("get_talk", Method::GET, talk_path(id)), priority)
            .await?;
        answer.json("talk")
    }

    /// Polls `id` until terminal or `deadline`, no permit held between polls.
    pub(crate) async fn wait_for(
        &self,
        id: &TalkId,
        priority: Priority,
        wait: WaitOptions,
        started: Instant,
    ) -> Result<Talk, VideoApiError> {
        let deadline = started + wait.max_wait;
        let jitter = self.config.poll_jitter.clamp(0.0, 1.0);
        let mut polls = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(VideoApiError::TalkTimedOut {
                    talk_id: id.clone(),
                    waited: now - started,
                });
            }
            let pause = poll_delay(wait.poll_interval, polls, jitter, rand::random());
            polls = polls.saturating_add(1);
            tokio::time::sleep_until((now + pause).min(deadline)).await;

            bump(&self.counters.polls);
            match self.fetch_talk(id, priority).await {
                Ok(talk) => match talk.status {
                    TalkStatus::Done => return Ok(untagged(talk)),
                    TalkStatus::Error => {
                        let error = talk.error.unwrap_or_else(|| domain::TalkError {
                            kind: "UnknownError".to_owned(),
                            description: String::new(),
                            details: None,
                        });
                        return Err(VideoApiError::TalkFailed {
                            talk_id: talk.id,
                            kind: error.kind,
                            description: error.description,
                        });
                    }
                    TalkStatus::Rejected => {
                        return Err(VideoApiError::TalkRejected {
                            talk_id: talk.id,
                            description: talk.error.map(|e| e.description).unwrap_or_default(),
                        });
                    }
                    ref status => debug!(%status, "talk not finished yet"),
                },
                // The talk keeps rendering while D-ID (or our own limiter) has a bad moment:
                // keep polling, and if the bound passes the caller still gets the talk id to
                // resume with.
                Err(
                    error @ (VideoApiError::RateLimited { .. }
                    | VideoApiError::Server { .. }
                    | VideoApiError::Timeout
                    | VideoApiError::Connect { .. }
                    | VideoApiError::Limiter(_)),
                ) => {
                    warn!(error = %error, "status poll failed; polling on");
                    if let VideoApiError::RateLimited {
                        retry_after: Some(extra),
                    } = error
                    {
                        tokio::time::sleep_until((Instant::now() + extra).min(deadline)).await;
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_start_short_and_grow_to_the_interval() {
        let ms = Duration::from_millis;
        let check = |interval: Duration, poll: u32, expected: Duration| {
            assert_eq!(
                poll_delay(interval, poll, 0.0, 0.5),
                expected,
                "{interval:?} poll {poll}"
            );
        };
        let five = Duration::from_secs(5);
        check(five, 0, ms(500));
        check(five, 1, ms(1000));
        check(five, 2, ms(2000));
        check(five, 3, ms(4000));
        check(five, 4, five);
        check(five, 40, five);
        // An interval shorter than the first step is used from the start.
        check(ms(100), 0, ms(100));
        check(ms(100), 5, ms(100));
        // Jitter is ±10 % of the step, never more.
        assert_eq!(poll_delay(five, 0, 0.1, 0.0), ms(450));
        assert_eq!(poll_delay(five, 9, 0.1, 1.0), ms(5500));
    }
}
