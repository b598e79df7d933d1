//! The port: [`VideoApi`] for [`DidClient`], over the exchange, the retry loop, the
//! exactly-once create and the polls of the modules beside it.

use async_trait::async_trait;
use domain::{
    Admission, Asset, AssetId, CreatedTalk, Credits, Talk, TalkId, TalkPage, TalkRequest, Upload,
    UploadKind,
};
use ports::{CreateFailed, VideoApi, VideoApiError, VideoApiStats, WaitOptions};
use reqwest::Method;
use serde::Deserialize;
use tokio::time::Instant;
use tracing::Instrument;

use crate::client::DidClient;
use crate::tag::{self, CreateToken};
use crate::transport::{Call, Payload};

/// `POST /images` / `POST /audios` answer; only `url` is required.
#[derive(Deserialize)]
struct UploadedWire {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    url: Option<String>,
    /// `POST /audios` only: the audio's length in seconds.
    #[serde(default)]
    duration: Option<f64>,
}

pub(crate) fn talk_path(id: &TalkId) -> String {
    // A TalkId only holds [A-Za-z0-9_-], so it needs no escaping in a path segment.
    format!("/talks/{}", id.as_str())
}

/// The talk with the create tag removed from `user_data`.
pub(crate) fn untagged(mut talk: Talk) -> Talk {
    talk.user_data = tag::strip(talk.user_data.take());
    talk
}

impl DidClient {
    async fn upload(
        &self,
        expected: UploadKind,
        upload: Upload,
        admission: &Admission,
    ) -> Result<Asset, VideoApiError> {
        if upload.kind() != expected {
            // What D-ID would answer, without paying a round trip for it.
            return Err(VideoApiError::Validation {
                status: 415,
                kind: "UnsupportedMimeTypeError".to_owned(),
                description: format!(
                    "a {} file cannot be uploaded as {expected}",
                    upload.media_type()
                ),
                details: None,
            });
        }
        let (op, path) = match expected {
            UploadKind::Image => ("upload_image", "/images"),
            UploadKind::Audio => ("upload_audio", "/audios"),
        };
        let mut call = Call::new(op, Method::POST, path.to_owned());
        call.payload = Payload::Upload(upload);
        let answer = self.execute(&call, admission).await?;
        let wire: UploadedWire = answer.json("upload")?;
        let url = wire.url.ok_or_else(|| VideoApiError::Protocol {
            message: "upload answer has no url".to_owned(),
        })?;
        Ok(Asset {
            id: wire.id.and_then(|id| AssetId::parse(&id).ok()),
            url,
            duration: wire.duration.filter(|d| d.is_finite() && *d >= 0.0),
        })
    }

    async fn delete_asset(
        &self,
        op: &'static str,
        path: String,
        admission: &Admission,
    ) -> Result<(), VideoApiError> {
        self.execute(&Call::new(op, Method::DELETE, path), admission)
            .await
            .map(drop)
    }
}

#[async_trait]
impl VideoApi for DidClient {
    #[tracing::instrument(skip(self, admission, upload), fields(priority = %admission.priority, bytes = upload.data().len(), media_type = %upload.media_type()))]
    async fn upload_image(
        &self,
        upload: Upload,
        admission: &Admission,
    ) -> Result<Asset, VideoApiError> {
        self.upload(UploadKind::Image, upload, admission).await
    }

    #[tracing::instrument(skip(self, admission, upload), fields(priority = %admission.priority, bytes = upload.data().len(), media_type = %upload.media_type()))]
    async fn upload_audio(
        &self,
        upload: Upload,
        admission: &Admission,
    ) -> Result<Asset, VideoApiError> {
        self.upload(UploadKind::Audio, upload, admission).await
    }

    #[tracing::instrument(skip(self, admission, id), fields(priority = %admission.priority, asset_id = %id))]
    async fn delete_image(&self, id: &AssetId, admission: &Admission) -> Result<(), VideoApiError> {
        self.delete_asset(
            "delete_image",
            format!("/images/{}", id.as_str()),
            admission,
        )
        .await
    }

