//! `POST /talks` bodies, validated with D-ID's own rules before anything is sent.
//!
//! The rules come from D-ID's `CreateTalkRequest` schema (see `docs/ARCHITECTURE.md`):
//! image and audio URLs must be `https://` or `s3://` and end in a known extension, a text
//! script is 3..=40 000 characters, `pad_audio` is 0..=60 s, `user_data` 1..=1000 characters
//! and not blank, a webhook is `https://`. Checking here turns a paid round trip that would
//! fail with a 400 into an immediate, typed error.

use serde::{Deserialize, Serialize};

/// Image extensions D-ID accepts in `source_url`.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];
/// Audio extensions D-ID accepts in `script.audio_url`.
const AUDIO_EXTENSIONS: &[&str] = &["m4a", "flac", "mp3", "mp4", "wav"];
/// Bounds of a text script, in characters.
const TEXT_LEN: std::ops::RangeInclusive<usize> = 3..=40_000;
/// Bounds of `user_data`, in characters.
const USER_DATA_LEN: std::ops::RangeInclusive<usize> = 1..=1000;
/// Bounds of `config.pad_audio`, in seconds.
const PAD_AUDIO: std::ops::RangeInclusive<f64> = 0.0..=60.0;

/// One rule of D-ID's talk schema that a request broke.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TalkRequestError {
    /// `source_url` is not an `https://`/`s3://` URL ending in `.jpg`, `.jpeg` or `.png`.
    #[error("invalid source_url: expected an https:// or s3:// URL ending in .jpg, .jpeg or .png")]
    InvalidSourceUrl,
    /// `script.audio_url` is not an `https://`/`s3://` URL ending in an audio extension.
    #[error(
        "invalid audio_url: expected an https:// or s3:// URL ending in .m4a, .flac, .mp3, .mp4 or .wav"
    )]
    InvalidAudioUrl,
    /// A text script is too short or too long.
    #[error("invalid script input: {len} characters, expected 3 to 40000")]
    TextLength {
        /// The length given, in characters.
        len: usize,
    },
    /// `config.pad_audio` is out of range.
    #[error("invalid pad_audio {value}: expected 0 to 60 seconds")]
    PadAudio {
        /// The value given.
        value: f64,
    },
    /// `user_data` is blank or longer than 1000 characters.
    #[error("invalid user_data: expected 1 to 1000 characters, not blank")]
    UserData,
    /// `webhook` is not an `https://` URL.
    #[error("invalid webhook: expected an https:// URL without spaces")]
    Webhook,
}

/// What the avatar says: a recorded audio file or a text for D-ID's text-to-speech.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Script {
    /// An audio file (`https://` or an `s3://` URL from `POST /audios`).
    Audio {
        /// The audio URL.
        audio_url: String,
    },
    /// A text spoken with D-ID's default (Microsoft) voice.
    Text {
        /// The text, 3..=40 000 characters.
        input: String,
    },
}

/// Result container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultFormat {
    /// MPEG-4.
    Mp4,
    /// QuickTime.
    Mov,
}

/// `config` of a talk; every field is optional and D-ID's defaults apply to absent ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TalkConfig {
    /// Stitch the animated face back into the original image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stitch: Option<bool>,
    /// Seconds of silence appended to the audio (0..=60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_audio: Option<f64>,
    /// Interpolate between the last and first frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fluent: Option<bool>,
    /// Output container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_format: Option<ResultFormat>,
}

/// A validated `POST /talks` body. Build it with [`TalkRequest::new`] and the `with_*`
/// methods, or deserialize it (which runs the same checks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawTalkRequest")]
pub struct TalkRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    source_url: Option<String>,
    script: Script,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<TalkConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// The unchecked wire form, only used to run [`TalkRequest`]'s checks on deserialization.
#[derive(Deserialize)]
struct RawTalkRequest {
    source_url: Option<String>,
    script: Script,
    config: Option<TalkConfig>,
    webhook: Option<String>,
    user_data: Option<String>,
    name: Option<String>,
}

