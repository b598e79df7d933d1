//! Exactly-once `POST /talks`: the create token in `user_data` (format in [`crate::tag`]),
//! and the look-up in the newest talks that the retry loop runs after an ambiguous failure,
//! and, for a token the caller supplied, before the first attempt too.

use bytes::Bytes;
use domain::{Admission, CreatedTalk, Talk, TalkPage, TalkRequest};
use ports::{CreateFailed, VideoApiError};
use reqwest::Method;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::client::DidClient;
use crate::execute::{IfAmbiguous, LookUp, Outcome};
use crate::stats::bump;
use crate::tag::{self, CreateToken};
use crate::transport::{Call, Payload};

/// The look-up of a create: the talk whose raw `user_data` is `tagged`.
struct FindCreated<'a> {
    client: &'a DidClient,
    tagged: &'a str,
    admission: &'a Admission,
}

impl LookUp for FindCreated<'_> {
    type Found = Talk;
    fn look_up(
        &self,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<Talk>, VideoApiError>> + Send {
        self.client
            .find_created(self.tagged, self.admission, deadline)
    }
}

/// What a create returns for a talk it found instead of creating it.
fn found(talk: Talk) -> CreatedTalk {
    CreatedTalk {
        id: talk.id,
        status: talk.status,
        created_at: talk.created_at,
    }
}

impl DidClient {
    /// `POST /talks` at most once for `token`, also across processes and restarts: before
    /// the first attempt, and after an ambiguous failure, the client looks for a talk that
    /// carries the token in the newest [`recovery_pages`](crate::DidClientConfig::recovery_pages)
    /// pages of `GET /talks`, and returns that talk as created if there is one.
    ///
    /// Pass the same token (e.g. [`CreateToken::derive`] of a job id) from every process that
    /// may run the same job: a second process then finds the talk the first one created. The
    /// request must be the same too (its `user_data` is part of what is matched).
    ///
    /// Errors as [`VideoApi::create_talk`](ports::VideoApi::create_talk), with whether any
    /// attempt may have made the talk ([`CreateFailed::sent`]); besides, a `user_data` that
    /// leaves no room for the token is refused locally ([`VideoApiError::Validation`], 400),
    /// and a look-up that fails before the first attempt is returned as it is, without
    /// creating anything.
    #[tracing::instrument(skip(self, admission, request), fields(priority = %admission.priority, create_token = %token, talk_id = tracing::field::Empty))]
    pub async fn create_talk_with_token(
        &self,
        request: &TalkRequest,
        admission: &Admission,
        token: &CreateToken,
    ) -> Result<CreatedTalk, CreateFailed> {
        let created = self.create(request, admission, token, true).await?;
        tracing::Span::current().record("talk_id", tracing::field::display(&created.id));
        Ok(created)
    }

    /// `POST /talks` exactly once for `token`: see [`crate::tag`] and the crate docs. With
    /// `look_first` (a token the caller supplied, which an earlier process may have used) the
    /// newest talks are searched before the first attempt. A failure says whether any
    /// attempt may have made the talk.
    pub(crate) async fn create(
        &self,
        request: &TalkRequest,
        admission: &Admission,
        token: &CreateToken,
        look_first: bool,
    ) -> Result<CreatedTalk, CreateFailed> {
        let tagged = tag::tagged(request.user_data(), token);
        if look_first && tagged.is_none() {
            return Err(CreateFailed::not_sent(VideoApiError::Validation {
                status: 400,
                kind: "ValidationError".to_owned(),
                description: format!(
                    "user_data leaves no room for the create token: at most {} characters with a token",
                    tag::USER_DATA_MAX - tag::TAG_LEN
                ),
                details: None,
            }));
        }
        bump(&self.counters.creates);
        let deadline = Instant::now() + self.config.call_deadline;
        let body = match &tagged {
            Some(user_data) => request
                .clone()
                .with_user_data(user_data.clone())
                .map_err(|e| {
                    CreateFailed::not_sent(VideoApiError::Protocol {
                        message: format!("could not tag the create: {e}"),
                    })
                })?,
            None => {
                bump(&self.counters.creates_untagged);
                warn!(
                    "user_data leaves no room for the create token; an ambiguous failure will not be retried"
                );
                request.clone()
            }
        };
        let body = serde_json::to_vec(&body).map_err(|e| {
            CreateFailed::not_sent(VideoApiError::Protocol {
                message: format!("could not encode the talk request: {e}"),
            })
        })?;
        let mut call = Call::new("create_talk", Method::POST, "/talks".to_owned());
        call.payload = Payload::Json(Bytes::from(body));

        let look_up = tagged.as_deref().map(|tagged| FindCreated {
            client: self,
            tagged,
            admission,
        });
        // A look-up that fails before the first attempt sent no create.
        if let (true, Some(look_up)) = (look_first, &look_up)
            && let Some(talk) = look_up
                .look_up(deadline)
                .await
                .map_err(CreateFailed::not_sent)?
        {
            bump(&self.counters.create_recoveries);
            info!(talk_id = %talk.id, "a talk with this create token exists already; not creating again");
            return Ok(found(talk));
        }
        // Timeout, cut connection or 5xx: the talk may exist. Without a token nothing can
        // tell, and a second talk would be paid twice, so the caller decides.
        let if_ambiguous = match look_up {
            Some(look_up) => IfAmbiguous::LookUp(look_up),
            None => IfAmbiguous::GiveUp,
        };
        match self.run(&call, admission, deadline, if_ambiguous).await? {
            // D-ID answered 2xx: the talk exists even if its answer cannot be read.
            Outcome::Answered(answer) => answer
                .json("created talk")
                .map_err(CreateFailed::maybe_sent),
            Outcome::Found(talk) => {
                bump(&self.counters.create_recoveries);
                info!(talk_id = %talk.id, "found the talk an ambiguous create made; not creating again");
                Ok(found(talk))
            }
        }
    }

    /// One page of `GET /talks` as D-ID sent it, bounded by `deadline`.
    pub(crate) async fn fetch_page(
        &self,
        limit: Option<u32>,
        token: Option<String>,
        admission: &Admission,
        deadline: Instant,
    ) -> Result<TalkPage, VideoApiError> {
        let mut call = Call::new("list_talks", Method::GET, "/talks".to_owned());
        if let Some(limit) = limit {
            call.query.push(("limit", limit.to_string()));
        }
        if let Some(token) = token {
            call.query.push(("token", token));
        }
        self.execute_until(&call, admission, deadline)
            .await?
            .json("talk list")
    }

    /// Looks for the talk whose raw `user_data` is `tagged` in the newest pages.
    async fn find_created(
        &self,
        tagged: &str,
        admission: &Admission,
        deadline: Instant,
    ) -> Result<Option<Talk>, VideoApiError> {
        let mut token = None;
        for _ in 0..self.config.recovery_pages {
            bump(&self.counters.lookup_pages);
            let page = self
                .fetch_page(
                    Some(self.config.recovery_page_size),
                    token,
                    admission,
                    deadline,
                )
                .await?;
            if let Some(talk) = page
                .talks
                .into_iter()
                .find(|t| t.user_data.as_deref() == Some(tagged))
            {
                return Ok(Some(talk));
            }
            match page.token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        Ok(None)
    }
}
