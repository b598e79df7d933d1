//! `POST /talks` bodies, validated with D-ID's own rules before anything is sent.
//!
//! The rules come from D-ID's `CreateTalkRequest` schema (see `docs/ARCHITECTURE.md`):
//! image and audio URLs must be `https://` or `s3://` and end in a known extension, a text
//! script is 3..=40 000 characters, `pad_audio` is 0..=60 s, `user_data` 1..=1000 characters
//! and not blank, a webhook is `https://`. Checking here turns a paid round trip that would
//! fail with a 400 into an immediate, typed error.
//!
//! The file stays whole although it is long: the request type, its parser and the URL rules
//! are one schema that changes together; the last third is the tests that pin each rule.

use serde::{Deserialize, Serialize};

/// Image extensions D-ID accepts in `source_url`, each in lower or upper case.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];
/// Audio extensions D-ID accepts in `script.audio_url`, each in lower or upper case.
const AUDIO_EXTENSIONS: &[&str] = &["m4a", "flac", "mp3", "mp4", "wav"];

/// The media URL rules of one field (see [`url_with_extension`]).
struct MediaRules {
    /// The extensions allowed on the last path segment.
    extensions: &'static [&'static str],
    /// Whether a query or fragment must fit D-ID's `audio_url` pattern: one or more of
    /// `A-Z a-z 0-9 _ . / = & # % -` after the `?` or `#`.
    strict_tail: bool,
}

const IMAGE_URL: MediaRules = MediaRules {
    extensions: IMAGE_EXTENSIONS,
    strict_tail: false,
};
const AUDIO_URL: MediaRules = MediaRules {
    extensions: AUDIO_EXTENSIONS,
    strict_tail: true,
};
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

/// Characters that must not appear in a raw URL: whitespace, controls (NUL, DEL, …), and the Unicode bidirectional formatting characters (U+061C, U+200E/F,
/// U+202A–U+202E, U+2066–U+2069) that make a displayed name differ from the real one.
fn forbidden_char(c: char) -> bool {
    c.is_whitespace() || hidden_char(c)
}

/// Controls and bidi formatting characters: never allowed, not even percent-encoded (an
/// encoded space, `%20`, is an ordinary file name character).
fn hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// An S3 bucket name as AWS allows it: 3–63 of `a-z 0-9 . -`, starting and ending with a
/// letter or digit.
fn valid_bucket(name: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && edge(name.as_bytes().first())
        && edge(name.as_bytes().last())
        && !name.contains("..")
}

