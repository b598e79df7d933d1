//! The talk timing model of the spec's §10.3: how long a talk queues and renders.
//!
//! All durations here are D-ID's real-world seconds; the fake multiplies each by its
//! `time_scale` before sleeping, so `0.001` turns a 20 s talk into 20 ms.

use serde::{Deserialize, Serialize};

/// Timing and load parameters of the talk lifecycle. The defaults reproduce D-ID's observed
/// ≈10–25 s for short clips.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// `created → started` delay, uniform in `[min, max]` seconds (default 0.5..2.0).
    pub queue_delay_s: (f64, f64),
    /// Fixed part of the render time, uniform in `[min, max]` seconds (default 8..20).
    pub fixed_overhead_s: (f64, f64),
    /// Render seconds per second of video (default 0.5, D-ID renders at about 2× realtime).
    pub render_factor: f64,
    /// Characters per second of speech for text scripts (default 15).
    pub text_chars_per_second: f64,
    /// Video length assumed for an `https` `audio_url`, whose length the fake cannot fetch
    /// (default 10 s).
    pub default_audio_seconds: f64,
    /// Renders at once per user; excess talks stay `created` until a slot frees (default 8).
    pub max_concurrent_renders_per_user: Option<u32>,
    /// Renders at once over all users (default 8).
    pub max_concurrent_renders: Option<u32>,
    /// Seconds of video per credit; a talk costs `max(1, ceil(video_seconds / this))`
    /// (default 15).
    pub seconds_per_credit: f64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            queue_delay_s: (0.5, 2.0),
            fixed_overhead_s: (8.0, 20.0),
            render_factor: 0.5,
            text_chars_per_second: 15.0,
            default_audio_seconds: 10.0,
            max_concurrent_renders_per_user: Some(8),
            max_concurrent_renders: Some(8),
            seconds_per_credit: 15.0,
        }
    }
}

impl Timing {
    /// Credits a talk of `video_seconds` costs.
    pub fn cost(&self, video_seconds: f64) -> i64 {
        let per = if self.seconds_per_credit > 0.0 {
            self.seconds_per_credit
        } else {
            15.0
        };
        // Truncation is intended: the value is already a small whole number after `ceil`.
        #[allow(clippy::cast_possible_truncation)]
        let cost = (video_seconds / per).ceil() as i64;
        cost.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_per_fifteen_seconds_with_a_minimum_of_one() {
        let t = Timing::default();
        for (secs, want) in [(0.0, 1), (2.0, 1), (15.0, 1), (15.1, 2), (60.0, 4)] {
            assert_eq!(t.cost(secs), want, "{secs} s");
        }
    }
}