impl TryFrom<RawTalkRequest> for TalkRequest {
    type Error = TalkRequestError;
    fn try_from(raw: RawTalkRequest) -> Result<Self, Self::Error> {
        let mut req = TalkRequest::new(raw.source_url, raw.script)?;
        if let Some(config) = raw.config {
            req = req.with_config(config)?;
        }
        if let Some(webhook) = raw.webhook {
            req = req.with_webhook(webhook)?;
        }
        if let Some(user_data) = raw.user_data {
            req = req.with_user_data(user_data)?;
        }
        req.name = raw.name;
        Ok(req)
    }
}

/// Whether `url` is `https://` or `s3://`, has no whitespace, and its path (before `?`/`#`)
/// ends in one of `extensions` (ASCII case ignored).
fn url_with_extension(url: &str, extensions: &[&str]) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("s3://"));
    let Some(rest) = rest else { return false };
    if rest.is_empty() || url.chars().any(char::is_whitespace) {
        return false;
    }
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    let Some((stem, ext)) = path.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty()
        && extensions
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(ext))
}

impl TalkRequest {
    /// A request animating `source_url` (if given; D-ID has a default image) with `script`.
    pub fn new(source_url: Option<String>, script: Script) -> Result<Self, TalkRequestError> {
        if let Some(url) = &source_url {
            if !url_with_extension(url, IMAGE_EXTENSIONS) {
                return Err(TalkRequestError::InvalidSourceUrl);
            }
        }
        match &script {
            Script::Audio { audio_url } => {
                if !url_with_extension(audio_url, AUDIO_EXTENSIONS) {
                    return Err(TalkRequestError::InvalidAudioUrl);
                }
            }
            Script::Text { input } => {
                let len = input.chars().count();
                if !TEXT_LEN.contains(&len) {
                    return Err(TalkRequestError::TextLength { len });
                }
            }
        }
        Ok(TalkRequest {
            source_url,
            script,
            config: None,
            webhook: None,
            user_data: None,
            name: None,
        })
    }

    /// Sets `config` after checking `pad_audio`.
    pub fn with_config(mut self, config: TalkConfig) -> Result<Self, TalkRequestError> {
        if let Some(value) = config.pad_audio {
            if !PAD_AUDIO.contains(&value) {
                return Err(TalkRequestError::PadAudio { value });
            }
        }
        self.config = Some(config);
        Ok(self)
    }

