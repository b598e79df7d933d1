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

/// A tenant's name: 1 to [`Tenant::MAX_LEN`] visible ASCII characters. Cheap to clone;
/// the public tenant (every caller of a service without credentials, and every caller that
/// names none) costs no allocation and no reference count.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tenant(Name);

#[derive(Clone)]
enum Name {
    Public,
    Named(Arc<str>),
}

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
        if name == Tenant::PUBLIC {
            return Ok(Tenant::public());
        }
        Ok(Tenant(Name::Named(Arc::from(name))))
    }

    /// The tenant of a deployment without credentials ([`Tenant::PUBLIC`]).
    pub const fn public() -> Tenant {
        Tenant(Name::Public)
    }

    /// Whether this is the public tenant.
    pub fn is_public(&self) -> bool {
        matches!(self.0, Name::Public)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Name::Public => Tenant::PUBLIC,
            Name::Named(name) => name,
        }
    }
}

impl PartialEq for Tenant {
    fn eq(&self, other: &Tenant) -> bool {
        match (&self.0, &other.0) {
            (Name::Public, Name::Public) => true,
            (Name::Named(a), Name::Named(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

impl Eq for Tenant {}

impl std::hash::Hash for Tenant {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Tenant {
    fn partial_cmp(&self, other: &Tenant) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Tenant {
    fn cmp(&self, other: &Tenant) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Tenant").field(&self.as_str()).finish()
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
        tenant.as_str().to_owned()
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's part in the fair share of the limiter: its weight among the tenants waiting
/// at the same priority, and the most slots it may hold at once.
///
/// Between tenants queued at one priority, a limiter grants freed slots in proportion to
/// their weights (a tenant of weight 3 gets three grants for every one of a tenant of weight
/// 1 while both wait); within a tenant, in arrival order. A tenant holding `cap` slots is
/// passed over (its waiters keep their places) until one of its slots is freed, and others
/// are served meanwhile. The default, weight 1 and no cap, is what every caller had before
/// tenants: with one tenant, the order is plain arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Share {
    weight: u32,
    cap: Option<u32>,
}

impl Share {
    /// The largest weight (weights are 1 to this).
    pub const MAX_WEIGHT: u32 = 100;
    /// What one grant costs a tenant of weight 1 in a limiter's virtual time: weights 1 to
    /// 12 divide it exactly, so their ratios are exact, and larger ones are off by less than
    /// 0.2 %.
    pub const COST_SCALE: u64 = 27_720;

    /// `weight` (clamped to 1 ..= [`Share::MAX_WEIGHT`]) and an optional cap on the slots
    /// held at once (a cap of 0 is raised to 1).
    pub fn new(weight: u32, cap: Option<u32>) -> Share {
        Share {
            weight: weight.clamp(1, Share::MAX_WEIGHT),
            cap: cap.map(|c| c.max(1)),
        }
    }

    /// The weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The most slots held at once, if capped.
    pub fn cap(&self) -> Option<u32> {
        self.cap
    }

    /// Whether this is the default share (weight 1, no cap).
    pub fn is_default(&self) -> bool {
        *self == Share::default()
    }

    /// What one grant costs this tenant in virtual time: [`Share::COST_SCALE`] ÷ weight,
    /// rounded (at least 1).
    pub fn cost(&self) -> u64 {
        let w = u64::from(self.weight.max(1));
        ((Share::COST_SCALE + w / 2) / w).max(1)
    }
}

impl Default for Share {
    fn default() -> Share {
        Share {
            weight: 1,
            cap: None,
        }
    }
}

/// Who a call is for and how urgent it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Admission {
    /// Whose capacity it uses.
    pub tenant: Tenant,
    /// Its class in the limiter's order.
    pub priority: Priority,
    /// The tenant's weight and cap in the limiter's fair share (see [`Share`]).
    #[serde(default, skip_serializing_if = "Share::is_default")]
    pub share: Share,
}

impl Admission {
    /// `priority` for `tenant`, with the default share.
    pub fn new(tenant: Tenant, priority: Priority) -> Admission {
        Admission {
            tenant,
            priority,
            share: Share::default(),
        }
    }

    /// The same admission with `share`.
    #[must_use]
    pub fn with_share(mut self, share: Share) -> Admission {
        self.share = share;
        self
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
        let parsed = Tenant::parse("public").unwrap();
        assert!(parsed.is_public() && parsed == Tenant::public());
        assert_eq!(format!("{parsed:?}"), "Tenant(\"public\")");
        assert!(Tenant::parse("acme").unwrap() > Tenant::parse("Acme").unwrap());
    }

    #[test]
    fn a_priority_alone_is_the_public_tenants() {
        let a = Admission::from(Priority::High);
        assert_eq!(a.priority, Priority::High);
        assert_eq!(a.tenant, Tenant::public());
        assert_eq!(a.to_string(), "high (public)");
        assert!(a.share.is_default());
    }

    #[test]
    fn shares_clamp_their_weight_and_cap_and_cost_inversely_to_weight() {
        assert_eq!(Share::new(0, Some(0)), Share::new(1, Some(1)));
        assert_eq!(Share::new(500, None).weight(), Share::MAX_WEIGHT);
        assert_eq!(Share::default().cost(), Share::COST_SCALE);
        assert_eq!(Share::new(3, None).cost() * 3, Share::COST_SCALE);
        assert_eq!(Share::new(12, None).cost() * 12, Share::COST_SCALE);
        assert_eq!(Share::new(100, None).cost(), 277);
        let json = serde_json::to_value(Admission::from(Priority::Low)).unwrap();
        assert!(
            json.get("share").is_none(),
            "the default share is not written"
        );
        let a = Admission::from(Priority::Low).with_share(Share::new(3, Some(2)));
        let back: Admission = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }
}
