//! Failure and load knobs: what the fake does wrong, how often, and how slowly.
//!
//! A [`Faults`] value is the whole fault configuration. It can be given to the builder, replaced
//! at run time with [`RunningFake::set_faults`](crate::RunningFake::set_faults) or
//! `POST /_fake/faults` (the JSON form of this struct; missing fields take their defaults), and
//! read back with `GET /_fake/faults`. The default injects nothing.
//!
//! Probabilities are per request and are drawn from the fake's RNG, which is seeded when the
//! builder got a [`seed`](crate::FakeBuilder::seed). Response faults (`p_500`, `p_502_html`,
//! `p_504`, `p_reset`, `p_gateway_deny`) are mutually exclusive for one request: one draw picks
//! at most one of them, so their sum should stay at or below 1.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::webhook::WebhookFaults;

/// The fault and load configuration of a fake (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Probability of `500 {"kind":"UnknownError","description":"Internal Server Error"}`.
    pub p_500: f64,
    /// Probability of a `502 Bad Gateway` with an HTML body (a load balancer's page).
    pub p_502_html: f64,
    /// Probability of `504 {"message":"Endpoint request timed out"}`, sent after
    /// [`delay_504_ms`](Self::delay_504_ms).
    pub p_504: f64,
    /// How long a 504 takes, in milliseconds (not scaled). `None`: API Gateway's 29 s
    /// multiplied by the fake's `time_scale`.
    pub delay_504_ms: Option<u64>,
    /// Probability that the connection is closed without any response.
    pub p_reset: f64,
    /// Probability of API Gateway's authorizer deny:
    /// `403 {"Message":"User is not authorized to access this resource with an explicit deny"}`.
    pub p_gateway_deny: f64,
    /// Probability that `POST /talks` creates (and charges, and counts) the talk, then answers
    /// with a failure anyway, as [`create_then_fail`](Self::create_then_fail) says.
    pub p_create_then_fail: f64,
    /// Which failure a create-then-fail produces.
    pub create_then_fail: CreateThenFail,
    /// Probability that a created talk ends `error` with a kind drawn from
    /// `FaceError`, `SourceError` and `UnknownError` (its credits are refunded).
    pub p_async_error: f64,
    /// Probability that a created talk ends `rejected`.
    pub p_rejected: f64,
    /// Probability that a created talk reaches `started` and stays there forever.
    pub p_stuck: f64,
    /// Answer 429 when a key has more than this many API requests in flight (the request that
    /// would exceed the cap is the one refused).
    pub max_in_flight_per_key: Option<u32>,
    /// Token-bucket rate per key, in requests per second; over it, 429.
    pub rate_limit_rps: Option<f64>,
    /// Token-bucket size per key. `None`: `max(1, rate_limit_rps)`.
    pub rate_limit_burst: Option<f64>,
    /// Add `Retry-After: N` to 429 responses. Off by default: D-ID documents no such header.
    pub retry_after_secs: Option<u64>,
    /// Answer 429 as `{"kind":"TooManyRequests","description":...}` instead of API Gateway's
    /// `{"message":"Too Many Requests"}`.
    pub kind_429: bool,
    /// Route keys (`"POST /talks"`, `"GET /talks/{id}"`, ...) the response faults
    /// (`p_500`, `p_502_html`, `p_504`, `p_reset`, `p_gateway_deny`) apply to. Empty: all D-ID
    /// routes.
    pub routes: Vec<String>,
    /// Added latency per route.
    pub latency: Latency,
    /// How webhook deliveries misbehave (default: each sent once, at once).
    pub webhooks: WebhookFaults,
}

impl Faults {
    /// Checks that every probability is within `0..=1` and every rate is positive; the message
    /// names the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        let probabilities = [
            ("p_500", self.p_500),
            ("p_502_html", self.p_502_html),
            ("p_504", self.p_504),
            ("p_reset", self.p_reset),
            ("p_gateway_deny", self.p_gateway_deny),
            ("p_create_then_fail", self.p_create_then_fail),
            ("p_async_error", self.p_async_error),
            ("p_rejected", self.p_rejected),
            ("p_stuck", self.p_stuck),
        ];
        for (name, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be within 0..=1, got {p}"));
            }
        }
        for (name, rate) in [
            ("rate_limit_rps", self.rate_limit_rps),
            ("rate_limit_burst", self.rate_limit_burst),
        ] {
            if let Some(r) = rate
                && !(r.is_finite() && r > 0.0)
            {
                return Err(format!("{name} must be a positive number, got {r}"));
            }
        }
        for (route, delay) in self.latency.all.iter().map(|d| ("all", d)).chain(
            self.latency
                .routes
                .iter()
                .map(|(route, d)| (route.as_str(), d)),
        ) {
            if let Delay::Uniform { min_ms, max_ms } = delay
                && min_ms > max_ms
            {
                return Err(format!("latency for {route}: min_ms > max_ms"));
            }
        }
        self.webhooks.validate()
    }
}

/// What `POST /talks` answers after a create-then-fail created the talk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateThenFail {
    /// One of the three below, drawn per failure.
    #[default]
    Mixed,
    /// `500 {"kind":"UnknownError",...}`.
    Status500,
    /// `504 {"message":"Endpoint request timed out"}` after the 504 delay.
    Status504,
    /// The connection is closed without a response.
    Reset,
}

/// Added latency: one delay for every D-ID route, overridden per route key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Latency {
    /// Delay for every D-ID route without an entry in [`routes`](Self::routes).
    pub all: Option<Delay>,
    /// Delay per route key, e.g. `"POST /talks"`.
    pub routes: BTreeMap<String, Delay>,
}

impl Latency {
    /// The delay that applies to `route`, if any.
    pub fn for_route(&self, route: &str) -> Option<Delay> {
        self.routes.get(route).copied().or(self.all)
    }
}

/// One latency distribution, in milliseconds of real time (not scaled by `time_scale`).
///
/// In JSON a plain number is a fixed delay and `{"min_ms": a, "max_ms": b}` a uniform one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Delay {
    /// Always this many milliseconds.
    Fixed(u64),
    /// Uniformly between `min_ms` and `max_ms`, inclusive.
    Uniform {
        /// Lower bound in milliseconds.
        min_ms: u64,
        /// Upper bound in milliseconds.
        max_ms: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_partial_json() {
        let f: Faults = serde_json::from_str(
            r#"{"p_500":0.5,"latency":{"all":10,"routes":{"POST /talks":{"min_ms":1,"max_ms":3}}},
                "create_then_fail":"reset"}"#,
        )
        .unwrap();
        assert_eq!(f.p_500, 0.5);
        assert_eq!(f.latency.for_route("GET /credits"), Some(Delay::Fixed(10)));
        assert_eq!(
            f.latency.for_route("POST /talks"),
            Some(Delay::Uniform {
                min_ms: 1,
                max_ms: 3
            })
        );
        assert_eq!(f.create_then_fail, CreateThenFail::Reset);
        assert!(f.validate().is_ok());
    }

    #[test]
    fn faults_reject_unknown_fields_and_bad_probabilities() {
        assert!(serde_json::from_str::<Faults>(r#"{"p_5OO":1}"#).is_err());
        let f = Faults {
            p_504: 1.5,
            ..Faults::default()
        };
        assert!(f.validate().unwrap_err().contains("p_504"));
        let f = Faults {
            rate_limit_rps: Some(0.0),
            ..Faults::default()
        };
        assert!(f.validate().unwrap_err().contains("rate_limit_rps"));
    }
}
