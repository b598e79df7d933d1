//! Request priority: the order in which the limiter serves waiters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How urgent a request is. Higher priorities are always served first by the limiters;
/// within one priority, waiters are served in arrival order.
///
/// The derived ordering is the service order: `Low < Normal < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Background work (batch jobs, prefetching).
    Low,
    /// The default for interactive requests.
    #[default]
    Normal,
    /// User-visible work that should jump the normal queue.
    High,
    /// Must go first (operator actions, retries of paid work).
    Critical,
}

/// The text given for a priority was none of the four allowed names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority {given:?}: expected one of low, normal, high, critical")]
pub struct ParsePriorityError {
    /// The rejected input, as given.
    pub given: String,
}

impl Priority {
    /// All priorities, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];

    /// The lowercase name used in JSON, query strings and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Position in [`Priority::ALL`] (0 for `Low` … 3 for `Critical`), for per-priority arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The priority with the given [`index`](Self::index), if any.
    pub fn from_index(index: usize) -> Option<Priority> {
        Priority::ALL.get(index).copied()
    }

    /// The next class up (used by ageing); `Critical` stays `Critical`.
    pub fn raised(self) -> Priority {
        Priority::from_index(self.index() + 1).unwrap_or(Priority::Critical)
    }
}

impl FromStr for Priority {
    type Err = ParsePriorityError;

    /// Parses `low|normal|high|critical`, ignoring ASCII case only (`HIGH` is `high`).
    /// Anything else is an error: surrounding whitespace, non-breaking spaces, zero-width
    /// characters and non-ASCII look-alikes (`hıgh`) are not quietly accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParsePriorityError {
                given: s.to_owned(),
            })
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<Priority, ()>) {
        assert_eq!(
            input.parse::<Priority>().map_err(|_| ()),
            expected,
            "{input:?}"
        );
    }

    #[test]
    fn parses_the_four_names_case_insensitively() {
        check("low", Ok(Priority::Low));
        check("NORMAL", Ok(Priority::Normal));
        check("HIGH", Ok(Priority::High));
        check("CrItIcAl", Ok(Priority::Critical));
    }

    #[test]
    fn padded_and_look_alike_names_are_errors() {
        for bad in [
            " high ",
            "high ",
            "\thigh",
            "high\n",
            "high\u{a0}",
            "\u{feff}high",
            "hi\u{200b}gh",
            "h\u{131}gh",
            "\u{ff48}igh",
            "LOW\u{0}",
        ] {
            check(bad, Err(()));
        }
    }

    #[test]
    fn unknown_names_are_errors_not_normal() {
        check("", Err(()));
        check("urgent", Err(()));
        check("2", Err(()));
        check("norma", Err(()));
        let err = "urgent".parse::<Priority>().unwrap_err();
        assert!(
            err.to_string().contains("low, normal, high, critical"),
            "{err}"
        );
    }

    #[test]
    fn order_is_service_order() {
        assert!(Priority::Low < Priority::Normal);
        assert!(Priority::Normal < Priority::High);
        assert!(Priority::High < Priority::Critical);
        assert_eq!(Priority::Low.raised(), Priority::Normal);
        assert_eq!(Priority::Critical.raised(), Priority::Critical);
    }

    #[test]
    fn serde_round_trip_uses_lowercase_names() {
        let json = serde_json::to_string(&Priority::High).unwrap();
        assert_eq!(json, "\"high\"");
        assert_eq!(
            serde_json::from_str::<Priority>("\"LOW\"").unwrap(),
            Priority::Low
        );
        assert!(serde_json::from_str::<Priority>("\"bogus\"").is_err());
    }
}
