//! The create token that makes `POST /talks` exactly-once.
//!
//! D-ID has no idempotency key, and a create that timed out or got a 5xx may still have made
//! (and charged for) a talk. So every create carries a fresh random token in `user_data`,
//! which D-ID stores and echoes in `GET /talks`. After an ambiguous failure the client looks
//! for the token in the newest talks before it creates again.
//!
//! # Format
//! - the caller gave `user_data` `U`: `U|tg:<token>`;
//! - the caller gave none: `tg:<token>`;
//!
//! where `<token>` is [`TOKEN_LEN`] characters of `[A-Za-z0-9]` (about 95 bits). The tag
//! takes [`TAG_LEN`] characters of D-ID's 1000; a caller `user_data` longer than
//! `1000 - TAG_LEN` characters is sent untagged, and such a create is never repeated after an
//! ambiguous failure (the caller gets the error instead of a possible duplicate).
//!
//! Talks returned to callers have the tag removed again (`strip`), so a caller sees its own
//! `user_data` exactly as given.
//!
//! # Tokens a caller supplies
//! A [`CreateToken`] is random by default. A caller that may repeat a create from another
//! process (a durable job picked up again after a crash) derives it from its own stable key
//! with [`CreateToken::derive`] and passes it to
//! [`DidClient::create_talk_with_token`](crate::DidClient::create_talk_with_token), which looks
//! for the token *before* its first `POST /talks` too: the second process finds the talk the
//! first one created instead of paying for another.

use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

/// Characters of the random token.
pub const TOKEN_LEN: usize = 16;
/// Characters the tag adds to a caller's `user_data` (`|tg:` + token).
pub const TAG_LEN: usize = SEPARATOR.len() + TOKEN_LEN;
/// D-ID's limit on `user_data`, in characters.
pub(crate) const USER_DATA_MAX: usize = 1000;
/// Marks the token.
const PREFIX: &str = "tg:";
/// Joins the caller's `user_data` and the tag.
const SEPARATOR: &str = "|tg:";

/// The 62 characters a token is made of.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Prefixed to a key before hashing, so that a derived token means "talkgate create token,
/// version 1" and nothing else.
const DERIVE_DOMAIN: &[u8] = b"talkgate/did-client/create-token/v1\0";

/// The token a create carries in `user_data`: [`TOKEN_LEN`] characters of `[A-Za-z0-9]`.
///
/// Two creates with the same token are one talk: after an ambiguous failure, and before the
/// first attempt when the caller supplied the token, the client looks for a talk carrying it.
/// `Debug` and `Display` show the token (it is an identifier, not a secret).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CreateToken(String);

/// A string that is not a create token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a create token is {TOKEN_LEN} characters of [A-Za-z0-9]")]
pub struct InvalidCreateToken;

impl CreateToken {
    /// A fresh random token (about 95 bits), what a plain `create_talk` uses.
    pub fn random() -> CreateToken {
        CreateToken(
            rand::rng()
                .sample_iter(Alphanumeric)
                .take(TOKEN_LEN)
                .map(char::from)
                .collect(),
        )
    }

    /// The token of `key` (a job id, an idempotency key): the same key gives the same token in
    /// every process and every release, so whoever creates with it second finds the first
    /// talk. Use a key per intended talk; two different keys give the same token only by an
    /// SHA-256 collision in the first 16 characters (about 95 bits).
    pub fn derive(key: &str) -> CreateToken {
        let digest = Sha256::new()
            .chain_update(DERIVE_DOMAIN)
            .chain_update(key.as_bytes())
            .finalize();
        // 16 of the 32 digest bytes, each mapped onto the alphabet (bias: 8 of 256 values
        // map twice, which leaves about 95 of the 95.3 bits).
        CreateToken(
            digest
                .iter()
                .take(TOKEN_LEN)
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
                .collect(),
        )
    }

    /// A token given as text (e.g. stored by an earlier process).
    pub fn parse(text: &str) -> Result<CreateToken, InvalidCreateToken> {
        if is_token(text) {
            Ok(CreateToken(text.to_owned()))
        } else {
            Err(InvalidCreateToken)
        }
    }

