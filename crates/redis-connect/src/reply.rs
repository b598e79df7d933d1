//! Reading the replies of Lua scripts: a fred [`Value`] as a number, text, an array or a
//! tagged array, and [`UnexpectedReply`], what a reply that no script gives is. Each store
//! decodes what its own scripts answer on top of these (the limiter's `reply` module, the job
//! store's job decoder); the meaning of a script's answer stays with the script.
//!
//! A reply no script can give is an error, never silently read as something else: the
//! limiter takes it for a failed Redis call ([`BackendError`], reason `other`), the job store
//! for corrupt data ([`JobStoreError::Corrupt`]).

use fred::types::Value;
use ports::{DegradedReason, JobStoreError};

use crate::failure::BackendError;

/// A reply no script gives: the script in Redis is not the one the code expects, or the
/// data it read is damaged. The message names what was read and shows the reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct UnexpectedReply {
    message: String,
}

impl From<UnexpectedReply> for BackendError {
    fn from(e: UnexpectedReply) -> Self {
        BackendError::new(DegradedReason::Other, e.message)
    }
}

impl From<UnexpectedReply> for JobStoreError {
    fn from(e: UnexpectedReply) -> Self {
        JobStoreError::Corrupt(e.message)
    }
}

/// The answer `reply` of the script `script`, which that script never gives.
pub fn unexpected(script: &str, reply: impl std::fmt::Debug) -> UnexpectedReply {
    UnexpectedReply {
        message: format!("{script} script returned {reply:?}"),
    }
}

/// A number Redis returned as an integer or as text (a score may come as `"5"` or `"5.0"`).
pub fn number(value: &Value, what: &str) -> Result<u64, UnexpectedReply> {
    let bad = || UnexpectedReply {
        message: format!("{what} is not a number: {value:?}"),
    };
    match value {
        Value::Integer(n) => u64::try_from(*n).map_err(|_| bad()),
        Value::Double(f) if *f >= 0.0 && f.fract() == 0.0 => Ok(*f as u64),
        other => {
            let text = other.as_str().ok_or_else(bad)?;
            text.parse::<u64>().or_else(|_| {
                text.parse::<f64>()
                    .ok()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                    .map(|f| f as u64)
                    .ok_or_else(bad)
            })
        }
    }
}

/// A reply element as text (a bulk or simple string, or a number written out).
pub fn text(value: &Value, what: &str) -> Result<String, UnexpectedReply> {
    value
        .as_str()
        .map(|s| s.into_owned())
        .ok_or_else(|| UnexpectedReply {
            message: format!("{what} is not text: {value:?}"),
        })
}

/// A reply that is an array of at least `len` elements (the reply to `what`).
pub fn array(value: Value, len: usize, what: &str) -> Result<Vec<Value>, UnexpectedReply> {
    match value {
        Value::Array(items) if items.len() >= len => Ok(items),
        other => Err(UnexpectedReply {
            message: format!("unexpected reply to {what}: {other:?}"),
        }),
    }
}

/// The tag of a tagged reply (its first element, text), e.g. `created` of
/// `{'created', seq}`.
pub fn tag(items: &[Value], what: &str) -> Result<String, UnexpectedReply> {
    items
        .first()
        .and_then(|v| v.as_str().map(|s| s.into_owned()))
        .ok_or_else(|| UnexpectedReply {
            message: format!("unexpected reply to {what}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_come_as_integers_or_as_text() {
        #[track_caller]
        fn check(value: Value, expected: Option<u64>) {
            assert_eq!(number(&value, "n").ok(), expected, "{value:?}");
        }
        check(Value::Integer(5), Some(5));
        check(Value::from("5"), Some(5));
        check(Value::from("5.0"), Some(5));
        check(Value::Double(7.0), Some(7));
        check(Value::Integer(-1), None);
        check(Value::from("5.5"), None);
        check(Value::Null, None);
        assert_eq!(
            number(&Value::Null, "seq").unwrap_err().to_string(),
            "seq is not a number: Null"
        );
        assert_eq!(
            unexpected("stats", [5, 2]).to_string(),
            "stats script returned [5, 2]"
        );
    }
}
