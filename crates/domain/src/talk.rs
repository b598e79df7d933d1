//! Talks as D-ID returns them: ids, statuses and the talk object.
//!
//! Parsing is lenient where D-ID is inconsistent (unknown fields are ignored, `started_at`
//! comes without a `Z`, statuses may grow) and strict where safety needs it: a [`TalkId`]
//! only ever holds characters that are safe inside a URL path segment.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest id accepted. D-ID's ids are 25 characters (`tlk_` + 21); the margin leaves
/// room for format changes without letting arbitrary payloads through.
const MAX_ID_LEN: usize = 64;

/// The id of a D-ID talk (observed form `tlk_` + 21 characters of `[A-Za-z0-9_-]`).
///
/// Only `[A-Za-z0-9_-]` and 1..=64 characters are accepted, so an id can be put into an
/// upstream URL path without escaping: `../credits`, `%2F`, spaces and empty ids are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TalkId(String);

/// A string was not a valid talk id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid talk id {given:?}: expected 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct InvalidTalkId {
    /// The rejected input (truncated to 80 characters so a huge input cannot flood logs).
    pub given: String,
}

/// Whether `s` is a non-empty, bounded string of URL-path-safe id characters.
pub(crate) fn is_safe_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl TalkId {
    /// Validates `s` as a talk id.
    pub fn parse(s: &str) -> Result<TalkId, InvalidTalkId> {
        if is_safe_id(s) {
            Ok(TalkId(s.to_owned()))
        } else {
            Err(InvalidTalkId {
                given: s.chars().take(80).collect(),
            })
        }
    }

    /// The id as text; safe to use as one URL path segment.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for TalkId {
    type Error = InvalidTalkId;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        TalkId::parse(s)
    }
}

impl fmt::Display for TalkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for TalkId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TalkId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        TalkId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Where a talk is in its life: `created → started → done | error | rejected`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TalkStatus {
    /// Accepted and queued.
    Created,
    /// Rendering.
    Started,
    /// Finished; `result_url` is set.
    Done,
    /// Failed; `error` says why. D-ID refunds the credits.
    Error,
    /// Refused after creation (most likely moderation). Terminal and failed.
    Rejected,
    /// A status this version does not know; kept verbatim rather than guessed.
    Unknown(String),
}

impl TalkStatus {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            TalkStatus::Created => "created",
            TalkStatus::Started => "started",
            TalkStatus::Done => "done",
            TalkStatus::Error => "error",
            TalkStatus::Rejected => "rejected",
            TalkStatus::Unknown(s) => s,
        }
    }

    /// Whether the talk will not change any more (`done`, `error`, `rejected`).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TalkStatus::Done | TalkStatus::Error | TalkStatus::Rejected
        )
    }
}

impl From<&str> for TalkStatus {
    fn from(s: &str) -> Self {
        match s {
            "created" => TalkStatus::Created,
            "started" => TalkStatus::Started,
            "done" => TalkStatus::Done,
            "error" => TalkStatus::Error,
            "rejected" => TalkStatus::Rejected,
            other => TalkStatus::Unknown(other.to_owned()),
        }
    }
}

impl fmt::Display for TalkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TalkStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TalkStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Ok(TalkStatus::from(s.as_str()))
    }
}

/// Why a talk ended in `error` (D-ID's asynchronous error object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TalkError {
    /// Machine-readable kind, e.g. `FaceError`, `SourceError`, `UnknownError`.
    #[serde(default)]
    pub kind: String,
    /// Human-readable description.
    #[serde(default)]
    pub description: String,
    /// Optional extra detail, any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// A talk as returned by `GET /talks/{id}`. Only `id` and `status` are required; every other
/// field is optional and unknown fields are ignored, because real responses vary by state.
/// Timestamps are kept as D-ID's text (`started_at` has no `Z` in practice).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Talk {
    /// The talk id.
    pub id: TalkId,
    /// Current status.
    pub status: TalkStatus,
    /// The finished video (an https presigned URL, valid about 24 h); set when `done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
    /// Creation time (ISO 8601 with `Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Render start time (ISO 8601, often without `Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
    /// Why it failed, when `status` is `error` (sometimes also `rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TalkError>,
    /// The caller's `user_data`, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// The talk's name, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Video length in seconds, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// The source image as D-ID stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// The audio as D-ID stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_url: Option<String>,
}

/// The reply to `POST /talks` (201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedTalk {
    /// The new talk's id.
    pub id: TalkId,
    /// Its status (`created`).
    pub status: TalkStatus,
    /// Creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// One page of `GET /talks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TalkPage {
    /// The talks on this page (newest first).
    #[serde(default)]
    pub talks: Vec<Talk>,
    /// The token for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The account's credit balance (`GET /credits`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credits {
    /// Credits left.
    pub remaining: i64,
    /// Credits granted in total.
    pub total: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_id(input: &str, ok: bool) {
        assert_eq!(TalkId::parse(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn talk_ids_accept_only_url_safe_text() {
        check_id("tlk_TMj4G1wiEGpQrdNFvrqAk", true);
        check_id("tlk_n41-6smhLSOWm9WGTrP6c", true);
        check_id("", false);
        check_id("../credits", false);
        check_id("tlk_%2F", false);
        check_id("tlk abc", false);
        check_id("tlk/abc", false);
        check_id("tlk.abc", false);
        check_id("tlk_é", false);
        check_id(&"a".repeat(64), true);
        check_id(&"a".repeat(65), false);
    }

    #[test]
    fn unknown_statuses_are_kept() {
        let s: TalkStatus = serde_json::from_str("\"archived\"").unwrap();
        assert_eq!(s, TalkStatus::Unknown("archived".into()));
        assert!(!s.is_terminal());
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"archived\"");
        assert!(TalkStatus::Rejected.is_terminal());
    }

    #[test]
    fn talk_parsing_is_lenient() {
        let json = r#"{
            "id": "tlk_xxxxxx-N6jd3", "status": "started", "duration": 14,
            "started_at": "2023-04-10T08:09:10.622", "created_at": "2023-04-10T08:09:09.324Z",
            "config": {"result_format": ".mp4"}, "face": {"size": 512}, "driver_url": "bank://lively/"
        }"#;
        let talk: Talk = serde_json::from_str(json).unwrap();
        assert_eq!(talk.status, TalkStatus::Started);
        assert_eq!(talk.started_at.as_deref(), Some("2023-04-10T08:09:10.622"));
        assert_eq!(talk.duration, Some(14.0));
        assert!(talk.result_url.is_none());
    }

    #[test]
    fn a_talk_with_a_hostile_id_does_not_parse() {
        let json = r#"{"id": "../credits", "status": "done"}"#;
        assert!(serde_json::from_str::<Talk>(json).is_err());
    }
}