/// Whether `raw` is a media URL D-ID accepts under `rules`.
///
/// The rules, from D-ID's `CreateTalkRequest` patterns and what its fetcher can use:
/// `https://` or `s3://` only (lowercase, as D-ID's pattern has it); the extension all lower
/// or all upper case (`.wav`, `.WAV`, not `.Wav`); a host (for `s3://`, a valid bucket name); no credentials; a
/// valid, non-zero port; no controls, whitespace or bidi characters, raw or percent-encoded;
/// no `.`/`..` path segments; and the extension on the last path segment (never only in the
/// query or fragment). The URL is parsed with the `url` crate (WHATWG), and checked on the
/// raw text as well where parsing would quietly repair it (`https:///a.wav` parses with host
/// `a.wav`).
fn url_with_extension(raw: &str, rules: &MediaRules) -> bool {
    if raw.chars().any(forbidden_char) {
        return false;
    }
    let (scheme, rest) = if let Some(rest) = raw.strip_prefix("https://") {
        ("https", rest)
    } else if let Some(rest) = raw.strip_prefix("s3://") {
        ("s3", rest)
    } else {
        return false;
    };
    // The authority must be right after `//`: no extra slashes (WHATWG would skip them).
    if rest.starts_with(['/', '\\']) || raw.contains('\\') {
        return false;
    }
    let Ok(url) = url::Url::parse(raw) else {
        return false;
    };
    if url.scheme() != scheme
        || !url.username().is_empty()
        || url.password().is_some()
        || url.port() == Some(0)
    {
        return false;
    }
    match (scheme, url.host_str()) {
        ("https", Some(host)) if !host.is_empty() => {}
        ("s3", Some(bucket)) if valid_bucket(bucket) => {}
        _ => return false,
    }
    // The raw path (before `?`/`#`), segment by segment and percent-decoded: no dot
    // segments, nothing forbidden hiding behind `%00` or `%E2%80%AE`.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let after_authority = &rest[authority_end..];
    let (raw_path, tail) = match after_authority.find(['?', '#']) {
        Some(i) => after_authority.split_at(i),
        None => (after_authority, ""),
    };
    let tail_ok = |t: &str| {
        t.len() > 1
            && t[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_./=&#%-".contains(&b))
    };
    if rules.strict_tail && !tail.is_empty() && !tail_ok(tail) {
        return false;
    }
    let mut last = "";
    for segment in raw_path.split('/').skip(1) {
        // `%XX` decoded to bytes; a `%` without two hex digits stays as it is.
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(segment).collect();
        let Ok(decoded) = String::from_utf8(decoded) else {
            return false;
        };
        if decoded == "." || decoded == ".." || decoded.chars().any(hidden_char) {
            return false;
        }
        last = segment;
    }
    let Some((stem, ext)) = last.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty()
        && rules
            .extensions
            .iter()
            .any(|allowed| *allowed == ext || allowed.to_ascii_uppercase() == ext)
}

/// Whether `url` is `http://` to a loopback host (`127.0.0.0/8`, `[::1]`, `localhost`): the
/// only plain-http webhook [`TalkRequest::with_service_webhook`] takes.
pub fn is_loopback_http(url: &str) -> bool {
    url.strip_prefix("http://").is_some_and(|rest| {
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

impl TalkRequest {
    /// A request animating `source_url` (if given; D-ID has a default image) with `script`.
    pub fn new(source_url: Option<String>, script: Script) -> Result<Self, TalkRequestError> {
        if let Some(url) = &source_url
            && !url_with_extension(url, &IMAGE_URL)
        {
            return Err(TalkRequestError::InvalidSourceUrl);
        }
        match &script {
            Script::Audio { audio_url } => {
                if !url_with_extension(audio_url, &AUDIO_URL) {
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
        if let Some(value) = config.pad_audio
            && !PAD_AUDIO.contains(&value)
        {
            return Err(TalkRequestError::PadAudio { value });
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

    /// Sets the webhook of the service's own receiver: `https://`, or `http://` to a loopback
    /// host (`127.0.0.0/8`, `[::1]`, `localhost`; only a local fake D-ID calls that — D-ID
    /// itself takes https only).
    pub fn with_service_webhook(mut self, webhook: String) -> Result<Self, TalkRequestError> {
        if is_loopback_http(&webhook) && !webhook.chars().any(char::is_whitespace) {
            self.webhook = Some(webhook);
            return Ok(self);
        }
        self.with_webhook(webhook)
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

    /// The inputs outside testers got accepted (and paid for) before URLs were parsed.
    #[test]
    fn urls_d_id_would_refuse_are_rejected_before_any_call() {
        let img = |url: &str| TalkRequest::new(Some(url.to_owned()), audio("https://x.test/a.wav"));
        let aud = |url: &str| TalkRequest::new(None, audio(url));
        for bad in [
            "https:///a.wav",
            "https://x.test/a\u{0}b.wav",
            "https://x.test/a%00b.wav",
            "https://x.test:99999/a.wav",
            "https://x.test:0/a.wav",
            "https://user:pw@x.test/a.wav",
            "https://user@x.test/a.wav",
            "s3://../../a.wav",
            "s3://./a.wav",
            "s3:///a.wav",
            "s3://bucket/../a.wav",
            "s3://bucket/x/%2e%2e/a.wav",
            "https://x.test/a.txt?x=.wav",
            "https://x.test/a.txt#.wav",
            "HTTPS://x.test/a.wav",
            "https://x.test/a.Wav",
            "https://x.test/a.wav?",
            "https://x.test/a.wav?x=a|b",
            "https://x.test/a?.wav",
            "https://x.test/\u{202e}vaw.a.wav",
            "https://x.test/a%E2%80%AE.wav",
            "https://x.test/\u{200f}a.wav",
            "https://x.test/a\u{7f}.wav",
            "https://x.test/.wav",
            "https://x.test/",
            "https://x.test",
            "HTTP://x.test/a.wav",
            "https:x.test/a.wav",
            "https:\\\\x.test/a.wav",
            "https://x test/a.wav",
            "https://[::1/a.wav",
            "s3://BUCKET/a.wav",
            "s3://-bucket/a.wav",
        ] {
            assert_eq!(
                aud(bad).map(drop),
                Err(TalkRequestError::InvalidAudioUrl),
                "{bad:?}"
            );
        }
        for bad in [
            "https:///a.png",
            "s3://../../a.jpg",
            "https://x.test/a.wav?x=.jpg",
            "https://u:p@x.test/a.jpg",
        ] {
            assert_eq!(
                img(bad).map(drop),
                Err(TalkRequestError::InvalidSourceUrl),
                "{bad:?}"
            );
        }
        for good in [
            "https://x.test/a.wav",
            "https://X.test/dir/a.WAV",
            "https://x.test:8443/a.wav?sig=1&x=.jpg#t=2",
            "https://127.0.0.1/a.wav",
            "https://d-id-talks-prod.s3.us-west-2.amazonaws.com/google-oauth2%7C1/tlk_x/microsoft.wav?AWSAccessKeyId=A&Expires=1&Signature=X%3D",
            "s3://d-id-audios-prod/auth0|64a000000000000000000002/fQfFnUUyrLwfFnP2zPRyg/audio.wav",
            "s3://my.bucket-1/a%20b.mp3",
        ] {
            assert_eq!(aud(good).map(drop), Ok(()), "{good:?}");
        }
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
