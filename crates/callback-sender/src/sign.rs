//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"<webhook-id>.<webhook-timestamp>.<body>"`, with the key of a `whsec_<base64>` secret,
//! signed by the `standardwebhooks` crate (the project's own implementation).
//!
//! Rotation: a sender holds the current secret and, while receivers move over, the previous
//! one; every delivery is signed with both, space-separated, so a receiver that knows either
//! accepts it.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use standardwebhooks::Webhook;

/// The shortest secret key, in bytes (the spec asks for 24 to 64 random bytes).
pub const MIN_KEY_BYTES: usize = 24;
/// The longest secret key, in bytes.
pub const MAX_KEY_BYTES: usize = 64;

/// A secret that is not a `whsec_` secret of 24 to 64 bytes (the message never shows it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a callback secret is `whsec_` and 24 to 64 bytes in base64")]
pub struct InvalidSecret;

/// The secrets deliveries are signed with: the current one, and the previous one during a
/// rotation. `Debug` shows neither.
pub struct Signer {
    keys: Vec<Webhook>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({} secret(s), redacted)", self.keys.len())
    }
}

impl Signer {
    /// A signer of `current` and, during a rotation, `previous`.
    pub fn new(
        current: &SecretString,
        previous: Option<&SecretString>,
    ) -> Result<Signer, InvalidSecret> {
        let keys = std::iter::once(current)
            .chain(previous)
            .map(|secret| key_of(secret.expose_secret()))
            .collect::<Result<_, _>>()?;
        Ok(Signer { keys })
    }

    /// The `webhook-signature` value of `payload` sent as `webhook_id` at `timestamp` (Unix
    /// seconds): one `v1,…` per secret, current first. `None` for a body that is not UTF-8
    /// (the signed text is a string; every payload talkgate makes is JSON).
    pub fn signature(&self, webhook_id: &str, timestamp: i64, payload: &[u8]) -> Option<String> {
        let signatures = self
            .keys
            .iter()
            .map(|key| key.sign(webhook_id, timestamp, payload).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(signatures.join(" "))
    }
}

/// The key of a `whsec_` secret, checked.
fn key_of(secret: &str) -> Result<Webhook, InvalidSecret> {
    let encoded = secret.strip_prefix("whsec_").ok_or(InvalidSecret)?;
    // Decoded here to check the length; the crate decodes it again for its key.
    let key = STANDARD.decode(encoded).map_err(|_| InvalidSecret)?;
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
        return Err(InvalidSecret);
    }
    Webhook::new(secret).map_err(|_| InvalidSecret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn secrets_are_whsec_base64_of_24_to_64_bytes() {
        assert!(Signer::new(&SecretString::from(SECRET), None).is_ok());
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_",
            "whsec_c2hvcnQ=",
            "whsec_not base64 at all!!",
        ] {
            assert!(
                Signer::new(&SecretString::from(bad), None).is_err(),
                "{bad}"
            );
        }
        let signer = Signer::new(&SecretString::from(SECRET), None).unwrap();
        assert!(!format!("{signer:?}").contains("MfKQ"));
    }

    #[test]
    fn a_rotating_signer_signs_with_both_secrets_current_first() {
        let previous = SecretString::from("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let current = SecretString::from(SECRET);
        let both = Signer::new(&current, Some(&previous)).unwrap();
        let one = Signer::new(&current, None).unwrap();
        let old = Signer::new(&previous, None).unwrap();
        let body = br#"{"type":"talk.done"}"#;
        let sig = both.signature("msg_1", 1_700_000_000, body).unwrap();
        let expected = format!(
            "{} {}",
            one.signature("msg_1", 1_700_000_000, body).unwrap(),
            old.signature("msg_1", 1_700_000_000, body).unwrap()
        );
        assert_eq!(sig, expected);
        assert!(sig.starts_with("v1,"));
    }
}
