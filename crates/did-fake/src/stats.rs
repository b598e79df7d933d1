//! Counters of what the fake saw and did, served as `GET /_fake/stats`.
//!
//! The same [`FakeStats`] value is the JSON body of `GET /_fake/stats` and the return value of
//! [`RunningFake::stats`](crate::RunningFake::stats). Requests to `/_fake/*` are not counted
//! anywhere, so polling the stats does not change them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::webhook::WebhookStats;

/// A snapshot of the fake's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FakeStats {
    /// Responses per route key (`"POST /talks"`, `"GET /talks/{id}"`, `"GET /_fake_s3"`,
    /// `"unmatched"`) and status code. Status `0` counts connections closed without a response
    /// (`p_reset`, create-then-fail resets).
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
    /// D-ID API requests being handled now (not `/_fake/*` nor `/_fake_s3/*`).
    pub in_flight: u64,
    /// Highest [`in_flight`](Self::in_flight) since start or the last reset.
    pub peak_in_flight: u64,
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// Talks created, including those whose create response was then failed on purpose.
    pub talks_created: u64,
    /// Talks created per `user_data` (talks without `user_data` are not in the map).
    pub talks_by_user_data: BTreeMap<String, u64>,
    /// 429 responses sent (in-flight cap and token bucket).
    pub rate_limited: u64,
    /// Connections closed without a response on purpose.
    pub connections_reset: u64,
    /// Talks in `started` now, rendering (stuck talks are not counted).
    pub renders_in_progress: u64,
    /// Webhook deliveries.
    pub webhooks: WebhookStats,
    /// The W3C `traceparent` headers of the last [`TRACEPARENTS_KEPT`] D-ID API requests that
    /// carried one, oldest first, each as `"<route key> <traceparent>"`.
    #[serde(default)]
    pub traceparents: std::collections::VecDeque<String>,
}

/// How many `traceparent` headers [`FakeStats::traceparents`] keeps.
pub const TRACEPARENTS_KEPT: usize = 64;

impl FakeStats {
    /// Responses with `status` on `route`, 0 if none.
    pub fn count(&self, route: &str, status: u16) -> u64 {
        self.requests
            .get(route)
            .and_then(|by_status| by_status.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// All responses on `route`, whatever their status.
    pub fn total(&self, route: &str) -> u64 {
        self.requests.get(route).map_or(0, |m| m.values().sum())
    }

    pub(crate) fn record(&mut self, route: &str, status: u16) {
        *self
            .requests
            .entry(route.to_owned())
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    /// Keeps the `traceparent` a request on `route` carried (the newest
    /// [`TRACEPARENTS_KEPT`]; at most 128 bytes of it).
    pub(crate) fn traceparent(&mut self, route: &str, value: &str) {
        if self.traceparents.len() == TRACEPARENTS_KEPT {
            self.traceparents.pop_front();
        }
        let value: String = value.chars().take(128).collect();
        self.traceparents.push_back(format!("{route} {value}"));
    }

    pub(crate) fn enter(&mut self) {
        self.in_flight += 1;
        self.peak_in_flight = self.peak_in_flight.max(self.in_flight);
    }

    pub(crate) fn leave(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Zeroes the counters. Gauges (`in_flight`, `renders_in_progress`, `webhooks.pending`) keep their current
    /// value, and the peak restarts from the current in-flight count.
    pub(crate) fn reset(&mut self) {
        *self = Self {
            in_flight: self.in_flight,
            peak_in_flight: self.in_flight,
            renders_in_progress: self.renders_in_progress,
            webhooks: WebhookStats {
                pending: self.webhooks.pending,
                ..WebhookStats::default()
            },
            ..Self::default()
        };
    }
}
