//! [`Admission`]: who a request is for ([`Tenant`]) and how urgent it is ([`Priority`]), the
//! value every call that takes capacity carries (the limiter's `acquire`, each D-ID call)
//! and the scope of an idempotency key.
//!
//! Today a deployment has one tenant, derived from its credential: `public` without a
//! bearer token, `t:<digest>` with one (the scope idempotency keys always had, so keys
//! stored by earlier builds still match). The tenants feature gives each caller its own.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::priority::Priority;

/// A tenant's name: 1 to [`Tenant::MAX_LEN`] visible ASCII characters. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tenant(Arc<str>);

/// A tenant name that breaks a rule of [`Tenant`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a tenant is 1 to 64 visible ASCII characters")]
pub struct InvalidTenant;

impl Tenant {
    /// The longest tenant name.
    pub const MAX_LEN: usize = 64;
    /// The tenant of a deployment without credentials.
    pub const PUBLIC: &'static str = "public";

    /// Checks `name`.
    pub fn parse(name: &str) -> Result<Tenant, InvalidTenant> {
        if name.is_empty()
            || name.len() > Tenant::MAX_LEN
            || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(InvalidTenant);
        }
        Ok(Tenant(Arc::from(name)))
    }

    /// The tenant of a deployment without credentials ([`Tenant::PUBLIC`]).
    pub fn public() -> Tenant {
        Tenant(Arc::from(Tenant::PUBLIC))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Tenant {
    fn default() -> Tenant {
        Tenant::public()
    }
}

impl TryFrom<String> for Tenant {
    type Error = InvalidTenant;
    fn try_from(name: String) -> Result<Tenant, InvalidTenant> {
        Tenant::parse(&name)
    }
}

impl From<Tenant> for String {
    fn from(tenant: Tenant) -> String {
        tenant.0.to_string()
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who a call is for and how urgent it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Admission {
    /// Whose capacity it uses.
    pub tenant: Tenant,
    /// Its class in the limiter's order.
    pub priority: Priority,
}

impl Admission {
    /// `priority` for `tenant`.
    pub fn new(tenant: Tenant, priority: Priority) -> Admission {
        Admission { tenant, priority }
    }
}

/// `priority` for the public tenant (callers that have no tenant: tools, tests, and the
/// service without credentials).
impl From<Priority> for Admission {
    fn from(priority: Priority) -> Admission {
        Admission::new(Tenant::public(), priority)
    }
}

impl fmt::Display for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.priority, self.tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_short_visible_ascii_and_round_trip_as_strings() {
        assert_eq!(Tenant::parse("t:0123abcd").unwrap().as_str(), "t:0123abcd");
        assert_eq!(Tenant::default().as_str(), "public");
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(Tenant::parse(bad).is_err(), "{bad:?}");
        }
        let t: Tenant = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"acme\"");
        assert!(serde_json::from_str::<Tenant>("\"\"").is_err());
    }

    #[test]
    fn a_priority_alone_is_the_public_tenants() {
        let a = Admission::from(Priority::High);
        assert_eq!(a.priority, Priority::High);
        assert_eq!(a.tenant, Tenant::public());
        assert_eq!(a.to_string(), "high (public)");
    }
}