    #[tracing::instrument(skip(self, admission, id), fields(priority = %admission.priority, asset_id = %id))]
    async fn delete_audio(&self, id: &AssetId, admission: &Admission) -> Result<(), VideoApiError> {
        self.delete_asset(
            "delete_audio",
            format!("/audios/{}", id.as_str()),
            admission,
        )
        .await
    }

    #[tracing::instrument(skip(self, admission, request), fields(priority = %admission.priority, talk_id = tracing::field::Empty))]
    async fn create_talk(
        &self,
        request: &TalkRequest,
        admission: &Admission,
    ) -> Result<CreatedTalk, VideoApiError> {
        let created = self
            .create(request, admission, &CreateToken::random(), false)
            .await
            .map_err(|failed| failed.error)?;
        tracing::Span::current().record("talk_id", tracing::field::display(&created.id));
        Ok(created)
    }

    // Not the caller's key: its derived token is the create's field.
    #[tracing::instrument(skip(self, admission, request, key), fields(priority = %admission.priority, talk_id = tracing::field::Empty))]
    async fn create_talk_keyed(
        &self,
        request: &TalkRequest,
        admission: &Admission,
        key: &str,
        look_first: bool,
    ) -> Result<CreatedTalk, CreateFailed> {
        let created = self
            .create(request, admission, &CreateToken::derive(key), look_first)
            .await?;
        tracing::Span::current().record("talk_id", tracing::field::display(&created.id));
        Ok(created)
    }

    #[tracing::instrument(skip(self, admission, id), fields(priority = %admission.priority, talk_id = %id))]
    async fn get_talk(&self, id: &TalkId, admission: &Admission) -> Result<Talk, VideoApiError> {
        self.fetch_talk(id, admission).await.map(untagged)
    }

    #[tracing::instrument(skip(self, admission, token), fields(priority = %admission.priority, paged = token.is_some()))]
    async fn list_talks(
        &self,
        limit: Option<u32>,
        token: Option<String>,
        admission: &Admission,
    ) -> Result<TalkPage, VideoApiError> {
        let deadline = Instant::now() + self.config.call_deadline;
        let mut page = self.fetch_page(limit, token, admission, deadline).await?;
        page.talks = page.talks.into_iter().map(untagged).collect();
        Ok(page)
    }

    #[tracing::instrument(skip(self, admission, id), fields(priority = %admission.priority, talk_id = %id))]
    async fn delete_talk(&self, id: &TalkId, admission: &Admission) -> Result<Talk, VideoApiError> {
        let answer = self
            .execute(
                &Call::new("delete_talk", Method::DELETE, talk_path(id)),
                admission,
            )
            .await?;
        answer.json::<Talk>("deleted talk").map(untagged)
    }

    #[tracing::instrument(skip(self, admission), fields(priority = %admission.priority))]
    async fn credits(&self, admission: &Admission) -> Result<Credits, VideoApiError> {
        let answer = self
            .execute(
                &Call::new("credits", Method::GET, "/credits".to_owned()),
                admission,
            )
            .await?;
        answer.json("credits")
    }

    fn stats(&self) -> VideoApiStats {
        DidClient::stats(self)
    }

