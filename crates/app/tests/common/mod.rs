//! What the engine tests share: a queued-job request.

use app::admission::JobRequest;
use domain::{Priority, Script, TalkRequest};

/// A `POST /jobs` request of normal priority for the public tenant, without a key.
pub fn request() -> JobRequest {
    JobRequest {
        request: TalkRequest::new(
            Some("https://example.test/f.jpg".into()),
            Script::Audio {
                audio_url: "https://example.test/v.wav".into(),
            },
        )
        .unwrap(),
        admission: Priority::Normal.into(),
        callback_url: None,
        key: None,
    }
}
