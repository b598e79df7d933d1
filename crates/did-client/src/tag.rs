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

use rand::Rng;
use rand::distr::Alphanumeric;

/// Characters of the random token.
pub const TOKEN_LEN: usize = 16;
/// Characters the tag adds to a caller's `user_data` (`|tg:` + token).
pub const TAG_LEN: usize = SEPARATOR.len() + TOKEN_LEN;
/// D-ID's limit on `user_data`, in characters.
const USER_DATA_MAX: usize = 1000;
/// Marks the token.
const PREFIX: &str = "tg:";
/// Joins the caller's `user_data` and the tag.
const SEPARATOR: &str = "|tg:";

/// A fresh random token.
pub(crate) fn new_token() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(TOKEN_LEN)
        .map(char::from)
        .collect()
}

/// The `user_data` to send: the caller's with the token appended, or `None` when it would not
/// fit in D-ID's 1000 characters.
pub(crate) fn tagged(user_data: Option<&str>, token: &str) -> Option<String> {
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

    #[test]
    fn tokens_are_random_alphanumeric() {
        let a = new_token();
        let b = new_token();
        assert!(is_token(&a), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn tags_keep_the_callers_user_data() {
        let t = "AbCdEfGhIjKlMnOp";
        assert_eq!(tagged(None, t).as_deref(), Some("tg:AbCdEfGhIjKlMnOp"));
        assert_eq!(
            tagged(Some("job-7"), t).as_deref(),
            Some("job-7|tg:AbCdEfGhIjKlMnOp")
        );
    }

    #[test]
    fn tags_respect_the_thousand_character_limit() {
        let t = "AbCdEfGhIjKlMnOp";
        let fits = "é".repeat(1000 - TAG_LEN);
        let tagged_fit = tagged(Some(&fits), t).unwrap();
        assert_eq!(tagged_fit.chars().count(), 1000);
        assert_eq!(tagged(Some(&"x".repeat(1000 - TAG_LEN + 1)), t), None);
    }

    #[test]
    fn strip_undoes_tag() {
        let t = "AbCdEfGhIjKlMnOp";
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
