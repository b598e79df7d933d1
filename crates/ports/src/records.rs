//! The shared-records port: small named values that every instance of a fleet reads and
//! changes by compare-and-swap. The adaptive limit and the circuit breaker keep their state
//! in one each, so a fleet learns one limit and opens one breaker.
//!
//! # Contract
//! Every adapter guarantees, and the contract suite (`ports::records_contract`) checks:
//! - [`load`](SharedRecords::load) returns the value last stored under a name with its
//!   version, or `None` if nothing was;
//! - [`swap`](SharedRecords::swap) stores only if the record's version is still the one the
//!   caller read (`None`: only if there is no record), and then returns the new version,
//!   which is larger than every version the name had; otherwise it stores nothing and
//!   returns the record as it is now, so the caller can fold its change into it and try again;
//! - swaps of many callers at once lose nothing: each stored swap saw the one before it;
//! - a name is 1 to [`MAX_NAME_LEN`] bytes of `[A-Za-z0-9_.-]` and a value at most
//!   [`MAX_VALUE_LEN`] bytes, else [`RecordsError::Invalid`], so the records stay bounded.
//!
//! Records are not deleted: their names are fixed by the code (one per kind of state), so
//! there are a handful per fleet.

use async_trait::async_trait;

/// The longest record name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The largest record value, in bytes.
pub const MAX_VALUE_LEN: usize = 16 * 1024;

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The version (≥ 1; every stored swap makes a larger one).
    pub version: u64,
    /// The value, as stored.
    pub value: String,
}

/// What a [`SharedRecords::swap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// Stored, with this new version.
    Stored(u64),
    /// Not stored: the record changed since it was read. This is it now (`None`: it does not
    /// exist, while the caller expected a version).
    Conflict(Option<Versioned>),
}

/// Why a records call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// The name or value is outside the port's bounds.
    #[error("invalid record: {0}")]
    Invalid(String),
    /// The backend could not be reached or failed.
    #[error("shared records unavailable: {0}")]
    Unavailable(String),
}

/// Small named values shared by a fleet, changed by compare-and-swap (see the module docs).
/// Object-safe; inject it as `Arc<dyn SharedRecords>`.
#[async_trait]
pub trait SharedRecords: Send + Sync {
    /// The record `name` and its version, or `None` if it was never stored.
    async fn load(&self, name: &str) -> Result<Option<Versioned>, RecordsError>;

    /// Stores `value` under `name` if its version is still `expected` (`None`: if it does not
    /// exist).
    async fn swap(
        &self,
        name: &str,
        expected: Option<u64>,
        value: &str,
    ) -> Result<Swap, RecordsError>;
}

/// Checks a name and a value against the port's bounds (for adapters).
pub fn check(name: &str, value: &str) -> Result<(), RecordsError> {
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        return Err(RecordsError::Invalid(format!(
            "a record name is 1 to {MAX_NAME_LEN} bytes of letters, digits, '_', '.' and '-'"
        )));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(RecordsError::Invalid(format!(
            "a record value is at most {MAX_VALUE_LEN} bytes, got {}",
            value.len()
        )));
    }
    Ok(())
}