    #[tracing::instrument(
        skip(self, admission, wait, id),
        fields(
            priority = %admission.priority,
            talk_id = %id,
            poll_interval_ms = wait.poll_interval.as_millis() as u64,
            max_wait_ms = wait.max_wait.as_millis() as u64,
        )
    )]
    async fn wait_for_talk(
        &self,
        id: &TalkId,
        admission: &Admission,
        wait: WaitOptions,
    ) -> Result<Talk, VideoApiError> {
        // Without a key no poll can succeed: say so now rather than after the first pause.
        if !self.is_configured() {
            return Err(VideoApiError::NotConfigured);
        }
        self.wait_for(id, admission, wait, Instant::now()).await
    }

    #[tracing::instrument(
        skip(self, admission, request, wait),
        fields(
            priority = %admission.priority,
            poll_interval_ms = wait.poll_interval.as_millis() as u64,
            max_wait_ms = wait.max_wait.as_millis() as u64,
            talk_id = tracing::field::Empty,
        )
    )]
    async fn create_talk_and_wait(
        &self,
        request: &TalkRequest,
        admission: &Admission,
        wait: WaitOptions,
    ) -> Result<Talk, VideoApiError> {
        let started = Instant::now();
        let created = self
            .create(request, admission, &CreateToken::random(), false)
            .await
            .map_err(|failed| failed.error)?;
        tracing::Span::current().record("talk_id", tracing::field::display(&created.id));
        let span = tracing::debug_span!("poll", talk_id = %created.id);
        self.wait_for(&created.id, admission, wait, started)
            .instrument(span)
            .await
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use domain::{Priority, Script};
    use secrecy::SecretString;

    use super::*;
    use crate::client::tests::untouchable_limiter;
    use crate::config::DidClientConfig;

    fn request() -> TalkRequest {
        TalkRequest::new(
            None,
            Script::Text {
                input: "hello there".into(),
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn without_a_key_every_call_is_not_configured_and_takes_no_permit() {
        // Port 1 on loopback: if anything were sent, it would fail as Connect, not NotConfigured.
        for key in [
            None,
            Some(SecretString::from("")),
            Some(SecretString::from("  ")),
        ] {
            let config = DidClientConfig::new("http://127.0.0.1:1", key);
            let client = DidClient::new(config, untouchable_limiter()).unwrap();
            assert!(!client.is_configured());
            assert!(!client.stats().client.api_key_configured);
            let p = Priority::Normal;
            let id = TalkId::parse("tlk_x").unwrap();
            let asset = AssetId::parse("img_x").unwrap();
            let png = Upload::new(
                UploadKind::Image,
                None,
                Bytes::from_static(test_support::media::png()),
            )
            .unwrap();
            let nc = Err::<(), _>(VideoApiError::NotConfigured);
            assert_eq!(client.upload_image(png, &p.into()).await.map(drop), nc);
            assert_eq!(client.delete_image(&asset, &p.into()).await, nc);
            assert_eq!(client.delete_audio(&asset, &p.into()).await, nc);
            assert_eq!(
                client.create_talk(&request(), &p.into()).await.map(drop),
                nc
            );
            assert_eq!(client.get_talk(&id, &p.into()).await.map(drop), nc);
            assert_eq!(client.list_talks(None, None, &p.into()).await.map(drop), nc);
            assert_eq!(client.delete_talk(&id, &p.into()).await.map(drop), nc);
            assert_eq!(client.credits(&p.into()).await.map(drop), nc);
            let wait = WaitOptions::default();
            assert_eq!(
                client
                    .create_talk_and_wait(&request(), &p.into(), wait)
                    .await
                    .map(drop),
                nc
            );
            assert_eq!(
                client.wait_for_talk(&id, &p.into(), wait).await.map(drop),
                nc
            );
            assert_eq!(client.stats().requests, 0);
            assert_eq!(client.stats().retries, 0);
        }
    }

    #[tokio::test]
    async fn an_upload_of_the_wrong_kind_is_refused_locally() {
        let config = DidClientConfig::new("http://127.0.0.1:1", Some("u:p".to_owned().into()));
        let client = DidClient::new(config, untouchable_limiter()).unwrap();
        let wav = Upload::new(
            UploadKind::Audio,
            None,
            Bytes::from_static(b"RIFF\x24\x00\x00\x00WAVEfmt "),
        )
        .unwrap();
        let err = client
            .upload_image(wav, &Priority::Low.into())
            .await
            .unwrap_err();
        assert!(
            matches!(err, VideoApiError::Validation { status: 415, .. }),
            "{err:?}"
        );
    }
}