    /// The token's characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CreateToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CreateToken({})", self.0)
    }
}

impl fmt::Display for CreateToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `user_data` to send: the caller's with the token appended, or `None` when it would not
/// fit in D-ID's 1000 characters.
pub(crate) fn tagged(user_data: Option<&str>, token: &CreateToken) -> Option<String> {
    let token = token.as_str();
    match user_data {
        None => Some(format!("{PREFIX}{token}")),
        Some(u) if u.chars().count() + TAG_LEN <= USER_DATA_MAX => {
            Some(format!("{u}{SEPARATOR}{token}"))
        }
        Some(_) => None,
    }
}

fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The caller's own `user_data` from a tagged one (untagged text is returned unchanged).
pub(crate) fn strip(user_data: Option<String>) -> Option<String> {
    let u = user_data?;
    if u.strip_prefix(PREFIX).is_some_and(is_token) {
        return None;
    }
    match u.rsplit_once(SEPARATOR) {
        Some((caller, token)) if is_token(token) => Some(caller.to_owned()),
        _ => Some(u),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> CreateToken {
        CreateToken::parse(text).unwrap()
    }

    #[test]
    fn tokens_are_random_alphanumeric() {
        let a = CreateToken::random();
        let b = CreateToken::random();
        assert!(is_token(a.as_str()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn derived_tokens_are_stable_per_key_and_differ_between_keys() {
        let a = CreateToken::derive("job-7");
        assert!(is_token(a.as_str()), "{a}");
        assert_eq!(a, CreateToken::derive("job-7"));
        assert_ne!(a, CreateToken::derive("job-8"));
        assert_ne!(a, CreateToken::derive(""));
        // Fixed across releases: a job stored by an older process must find its talk.
        assert_eq!(a.as_str(), DERIVED_JOB_7);
        assert_eq!(CreateToken::parse(a.as_str()), Ok(a));
    }

    /// `CreateToken::derive("job-7")`, computed independently (Python `hashlib.sha256`), so a
    /// change of the derivation fails.
    const DERIVED_JOB_7: &str = "Pd0xJlZy2iQYcsZ7";

    #[test]
    fn parse_takes_only_tokens() {
        for bad in [
            "",
            "short",
            "AbCdEfGhIjKlMnO!",
            "AbCdEfGhIjKlMnOpQ",
            "AbCdEfGhIjKlMnÖ",
        ] {
            assert_eq!(CreateToken::parse(bad), Err(InvalidCreateToken), "{bad:?}");
        }
    }

    #[test]
    fn tags_keep_the_callers_user_data() {
        let t = &token("AbCdEfGhIjKlMnOp");
        assert_eq!(tagged(None, t).as_deref(), Some("tg:AbCdEfGhIjKlMnOp"));
        assert_eq!(
            tagged(Some("job-7"), t).as_deref(),
            Some("job-7|tg:AbCdEfGhIjKlMnOp")
        );
    }

    #[test]
    fn tags_respect_the_thousand_character_limit() {
        let t = &token("AbCdEfGhIjKlMnOp");
        let fits = "é".repeat(1000 - TAG_LEN);
        let tagged_fit = tagged(Some(&fits), t).unwrap();
        assert_eq!(tagged_fit.chars().count(), 1000);
        assert_eq!(tagged(Some(&"x".repeat(1000 - TAG_LEN + 1)), t), None);
    }

    #[test]
    fn strip_undoes_tag() {
        let t = &token("AbCdEfGhIjKlMnOp");
        for caller in [None, Some("job-7"), Some("a|tg:b"), Some("tg:short")] {
            let sent = tagged(caller, t);
            assert_eq!(strip(sent), caller.map(str::to_owned), "{caller:?}");
        }
        assert_eq!(strip(None), None);
        assert_eq!(strip(Some("plain".into())).as_deref(), Some("plain"));
        assert_eq!(
            strip(Some("x|tg:notatoken".into())).as_deref(),
            Some("x|tg:notatoken")
        );
    }
}