    /// Sets an `https://` webhook.
    pub fn with_webhook(mut self, webhook: String) -> Result<Self, TalkRequestError> {
        let ok = webhook
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.chars().any(char::is_whitespace));
        if !ok {
            return Err(TalkRequestError::Webhook);
        }
        self.webhook = Some(webhook);
        Ok(self)
    }

    /// Sets `user_data` (1..=1000 characters, not blank).
    pub fn with_user_data(mut self, user_data: String) -> Result<Self, TalkRequestError> {
        if !USER_DATA_LEN.contains(&user_data.chars().count()) || user_data.trim().is_empty() {
            return Err(TalkRequestError::UserData);
        }
        self.user_data = Some(user_data);
        Ok(self)
    }

    /// Sets the talk's name.
    pub fn with_name(mut self, name: String) -> Self {
        self.name = Some(name);
        self
    }

    /// The image to animate.
    pub fn source_url(&self) -> Option<&str> {
        self.source_url.as_deref()
    }
    /// The script.
    pub fn script(&self) -> &Script {
        &self.script
    }
    /// The config, if any.
    pub fn config(&self) -> Option<&TalkConfig> {
        self.config.as_ref()
    }
    /// The webhook, if any.
    pub fn webhook(&self) -> Option<&str> {
        self.webhook.as_deref()
    }
    /// The caller's `user_data`, if any.
    pub fn user_data(&self) -> Option<&str> {
        self.user_data.as_deref()
    }
    /// The name, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(url: &str) -> Script {
        Script::Audio {
            audio_url: url.into(),
        }
    }

    fn check(source: Option<&str>, script: Script, expected: Result<(), TalkRequestError>) {
        let got = TalkRequest::new(source.map(str::to_owned), script.clone()).map(|_| ());
        assert_eq!(got, expected, "{source:?} {script:?}");
    }

    #[test]
    fn source_and_audio_urls_follow_d_ids_patterns() {
        let ok_audio = || audio("s3://d-id-audios-prod/auth0|1/abc/speech.wav");
        check(Some("https://x.test/alice.jpg"), ok_audio(), Ok(()));
        check(
            Some("s3://d-id-images-prod/u/img_1/face.PNG"),
            ok_audio(),
            Ok(()),
        );
        check(None, ok_audio(), Ok(()));
        check(
            Some("http://x.test/alice.jpg"),
            ok_audio(),
            Err(TalkRequestError::InvalidSourceUrl),
        );
        check(
            Some("https://x.test/alice.gif"),
            ok_audio(),
            Err(TalkRequestError::InvalidSourceUrl),
        );
        check(
            Some("https://x.test/a lice.jpg"),
            ok_audio(),
            Err(TalkRequestError::InvalidSourceUrl),
        );
        check(
            Some("https://x.test/a.jpg"),
            audio("https://x.test/a.wav?sig=1&x=2"),
            Ok(()),
        );
        check(
            Some("https://x.test/a.jpg"),
            audio("https://x.test/a.ogg"),
            Err(TalkRequestError::InvalidAudioUrl),
        );
        check(
            Some("https://x.test/a.jpg"),
            audio("ftp://x.test/a.wav"),
            Err(TalkRequestError::InvalidAudioUrl),
        );
    }

    #[test]
    fn text_scripts_are_bounded() {
        let text = |n: usize| Script::Text {
            input: "a".repeat(n),
        };
        check(None, text(3), Ok(()));
        check(None, text(40_000), Ok(()));
        check(None, text(2), Err(TalkRequestError::TextLength { len: 2 }));
        check(
            None,
            text(40_001),
            Err(TalkRequestError::TextLength { len: 40_001 }),
        );
    }

    #[test]
    fn optional_fields_are_checked() {
        let base = || TalkRequest::new(None, audio("https://x.test/a.mp3")).unwrap();
        let cfg = |pad: f64| TalkConfig {
            pad_audio: Some(pad),
            ..TalkConfig::default()
        };
        assert!(base().with_config(cfg(60.0)).is_ok());
        assert_eq!(
            base().with_config(cfg(60.5)).unwrap_err(),
            TalkRequestError::PadAudio { value: 60.5 }
        );
        assert!(base().with_config(cfg(-1.0)).is_err());
        assert!(base().with_user_data("job-1".into()).is_ok());
        assert!(base().with_user_data("   ".into()).is_err());
        assert!(base().with_user_data("x".repeat(1001)).is_err());
        assert!(
            base()
                .with_webhook("https://hooks.test/d-id".into())
                .is_ok()
        );
        assert!(
            base()
                .with_webhook("http://hooks.test/d-id".into())
                .is_err()
        );
    }

    #[test]
    fn deserializing_runs_the_same_checks() {
        let ok = r#"{"source_url":"https://x.test/a.jpg","script":{"type":"audio","audio_url":"https://x.test/a.wav"},"config":{"stitch":true,"pad_audio":0.0}}"#;
        let req: TalkRequest = serde_json::from_str(ok).unwrap();
        assert_eq!(req.config().and_then(|c| c.stitch), Some(true));
        let round = serde_json::to_value(&req).unwrap();
        assert_eq!(round["script"]["type"], "audio");
        assert!(round.get("webhook").is_none());
        let bad = r#"{"script":{"type":"audio","audio_url":"https://x.test/a.txt"}}"#;
        assert!(serde_json::from_str::<TalkRequest>(bad).is_err());
        let bad_pad = r#"{"script":{"type":"text","input":"hello"},"config":{"pad_audio":99}}"#;
        assert!(serde_json::from_str::<TalkRequest>(bad_pad).is_err());
    }
}
