//! [`CallbackUrl`]: where a job's outcome is reported, checked once when it is built.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest callback URL, in bytes.
pub const MAX_CALLBACK_URL_LEN: usize = 2048;

/// An `http(s)://` URL with a host, without credentials, spaces, control characters or
/// invisible ones (bidirectional overrides, zero-width characters), at most [`MAX_CALLBACK_URL_LEN`] bytes. Kept as the caller wrote it (not normalised), so a
/// replay of the same request has the same fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CallbackUrl(String);

/// A callback URL that breaks a rule of [`CallbackUrl`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "callback_url must be an http(s):// URL with a host, without credentials or spaces, at most 2048 characters"
)]
pub struct InvalidCallbackUrl;

impl CallbackUrl {
    /// Checks `raw`.
    pub fn parse(raw: &str) -> Result<CallbackUrl, InvalidCallbackUrl> {
        if raw.len() > MAX_CALLBACK_URL_LEN {
            return Err(InvalidCallbackUrl);
        }
        // The raw text is checked too: the URL parser is lenient (`http:x.com` and
        // `https:///p` parse, a space is escaped), and credentials would be stored and shown.
        let lower = raw.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://"))
            || raw
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c))
        {
            return Err(InvalidCallbackUrl);
        }
        let url = url::Url::parse(raw).map_err(|_| InvalidCallbackUrl)?;
        let authority = raw.split_once("://").map_or("", |(_, rest)| rest);
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none_or(str::is_empty)
            || authority.starts_with('/')
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(InvalidCallbackUrl);
        }
        Ok(CallbackUrl(raw.to_owned()))
    }

    /// The URL as the caller wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Characters that change how a URL reads without being seen: bidirectional overrides and
/// isolates (U+202A–U+202E, U+2066–U+2069), marks and zero-width characters (U+200B–U+200F,
/// U+2060–U+2064), and the byte-order mark. A URL shown in a job must read as it goes.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

impl TryFrom<String> for CallbackUrl {
    type Error = InvalidCallbackUrl;
    fn try_from(raw: String) -> Result<CallbackUrl, InvalidCallbackUrl> {
        CallbackUrl::parse(&raw)
    }
}

impl From<CallbackUrl> for String {
    fn from(url: CallbackUrl) -> String {
        url.0
    }
}

impl fmt::Display for CallbackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls_need_a_scheme_a_host_and_no_credentials() {
        assert!(CallbackUrl::parse("https://hooks.example.com/done?x=1").is_ok());
        assert!(CallbackUrl::parse("HTTP://example.com/a").is_ok());
        for bad in [
            "https:///path",
            "http:example.com",
            "https://example.com/a b",
            "http://user:pw@example.com/",
            "javascript:alert(1)",
            "ftp://example.com/",
            "http://",
            "",
            "https://example.com/\u{202E}gpj.exe",
            "https://exa\u{200B}mple.com/",
            "https://example.com/\u{2066}x",
        ] {
            assert!(CallbackUrl::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert!(CallbackUrl::parse(&long).is_err(), "too long");
    }

    #[test]
    fn a_stored_url_is_checked_again_when_read() {
        let url: CallbackUrl = serde_json::from_str("\"https://h.test/x\"").unwrap();
        assert_eq!(url.as_str(), "https://h.test/x");
        assert_eq!(serde_json::to_string(&url).unwrap(), "\"https://h.test/x\"");
        assert!(serde_json::from_str::<CallbackUrl>("\"ftp://h.test/\"").is_err());
    }
}
