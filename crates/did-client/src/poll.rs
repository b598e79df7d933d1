//! Waiting for a talk: status polls on the one [`PollSchedule`] (short first, growing to the
//! caller's interval), no permit held between them, transient failures polled through.

use domain::{Admission, Talk, TalkId, TalkStatus};
use ports::{PollSchedule, VideoApiError, WaitOptions};
use reqwest::Method;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::client::DidClient;
use crate::stats::bump;
use crate::transport::Call;
use crate::video_api::{talk_path, untagged};

impl DidClient {
    /// `GET /talks/{id}` as D-ID sent it (tag still in `user_data`).
    pub(crate) async fn fetch_talk(
        &self,
        id: &TalkId,
        admission: &Admission,
    ) -> Result<Talk, VideoApiError> {
        let answer = self
            .execute(
                &Call::new("get_talk", Method::GET, talk_path(id)),
                admission,
            )
            .await?;
        answer.json("talk")
    }

    /// Polls `id` until terminal or `deadline`, no permit held between polls.
    pub(crate) async fn wait_for(
        &self,
        id: &TalkId,
        admission: &Admission,
        wait: WaitOptions,
        started: Instant,
    ) -> Result<Talk, VideoApiError> {
        let deadline = started + wait.max_wait;
        let schedule = PollSchedule::new(wait.poll_interval, self.config.poll_jitter);
        let mut polls = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(VideoApiError::TalkTimedOut {
                    talk_id: id.clone(),
                    waited: now - started,
                });
            }
            let pause = schedule.delay(polls, rand::random());
            polls = polls.saturating_add(1);
            tokio::time::sleep_until((now + pause).min(deadline)).await;

            bump(&self.counters.polls);
            match self.fetch_talk(id, admission).await {
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
